"""Small compositions of slimmable layers shared by the model families."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .layers import (
    Dim,
    SlimBatchNorm2d,
    SlimBatchNorm3d,
    SlimConv2d,
    SlimConv3d,
    SlimLinear,
    make_divisible,
)

__all__ = ["check_dropout", "conv_bn", "classifier_head", "SqueezeExcite"]

#: spatial dims -> (convolution, batch norm, global average pool)
_LAYERS = {
    2: (SlimConv2d, SlimBatchNorm2d, nn.AdaptiveAvgPool2d),
    3: (SlimConv3d, SlimBatchNorm3d, nn.AdaptiveAvgPool3d),
}


def _layers(spatial_dims: int) -> tuple:
    if spatial_dims not in _LAYERS:
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (clips), got {spatial_dims}")
    return _LAYERS[spatial_dims]


def conv_bn(
    in_dim: Dim | int,
    out_dim: Dim | int,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    *,
    max_width: float,
    group_channels: int | None = None,
    act: Callable[[], nn.Module] | None = None,
    spatial_dims: int = 2,
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) an activation, as one sequential block.

    ``spatial_dims=3`` builds the clip version (``SlimConv3d``, ``SlimBatchNorm3d``), whose sizes
    may be ``(t, h, w)`` tuples.
    """
    conv, bn, _ = _layers(spatial_dims)
    layers: list[nn.Module] = [
        conv(in_dim, out_dim, kernel_size, stride, group_channels=group_channels,
             max_width=max_width),
        bn(out_dim, max_width=max_width),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def check_dropout(dropout: float) -> float:
    """A dropout probability every model accepts: a number in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return dropout


def classifier_head(
    in_dim: Dim | int, num_classes: int, *, max_width: float, dropout: float = 0.0,
    spatial_dims: int = 2,
) -> nn.Sequential:
    """Global average pooling and a linear classifier whose outputs are never slimmed."""
    check_dropout(dropout)
    pool = _layers(spatial_dims)[2]
    layers: list[nn.Module] = [pool(1), nn.Flatten(1)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(SlimLinear(in_dim, num_classes, max_width=max_width))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-excitation (Hu et al., 2018): a per-channel gate from the global average.

    Pool, 1x1 conv down to ``make_divisible(channels * ratio)`` hidden channels (counted at
    width 1.0 and slimmed with the width), ``act``, 1x1 conv back up, sigmoid, multiply. Both
    convolutions are slimmable and carry biases, as in the original block.
    """

    def __init__(
        self, dim: Dim, ratio: float = 0.0625, *, max_width: float, spatial_dims: int = 2,
        act: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        conv, _, pool = _layers(spatial_dims)
        hidden = Dim(make_divisible(dim.at(1.0) * ratio), slim=dim.slim)
        self.pool = pool(1)
        self.reduce = conv(dim, hidden, 1, bias=True, max_width=max_width)
        self.act = act()
        self.expand = conv(hidden, dim, 1, bias=True, max_width=max_width)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
