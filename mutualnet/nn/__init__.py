"""Slimmable building blocks, the slimmable model base and static extraction."""

from .extract import to_static
from .layers import (
    ConcatDim,
    Dim,
    SlimBatchNorm2d,
    SlimBatchNorm3d,
    SlimConv2d,
    SlimConv3d,
    SlimLayer,
    SlimLinear,
    init_weights,
    make_divisible,
)
from .model import SlimmableModel

__all__ = [
    "ConcatDim",
    "Dim",
    "SlimBatchNorm2d",
    "SlimBatchNorm3d",
    "SlimConv2d",
    "SlimConv3d",
    "SlimLayer",
    "SlimLinear",
    "SlimmableModel",
    "init_weights",
    "make_divisible",
    "to_static",
]

from .blocks import SqueezeExcite, check_dropout, classifier_head, conv_bn  # noqa: E402

__all__ += ["SqueezeExcite", "check_dropout", "classifier_head", "conv_bn"]
