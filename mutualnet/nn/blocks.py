"""Small compositions of slimmable layers shared by the model families."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .layers import Dim, SlimBatchNorm2d, SlimConv2d, SlimLinear

__all__ = ["conv_bn", "classifier_head"]


def conv_bn(
    in_dim: Dim | int,
    out_dim: Dim | int,
    kernel_size: int,
    stride: int = 1,
    *,
    max_width: float,
    group_channels: int | None = None,
    act: Callable[[], nn.Module] | None = None,
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) an activation, as one sequential block."""
    layers: list[nn.Module] = [
        SlimConv2d(in_dim, out_dim, kernel_size, stride, group_channels=group_channels,
                   max_width=max_width),
        SlimBatchNorm2d(out_dim, max_width=max_width),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def classifier_head(
    in_dim: Dim | int, num_classes: int, *, max_width: float, dropout: float = 0.0
) -> nn.Sequential:
    """Global average pooling and a linear classifier whose outputs are never slimmed."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(SlimLinear(in_dim, num_classes, max_width=max_width))
    return nn.Sequential(*layers)
