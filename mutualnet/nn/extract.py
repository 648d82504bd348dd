"""Static sub-network extraction: every slimmable layer builds its own static twin."""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from .layers import SlimLayer

__all__ = ["to_static"]


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
