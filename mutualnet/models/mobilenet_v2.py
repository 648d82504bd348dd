"""Slimmable MobileNetV2 (Sandler et al., 2018), laid out as in the official MutualNet code."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import Dim, SlimmableModel, classifier_head, conv_bn
from .registry import check_rows, register_variant

# (expansion t, out channels c, repeats n, first stride s)
DEFAULT_BLOCKS = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1; residual when shapes allow."""

    def __init__(
        self, in_dim: Dim, out_dim: Dim, stride: int, expand: int, max_width: float
    ) -> None:
        super().__init__()
        hidden = in_dim * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(in_dim, hidden, 1, act=nn.ReLU6, max_width=max_width))
        layers += [
            conv_bn(hidden, hidden, 3, stride, group_channels=1, act=nn.ReLU6,
                    max_width=max_width),
            conv_bn(hidden, out_dim, 1, max_width=max_width),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_dim == out_dim

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.residual:
            out = out + x
        return out


class MobileNetV2(SlimmableModel):
    """MobileNetV2; the last 1x1 conv keeps ``last_channels`` outputs at every width.

    ``small_input=True`` (28-32 px) makes the stem and the second stage stride 1.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        small_input: bool = False,
        stem_channels: int = 32,
        last_channels: int = 1280,
        block_setting: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        w = self.max_width
        channels = Dim(stem_channels)
        layers: list[nn.Module] = [
            conv_bn(in_chans, channels, 3, 1 if small_input else 2, act=nn.ReLU6, max_width=w)
        ]
        rows = check_rows("block_setting", block_setting,
                          ("expansion", "channels", "repeats", "stride"))
        for stage, (t, c, n, s) in enumerate(rows):
            if small_input and stage == 1:
                s = 1
            for i in range(n):
                layers.append(InvertedResidual(channels, Dim(c), s if i == 0 else 1, t, w))
                channels = Dim(c)
        last = Dim(last_channels, slim=False)
        layers.append(conv_bn(channels, last, 1, act=nn.ReLU6, max_width=w))
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(last, num_classes, max_width=w, dropout=dropout)
        self._finish()


register_variant("mobilenet_v2", MobileNetV2)
