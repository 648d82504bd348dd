"""Static sub-network extraction: every slimmable layer builds its own static twin."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from .layers import SlimLayer

__all__ = ["to_static", "fold_batchnorm", "inference_network", "inplace_activations"]

#: activations that can overwrite their input
_ACTIVATIONS = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.Mish)
#: layers whose output is always a tensor of their own
_FRESH = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
          nn.BatchNorm3d)


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


def inplace_activations(module: nn.Module) -> nn.Module:
    """Let every activation that follows a convolution, linear or batch-norm layer in a
    Sequential (identities between them aside) overwrite that layer's output instead of
    allocating its own: nothing else sees that output, so the function is unchanged and a
    large buffer per activation is saved. The activation is replaced by an in-place copy, so
    a module also called elsewhere keeps its behaviour there. Returns ``module``, changed.
    """
    for child in module.children():
        inplace_activations(child)
    if isinstance(module, nn.Sequential):
        previous = None
        for name, child in list(module._modules.items()):
            if (isinstance(child, _ACTIVATIONS) and isinstance(previous, _FRESH)
                    and not child.inplace):
                child = copy.deepcopy(child)
                child.inplace = True
                module._modules[name] = child
            if not isinstance(child, nn.Identity):
                previous = child
    return module


def inference_network(static: nn.Module,
                      memory_format: torch.memory_format | None = None) -> nn.Module:
    """An extracted network made ready for inference: batch norm folded into the convolutions,
    activations in place, eval mode, parameters in ``memory_format`` when given. Changes and
    returns ``static``; not for training (in-place activations)."""
    net = inplace_activations(fold_batchnorm(static.eval()))
    if memory_format is not None:
        net = net.to(memory_format=memory_format)
    return net


@torch.no_grad()
def _fused(conv: nn.Conv2d | nn.Conv3d, bn: nn.BatchNorm2d | nn.BatchNorm3d) -> nn.Module:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device,
                       dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, *[1] * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused
