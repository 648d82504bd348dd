"""Slimmable layers: one weight tensor at the maximum width, sliced to the active width.

A layer never reads global state. Its active width is set explicitly through
``set_width`` (normally by ``SlimmableModel.set_config``), which computes the active
channel counts once, so a forward pass only slices.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "Dim",
    "make_divisible",
    "SlimLayer",
    "SlimConv2d",
    "SlimLinear",
    "SlimBatchNorm2d",
    "ConcatDim",
    "SlimConv3d",
    "SlimBatchNorm3d",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down."""
    if isinstance(divisor, bool) or not isinstance(divisor, numbers.Integral) or divisor < 1:
        raise ValueError(f"divisor must be a positive whole number, got {divisor!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"make_divisible takes a positive finite number, got {value!r}")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Dim:
    """A channel dimension: ``base`` channels at width 1.0.

    ``ratio`` keeps an expansion ratio exact across widths: the active count is
    ``int(make_divisible(base * w / ratio) * ratio)``, so an expanded layer has
    ``t * make_divisible(c * w)`` channels (``base = t * c``, ``ratio = t``).
    A dimension with ``slim=False`` (network input, classifier output) never changes.
    """

    base: int
    ratio: float = 1.0
    slim: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.base, bool) or not isinstance(self.base, numbers.Integral) \
                or self.base < 1:
            raise ValueError(f"channel counts must be positive whole numbers, got {self.base!r}")

    def at(self, width: float) -> int:
        if not self.slim:
            return self.base
        return int(make_divisible(self.base * width / self.ratio) * self.ratio)

    def __mul__(self, factor: int) -> "Dim":
        """The same dimension expanded by an integer factor, ratio kept exact."""
        return Dim(self.base * factor, self.ratio * factor, self.slim)


@dataclass(frozen=True)
class ConcatDim(Dim):
    """The channels of ``torch.cat([fixed_tensor, slim_tensor], 1)``: ``fixed`` channels that
    never slim, then the slim dimension (``base``, ``ratio``, ``slim``).

    The fixed part comes first so that the active channels stay a prefix of the full ones at
    every width; a layer reading the concatenation then slices its weight like any other
    (``weight[:, :active]``). With the slim part first the kept input channels would be two
    separate ranges.
    """

    fixed: int = 0

    @classmethod
    def of(cls, fixed: int, dim: Dim) -> "ConcatDim":
        return cls(dim.base, dim.ratio, dim.slim, int(fixed))

    def at(self, width: float) -> int:
        return self.fixed + super().at(width)

    def __mul__(self, factor: int) -> "ConcatDim":
        return ConcatDim(self.base * factor, self.ratio * factor, self.slim, self.fixed * factor)


def _as_dim(d: Dim | int) -> Dim:
    return d if isinstance(d, Dim) else Dim(int(d), slim=False)


class SlimLayer:
    """Marker and interface of every layer whose shape follows the active width."""

    def set_width(self, width: float, stats_key: str | None = None) -> None:
        raise NotImplementedError

    def to_static(self) -> nn.Module:
        """An ordinary torch layer with the active slice of the weights, copied."""
        raise NotImplementedError

    def active_param_count(self) -> int:
        raise NotImplementedError

    def _active_bias(self) -> Tensor | None:
        """The bias of the active output channels (for layers with ``active_out``)."""
        if self.bias is None or self._full:
            return self.bias
        return self.bias[: self.active_out]

    def _copy_active_into(self, static: nn.Module) -> nn.Module:
        """Fill a freshly built static twin with the active slice of the weights."""
        with torch.no_grad():
            static.weight.copy_(self._active_weight())
            if self.bias is not None:
                static.bias.copy_(self._active_bias())
        static.train(self.training)
        return static


class _SlimConvNd(SlimLayer):
    """Shared logic of slimmable convolutions (2D here, 3D reuses it)."""

    _static_cls: type[nn.Module]

    def _init_slim(
        self,
        in_dim: Dim | int,
        out_dim: Dim | int,
        max_width: float,
        group_channels: int | None,
    ) -> tuple[int, int, int]:
        self.in_dim, self.out_dim = _as_dim(in_dim), _as_dim(out_dim)
        self.max_width = max_width
        self.group_channels = group_channels
        cin, cout = self.in_dim.at(max_width), self.out_dim.at(max_width)
        groups = self._groups_for(cin, cout)
        return cin, cout, groups

    def _groups_for(self, cin: int, cout: int) -> int:
        if self.group_channels is None:
            return 1
        if cin % self.group_channels or cout % (cin // self.group_channels):
            raise ConfigError(
                f"grouped convolution with {self.group_channels} channels per group cannot "
                f"take {cin} input and {cout} output channels; choose widths whose channel "
                f"counts are multiples of the group size"
            )
        return cin // self.group_channels

    def set_width(self, width: float, stats_key: str | None = None) -> None:
        cin, cout = self.in_dim.at(width), self.out_dim.at(width)
        self.active_in, self.active_out = cin, cout
        self.active_groups = self._groups_for(cin, cout)
        self._full = cin == self.in_channels and cout == self.out_channels

    def _active_weight(self) -> Tensor:
        if self._full:
            return self.weight
        if self.group_channels is None:
            return self.weight[: self.active_out, : self.active_in]
        return self.weight[: self.active_out]

    def active_param_count(self) -> int:
        n = self._active_weight().numel()
        bias = self._active_bias()
        return n + (bias.numel() if bias is not None else 0)

    def to_static(self) -> nn.Module:
        static = self._static_cls(
            self.active_in,
            self.active_out,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.active_groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        return self._copy_active_into(static)


class SlimConv2d(_SlimConvNd, nn.Conv2d):
    """Conv2d whose input and output channels follow the active width.

    ``group_channels=None`` is a dense convolution, ``1`` a depthwise one, ``k`` a grouped
    one with ``k`` channels per group (the number of groups scales with the width).
    """

    _static_cls = nn.Conv2d

    def __init__(
        self,
        in_dim: Dim | int,
        out_dim: Dim | int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        group_channels: int | None = None,
        bias: bool = False,
        max_width: float = 1.0,
    ) -> None:
        cin, cout, groups = self._init_slim(in_dim, out_dim, max_width, group_channels)
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        nn.Conv2d.__init__(
            self, cin, cout, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.set_width(max_width)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self._active_weight(), self._active_bias(), self.stride, self.padding,
            self.dilation, self.active_groups,
        )


def _same_padding(kernel_size: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))


def _triple(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class SlimConv3d(_SlimConvNd, nn.Conv3d):
    """Conv3d whose input and output channels follow the active width (clips ``[N, C, T, H, W]``).

    Sizes are ints or ``(t, h, w)`` tuples, e.g. ``kernel_size=(1, 3, 3)`` for a spatial conv.
    ``group_channels`` as for :class:`SlimConv2d` (``1``: depthwise, i.e. X3D's channel-wise
    conv). ``padding=None`` keeps the size ("same" padding) along every axis.
    """

    _static_cls = nn.Conv3d

    def __init__(
        self,
        in_dim: Dim | int,
        out_dim: Dim | int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] | None = None,
        dilation: int | tuple[int, int, int] = 1,
        group_channels: int | None = None,
        bias: bool = False,
        max_width: float = 1.0,
    ) -> None:
        cin, cout, groups = self._init_slim(in_dim, out_dim, max_width, group_channels)
        kernel_size, dilation = _triple(kernel_size), _triple(dilation)
        if padding is None:
            padding = _same_padding(kernel_size, dilation)
        nn.Conv3d.__init__(
            self, cin, cout, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.set_width(max_width)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(
            x, self._active_weight(), self._active_bias(), self.stride, self.padding,
            self.dilation, self.active_groups,
        )


class SlimLinear(SlimLayer, nn.Linear):
    """Linear layer whose input (and, if slim, output) features follow the active width."""

    def __init__(
        self, in_dim: Dim | int, out_dim: Dim | int, bias: bool = True, max_width: float = 1.0
    ) -> None:
        self.in_dim, self.out_dim = _as_dim(in_dim), _as_dim(out_dim)
        self.max_width = max_width
        nn.Linear.__init__(self, self.in_dim.at(max_width), self.out_dim.at(max_width), bias=bias)
        self.set_width(max_width)

    def set_width(self, width: float, stats_key: str | None = None) -> None:
        self.active_in, self.active_out = self.in_dim.at(width), self.out_dim.at(width)
        self._full = self.active_in == self.in_features and self.active_out == self.out_features

    def _active_weight(self) -> Tensor:
        if self._full:
            return self.weight
        return self.weight[: self.active_out, : self.active_in]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self._active_weight(), self._active_bias())

    def active_param_count(self) -> int:
        return self.active_in * self.active_out + (self.active_out if self.bias is not None else 0)

    def to_static(self) -> nn.Module:
        static = nn.Linear(
            self.active_in, self.active_out, bias=self.bias is not None,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        return self._copy_active_into(static)


class _SlimBatchNormNd(SlimLayer):
    """Batch norm with affine parameters shared across widths and statistics per configuration.

    ``running_mean``/``running_var`` are the shared statistics, at the maximum width; they are
    updated in training only at the maximum width (the full network's statistics).
    ``calibrated`` maps a configuration key to statistics recomputed for that configuration
    alone; in eval mode a configuration uses its own entry when there is one. The entries are
    part of the state dict (``<prefix>calibrated.<key>.mean`` / ``.var``).
    """

    _static_cls: type[nn.Module]

    def _init_slim(self, dim: Dim | int, max_width: float) -> int:
        self.dim = _as_dim(dim)
        self.max_width = max_width
        self.calibrated: dict[str, tuple[Tensor, Tensor]] = {}
        return self.dim.at(max_width)

    def set_width(self, width: float, stats_key: str | None = None) -> None:
        self.active = self.dim.at(width)
        self.width = width
        self.stats_key = stats_key
        self.track_shared = abs(width - self.max_width) < 1e-9

    def active_stats(self) -> tuple[Tensor | None, Tensor | None]:
        """The statistics eval mode uses for the active configuration."""
        entry = self.calibrated.get(self.stats_key) if self.stats_key is not None else None
        if entry is not None:
            if entry[0].numel() != self.active:  # another width of the same name (4 decimals)
                raise ConfigError(
                    f"statistics calibrated for {self.stats_key} hold {entry[0].numel()} "
                    f"channels where width {self.width:g} has {self.active}: a configuration "
                    f"is named by its width to 4 decimals; use the width it was calibrated at")
            return entry
        if self.running_mean is None:
            return None, None
        return self.running_mean[: self.active], self.running_var[: self.active]

    def forward(self, x: Tensor) -> Tensor:
        c = self.active
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        if self.training:
            if self.track_shared and self.running_mean is not None:
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
                return F.batch_norm(
                    x, self.running_mean[:c], self.running_var[:c], weight, bias,
                    True, momentum, self.eps,
                )
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        mean, var = self.active_stats()
        return F.batch_norm(x, mean, var, weight, bias, mean is None, 0.0, self.eps)

    def active_param_count(self) -> int:
        return 2 * self.active if self.affine else 0

    def to_static(self) -> nn.Module:
        like = self.weight if self.weight is not None else self.running_mean
        static = self._static_cls(
            self.active, eps=self.eps, momentum=self.momentum, affine=self.affine,
            device=like.device if like is not None else None,
            dtype=like.dtype if like is not None else None,
        )
        mean, var = self.active_stats()
        with torch.no_grad():
            if self.affine:
                static.weight.copy_(self.weight[: self.active])
                static.bias.copy_(self.bias[: self.active])
            if mean is not None:
                static.running_mean.copy_(mean)
                static.running_var.copy_(var)
        static.train(self.training)
        return static

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for key, (mean, var) in self.calibrated.items():
            destination[f"{prefix}calibrated.{key}.mean"] = mean if keep_vars else mean.detach()
            destination[f"{prefix}calibrated.{key}.var"] = var if keep_vars else var.detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        head = f"{prefix}calibrated."
        entries: dict[str, dict[str, Tensor]] = {}
        for name in [k for k in state_dict if k.startswith(head)]:
            key, kind = name[len(head):].rsplit(".", 1)
            entries.setdefault(key, {})[kind] = state_dict.pop(name)
        self.calibrated = {}
        for key, pair in entries.items():
            if set(pair) != {"mean", "var"}:
                raise ConfigError(f"calibrated statistics '{key}' of {prefix[:-1]} are incomplete")
            like = self.running_mean if self.running_mean is not None else self.weight
            # as the module's own statistics: its device and dtype, whatever the file's
            kind = {"device": like.device, "dtype": like.dtype} if like is not None else {}
            self.calibrated[key] = (pair["mean"].to(**kind), pair["var"].to(**kind))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, recurse=True):  # noqa: ANN001
        result = super()._apply(fn, recurse)
        self.calibrated = {k: (fn(m), fn(v)) for k, (m, v) in self.calibrated.items()}
        return result


class SlimBatchNorm2d(_SlimBatchNormNd, nn.BatchNorm2d):
    _static_cls = nn.BatchNorm2d

    def __init__(
        self, dim: Dim | int, eps: float = 1e-5, momentum: float | None = 0.1,
        max_width: float = 1.0,
    ) -> None:
        nn.BatchNorm2d.__init__(self, self._init_slim(dim, max_width), eps=eps, momentum=momentum)
        self.set_width(max_width)


class SlimBatchNorm3d(_SlimBatchNormNd, nn.BatchNorm3d):
    _static_cls = nn.BatchNorm3d

    def __init__(
        self, dim: Dim | int, eps: float = 1e-5, momentum: float | None = 0.1,
        max_width: float = 1.0,
    ) -> None:
        nn.BatchNorm3d.__init__(self, self._init_slim(dim, max_width), eps=eps, momentum=momentum)
        self.set_width(max_width)


def init_weights(module: nn.Module) -> None:
    """Initialisation of the official code: He fan-out normal convs, BN 1/0, linear N(0, 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            fan_out = math.prod(m.kernel_size) * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
