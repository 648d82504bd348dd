"""Slimmable MobileNetV1 (Howard et al., 2017), laid out as in the official MutualNet code."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import Dim, SlimmableModel, classifier_head, conv_bn
from .registry import check_rows, register_variant

# (out channels, repeats, first stride)
DEFAULT_BLOCKS = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each with BN and ReLU6."""

    def __init__(self, in_dim: Dim, out_dim: Dim, stride: int, max_width: float) -> None:
        super().__init__()
        self.depthwise = conv_bn(in_dim, in_dim, 3, stride, group_channels=1,
                                 act=nn.ReLU6, max_width=max_width)
        self.pointwise = conv_bn(in_dim, out_dim, 1, act=nn.ReLU6, max_width=max_width)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(SlimmableModel):
    """MobileNetV1; ``small_input=True`` uses a stride-1 stem for 28-32 px images."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        small_input: bool = False,
        stem_channels: int = 32,
        block_setting: Sequence[Sequence[int]] = DEFAULT_BLOCKS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        w = self.max_width
        channels = Dim(stem_channels)
        layers: list[nn.Module] = [
            conv_bn(in_chans, channels, 3, 1 if small_input else 2, act=nn.ReLU6, max_width=w)
        ]
        for c, n, s in check_rows("block_setting", block_setting,
                                  ("channels", "repeats", "stride")):
            for i in range(n):
                layers.append(DepthwiseSeparable(channels, Dim(c), s if i == 0 else 1, w))
                channels = Dim(c)
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(channels, num_classes, max_width=w, dropout=dropout)
        self._finish()


register_variant("mobilenet_v1", MobileNetV1)
