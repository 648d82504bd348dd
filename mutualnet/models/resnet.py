"""Slimmable ResNets (He et al., 2016): basic-block 18/34, bottleneck 50/101.

Bottleneck layout as in the official MutualNet code: stride on the 3x3 conv, and the
stem and bottleneck widths tied to a quarter of the stage outputs (``Dim(c, ratio=0.25)``)
so they stay exact quarters at every width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import Dim, SlimmableModel, classifier_head, conv_bn
from ..space import is_count
from .registry import register_variant

STAGE_PLANES = (64, 128, 256, 512)


def _shortcut(in_dim: Dim, out_dim: Dim, stride: int, max_width: float) -> nn.Module:
    if stride == 1 and in_dim == out_dim:
        return nn.Identity()
    return conv_bn(in_dim, out_dim, 1, stride, max_width=max_width)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_dim: Dim, planes: int, stride: int, max_width: float) -> None:
        super().__init__()
        out = Dim(planes)
        self.body = nn.Sequential(
            conv_bn(in_dim, out, 3, stride, act=nn.ReLU, max_width=max_width),
            conv_bn(out, out, 3, max_width=max_width),
        )
        self.shortcut = _shortcut(in_dim, out, stride, max_width)
        self.act = nn.ReLU()
        self.out_dim = out

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_dim: Dim, planes: int, stride: int, max_width: float) -> None:
        super().__init__()
        out = Dim(planes * 4)
        mid = Dim(planes, ratio=0.25)
        self.body = nn.Sequential(
            conv_bn(in_dim, mid, 1, act=nn.ReLU, max_width=max_width),
            conv_bn(mid, mid, 3, stride, act=nn.ReLU, max_width=max_width),
            conv_bn(mid, out, 1, max_width=max_width),
        )
        self.shortcut = _shortcut(in_dim, out, stride, max_width)
        self.act = nn.ReLU()
        self.out_dim = out

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(SlimmableModel):
    """ResNet; ``small_input=True`` swaps the 7x7/2 stem and max-pool for a 3x3/1 stem."""

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        small_input: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        if block not in _BLOCKS:
            raise ConfigError(f"unknown ResNet block {block!r}; use 'basic' or 'bottleneck'")
        block_cls = _BLOCKS[block]
        if not (isinstance(layers, (list, tuple)) and len(layers) == len(STAGE_PLANES)
                and all(map(is_count, layers))):
            raise ValueError(f"layers must be {len(STAGE_PLANES)} positive whole numbers (blocks "
                             f"per stage), got {layers!r}")
        w = self.max_width
        channels = Dim(64, ratio=0.25) if block_cls is Bottleneck else Dim(64)
        if small_input:
            stem: list[nn.Module] = [conv_bn(in_chans, channels, 3, 1, act=nn.ReLU, max_width=w)]
        else:
            stem = [
                conv_bn(in_chans, channels, 7, 2, act=nn.ReLU, max_width=w),
                nn.MaxPool2d(3, 2, 1),
            ]
        body: list[nn.Module] = []
        for stage, (planes, n) in enumerate(zip(STAGE_PLANES, layers)):
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                blk = block_cls(channels, planes, stride, w)
                body.append(blk)
                channels = blk.out_dim
        self.features = nn.Sequential(*stem, *body)
        self.head = classifier_head(channels, num_classes, max_width=w, dropout=dropout)
        self._finish()


register_variant("resnet18", ResNet, block="basic", layers=(2, 2, 2, 2))
register_variant("resnet34", ResNet, block="basic", layers=(3, 4, 6, 3))
register_variant("resnet50", ResNet, block="bottleneck", layers=(3, 4, 6, 3))
register_variant("resnet101", ResNet, block="bottleneck", layers=(3, 4, 23, 3))
