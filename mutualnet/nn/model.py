"""The base of every slimmable network: explicit configuration, extraction, parameter count."""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from ..space import Config, whole
from .layers import SlimLayer, init_weights

__all__ = ["SlimmableModel"]

_TOLERANCE = 1e-6

#: one extraction at a time in the process (each sets its model's configuration meanwhile)
_EXTRACTING = threading.RLock()
#: an argument of ``subnet`` left out: the active configuration's
_ACTIVE: Any = object()


class SlimmableModel(nn.Module):
    """A network that runs at any width in ``width_range``.

    Subclasses build ``self.features`` and ``self.head`` and call ``self._finish()``.
    The active configuration lives on the instance and is changed only by ``set_config``.
    """

    features: nn.Module
    head: nn.Module
    #: whether inputs are clips ``[N, C, T, H, W]`` (3D networks) rather than images
    temporal: bool = False

    def __init__(
        self, width_range: tuple[float, float], num_classes: int, in_chans: int
    ) -> None:
        super().__init__()
        lo, hi = _check_width_range(width_range)
        num_classes = whole("num_classes", num_classes, "a positive whole number")
        in_chans = whole("in_chans", in_chans, "a positive whole number")
        if num_classes is None or in_chans is None:
            raise ConfigError("num_classes and in_chans must be positive whole numbers")
        self.width_range = (lo, hi)
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)

    def _finish(self) -> None:
        self._slim_layers = [m for m in self.modules() if isinstance(m, SlimLayer)]
        init_weights(self)
        self.set_config()

    @property
    def max_width(self) -> float:
        return self.width_range[1]

    @property
    def min_width(self) -> float:
        return self.width_range[0]

    @property
    def config(self) -> Config:
        """The active configuration."""
        return self._config

    def check_width(self, width: float) -> float:
        lo, hi = self.width_range
        # float() would also take True, "0.5" and one-element tensors
        if isinstance(width, bool) or not isinstance(width, numbers.Real):
            raise ConfigError(f"width must be a number, got {width!r}")
        width = float(width)
        if not (lo - _TOLERANCE <= width <= hi + _TOLERANCE):
            raise ConfigError(
                f"width {width:g} is outside the trained range [{lo:g}, {hi:g}]; "
                f"choose a width in that range"
            )
        return min(max(float(width), lo), hi)

    def set_config(
        self,
        width: float | Config | None = None,
        resolution: int | None = None,
        frames: int | None = None,
    ) -> Config:
        """Select the active configuration (width and, for BN statistics, resolution/frames).

        A width no layer can take (a grouped convolution's channels not a multiple of its
        group size) raises :class:`ConfigError` and leaves the previous configuration active.
        """
        if isinstance(width, Config):
            if resolution is not None or frames is not None:
                raise ConfigError("give a Config or width, resolution and frames, not both")
            width, resolution, frames = width.width, width.resolution, width.frames
        width = self.max_width if width is None else self.check_width(width)
        resolution = whole("resolution", resolution, "a positive whole number of pixels")
        frames = whole("frames", frames, "a positive whole number")
        if frames is not None and not self.temporal:
            raise ConfigError(f"this model takes images, not clips: drop the frame count "
                              f"({frames})")
        config = Config(width, resolution, frames)
        previous = getattr(self, "_config", None)
        try:
            self._set_layers(config)
        except ConfigError:
            if previous is not None:
                self._set_layers(previous)
            raise
        self._config = config
        return config

    def _set_layers(self, config: Config) -> None:
        stats_key = config.key if config.resolution is not None else None
        for layer in self._slim_layers:
            layer.set_width(config.width, stats_key)

    @contextlib.contextmanager
    def using(
        self, width: float | Config | None = None, resolution: int | None = None,
        frames: int | None = None,
    ) -> Iterator[Config]:
        """Run a block at another configuration and restore the previous one after."""
        previous = self._config
        try:
            yield self.set_config(width, resolution, frames)
        finally:
            self.set_config(previous)

    def is_full(self) -> bool:
        return abs(self._config.width - self.max_width) <= _TOLERANCE

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def subnet(
        self, width: float | None = None, resolution: int | None = _ACTIVE,
        frames: int | None = _ACTIVE,
    ) -> nn.Module:
        """A plain static network with the weights (and BN statistics) of one configuration.

        An argument left out is the active configuration's, so after ``set_config(0.5, 24)``
        ``subnet(0.5)`` and ``subnet()`` carry the statistics calibrated for (0.5, 24);
        ``resolution=None`` takes the shared statistics. Safe to call from several threads:
        extractions run one at a time, since each sets the model's configuration while it
        copies the weights."""
        from .extract import to_static

        active = self._config
        with _EXTRACTING, self.using(
                active.width if width is None else width,
                active.resolution if resolution is _ACTIVE else resolution,
                active.frames if frames is _ACTIVE else frames):
            return to_static(self)

    def active_param_count(self) -> int:
        """Parameters of the active sub-network, as its static twin would hold."""
        total = 0
        for module in self.modules():
            if isinstance(module, SlimLayer):
                total += module.active_param_count()
            else:
                total += sum(p.numel() for p in module.parameters(recurse=False))
        return total


def _check_width_range(width_range: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in width_range)
    except (TypeError, ValueError):
        raise ConfigError(
            f"width_range must be two numbers (lo, hi), got {width_range!r}"
        ) from None
    if not (0 < lo <= hi < math.inf):
        raise ConfigError(f"width_range must satisfy 0 < lo <= hi (finite), got "
                          f"({lo:g}, {hi:g})")
    return lo, hi
