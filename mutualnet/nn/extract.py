"""Static sub-network extraction: every slimmable layer builds its own static twin."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .layers import SlimLayer

__all__ = ["to_static", "fold_batchnorm"]


def to_static(module: nn.Module) -> nn.Module:
    """A copy of ``module`` at its active configuration made of plain torch layers."""
    from .model import SlimmableModel

    if isinstance(module, SlimLayer):
        return module.to_static()
    if isinstance(module, SlimmableModel):
        static = nn.Sequential(
            OrderedDict(features=to_static(module.features), head=to_static(module.head))
        )
        static.train(module.training)
        return static
    children = dict(module.named_children())
    memo = {id(child): child for child in children.values()}
    clone = copy.deepcopy(module, memo)
    for name, child in children.items():
        clone._modules[name] = to_static(child)
    return clone


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution in a Sequential into it."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    or isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d)) \
                    and bn.running_mean is not None:
                module._modules[a] = _fused(conv, bn)
                module._modules[b] = nn.Identity()
    return module


@torch.no_grad()
def _fused(conv: nn.Conv2d | nn.Conv3d, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> nn.Module:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device)
    fused.weight.copy_(conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused
