"""Slimmable building blocks, the slimmable model base and static extraction."""

from .extract import to_static
from .layers import (
    Dim,
    SlimBatchNorm2d,
    SlimConv2d,
    SlimLayer,
    SlimLinear,
    init_weights,
    make_divisible,
)
from .model import SlimmableModel

__all__ = [
    "Dim",
    "SlimBatchNorm2d",
    "SlimConv2d",
    "SlimLayer",
    "SlimLinear",
    "SlimmableModel",
    "init_weights",
    "make_divisible",
    "to_static",
]

from .blocks import classifier_head, conv_bn  # noqa: E402

__all__ += ["classifier_head", "conv_bn"]
