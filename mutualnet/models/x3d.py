"""Slimmable X3D (Feichtenhofer, 2020), laid out as in the official SlowFast code.

X3D-XS, X3D-S and X3D-M are one network (width factor 2.0, depth factor 2.2, expansion
2.25, conv5 432, head 2048); they differ only in the clip they see: XS 4 frames at 160²,
S 13 frames at 160², M 16 frames at 224². Frames and resolution are configuration axes here,
so the three names build the same model and the clip is chosen by ``space.frames`` and
``space.resolutions``. At 400 classes and width 1.0 the counts (``count_macs``: convolution and
linear multiply-accumulates, the paper's "FLOPs") are 0.605 G (4x160²), 1.963 G (13x160²) and
4.732 G (16x224²), 3.794 M parameters; the paper gives 0.60, 1.96, 4.73 G and 3.76 M. The
parameter gap is the 31.5 K affine parameters of batch norm (3,794,322 - 31,464 = 3.763 M),
which the paper's count apparently leaves out.

Not slimmed: the stem's input channels, the 2048 outputs of the head's fc layer (like
MobileNetV2's last 1280-channel conv) and the classifier's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..nn import (Dim, SlimConv3d, SlimLinear, SlimmableModel, SqueezeExcite, check_dropout,
                  conv_bn)
from .registry import check_count, check_counts, register_variant

#: output channels and blocks of res2..res5 (X3D: 24 channels doubled per stage, depths
#: 1, 2, 5, 3 times the depth factor 2.2, rounded up)
DEFAULT_CHANNELS = (24, 48, 96, 192)
DEFAULT_DEPTHS = (3, 5, 11, 7)


class X3DBlock(nn.Module):
    """1x1x1 expansion (ReLU), 3x3x3 channel-wise conv, squeeze-excitation (on every other
    block), swish, 1x1x1 projection; residual with a strided 1x1x1 projection when needed."""

    def __init__(
        self, in_dim: Dim, inner: Dim, out_dim: Dim, stride: int, se_ratio: float,
        max_width: float,
    ) -> None:
        super().__init__()
        w = max_width
        self.expand = conv_bn(in_dim, inner, 1, act=nn.ReLU, max_width=w, spatial_dims=3)
        self.channelwise = conv_bn(inner, inner, 3, (1, stride, stride), group_channels=1,
                                   max_width=w, spatial_dims=3)
        self.se = (SqueezeExcite(inner, se_ratio, max_width=w, spatial_dims=3) if se_ratio > 0
                   else nn.Identity())
        self.swish = nn.SiLU()
        self.project = conv_bn(inner, out_dim, 1, max_width=w, spatial_dims=3)
        self.shortcut = (nn.Identity() if stride == 1 and in_dim == out_dim else
                         conv_bn(in_dim, out_dim, 1, (1, stride, stride), max_width=w,
                                 spatial_dims=3))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.swish(self.se(self.channelwise(self.expand(x)))))
        return self.act(out + self.shortcut(x))


class X3D(SlimmableModel):
    """X3D for clips ``[N, C, T, H, W]``; ``small_input=True`` makes the stem stride 1 (for
    28-32 px frames). Every stage halves the frame size; time is never strided."""

    temporal = True

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        small_input: bool = False,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        expansion: float = 2.25,
        se_ratio: float = 0.0625,
        head_channels: int = 2048,
        dropout: float = 0.5,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        channels = check_counts("channels", channels)
        depths = check_counts("depths", depths, len(channels))
        check_count("head_channels", head_channels)
        if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) \
                or not expansion > 0:
            raise ValueError(f"expansion must be a positive number, got {expansion!r}")
        if isinstance(se_ratio, bool) or not isinstance(se_ratio, (int, float)) \
                or not 0 <= se_ratio < 1:
            raise ValueError(f"se_ratio must be a number in [0, 1), got {se_ratio!r}")
        check_dropout(dropout)
        w = self.max_width
        dim = Dim(channels[0])
        stem_stride = 1 if small_input else 2
        stem = nn.Sequential(
            SlimConv3d(in_chans, dim, (1, 3, 3), (1, stem_stride, stem_stride), max_width=w),
            *conv_bn(dim, dim, (5, 1, 1), group_channels=1, act=nn.ReLU, max_width=w,
                     spatial_dims=3),
        )
        layers: list[nn.Module] = [stem]
        for c, n in zip(channels, depths):
            out, inner = Dim(c), Dim(int(c * expansion), ratio=expansion)
            for i in range(n):
                ratio = se_ratio if i % 2 == 0 else 0.0
                layers.append(X3DBlock(dim, inner, out, 2 if i == 0 else 1, ratio, w))
                dim = out
        conv5 = Dim(int(channels[-1] * expansion), ratio=expansion)
        layers.append(conv_bn(dim, conv5, 1, act=nn.ReLU, max_width=w, spatial_dims=3))
        self.features = nn.Sequential(*layers)
        head = Dim(head_channels, slim=False)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(1),
            SlimLinear(conv5, head, bias=False, max_width=w), nn.ReLU(),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            SlimLinear(head, num_classes, max_width=w),
        )
        self._finish()


register_variant("x3d_xs", X3D)
register_variant("x3d_s", X3D)
register_variant("x3d_m", X3D)
