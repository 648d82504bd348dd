"""Slimmable Wide ResNet (Zagoruyko & Komodakis, 2016), CIFAR layout (3x3 stride-1 stem)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import (Dim, SlimBatchNorm2d, SlimConv2d, SlimmableModel, check_dropout,
                  classifier_head)
from ..space import is_count
from .registry import check_count, register_variant


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with an identity or 1x1 projection."""

    def __init__(
        self, in_dim: Dim, out_dim: Dim, stride: int, dropout: float, max_width: float
    ) -> None:
        super().__init__()
        self.bn1 = SlimBatchNorm2d(in_dim, max_width=max_width)
        self.act1 = nn.ReLU()
        self.conv1 = SlimConv2d(in_dim, out_dim, 3, stride, max_width=max_width)
        self.bn2 = SlimBatchNorm2d(out_dim, max_width=max_width)
        self.act2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = SlimConv2d(out_dim, out_dim, 3, 1, max_width=max_width)
        self.equal_in_out = in_dim == out_dim and stride == 1
        self.shortcut = (
            nn.Identity() if self.equal_in_out
            else SlimConv2d(in_dim, out_dim, 1, stride, max_width=max_width)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(pre)))))
        if self.equal_in_out:
            return out + x
        return out + self.shortcut(pre)


class WideResNet(SlimmableModel):
    """WRN-depth-k for 32 px inputs (the CIFAR layout is the small-image variant)."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 100,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        if not is_count(depth) or (depth - 4) % 6 or depth < 10:
            raise ConfigError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth!r}")
        check_count("widen_factor", widen_factor)
        check_dropout(dropout)
        n = (depth - 4) // 6
        w = self.max_width
        channels = Dim(16)
        layers: list[nn.Module] = [SlimConv2d(in_chans, channels, 3, 1, max_width=w)]
        for stage, base in enumerate((16, 32, 64)):
            out = Dim(base * widen_factor)
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(PreActBlock(channels, out, stride, dropout, w))
                channels = out
        layers += [SlimBatchNorm2d(channels, max_width=w), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(channels, num_classes, max_width=w)
        self._finish()
        # the official Wide ResNet leaves its classifier's weights at PyTorch's default
        fc = self.head[-1]
        nn.init.kaiming_uniform_(fc.weight, a=math.sqrt(5))
        nn.init.zeros_(fc.bias)


register_variant("wide_resnet28_10", WideResNet, depth=28, widen_factor=10)
