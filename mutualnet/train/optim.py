"""Optimizer and learning-rate schedule of the official recipes."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig

__all__ = ["build_optimizer", "lr_at"]


def _no_decay(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """BN parameters, biases and depthwise weights get no weight decay in the official recipe."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or name == "bias":
        return True
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.groups == module.in_channels and param.shape[1] == 1
    return False


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            exempt = cfg.no_decay_bn_bias_depthwise and _no_decay(module, name, param)
            (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
    )


def lr_at(step: int, total_steps: int, warmup_steps: int, cfg: OptimConfig) -> float:
    """Cosine decay per iteration from ``cfg.lr`` to ``cfg.min_lr`` after a linear warmup."""
    if warmup_steps > 0 and step < warmup_steps:
        start = cfg.lr * cfg.warmup_start_factor
        return start + (cfg.lr - start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
