"""The base of every slimmable network: explicit configuration, extraction, parameter count."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from torch import Tensor, nn

from ..errors import ConfigError
from ..space import Config
from .layers import SlimLayer, init_weights

__all__ = ["SlimmableModel"]

_TOLERANCE = 1e-6

#: one extraction at a time in the process (each sets its model's configuration meanwhile)
_EXTRACTING = threading.RLock()


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
        if int(num_classes) < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        if int(in_chans) < 1:
            raise ConfigError(f"in_chans must be at least 1, got {in_chans}")
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
        if not (lo - _TOLERANCE <= float(width) <= hi + _TOLERANCE):
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
        """Select the active configuration (width and, for BN statistics, resolution/frames)."""
        if isinstance(width, Config):
            width, resolution, frames = width.width, width.resolution, width.frames
        width = self.max_width if width is None else self.check_width(width)
        config = Config(width, resolution, frames)
        stats_key = config.key if resolution is not None else None
        for layer in self._slim_layers:
            layer.set_width(width, stats_key)
        self._config = config
        return config

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
        self, width: float | None = None, resolution: int | None = None,
        frames: int | None = None,
    ) -> nn.Module:
        """A plain static network with the weights (and BN statistics) of one configuration.

        Safe to call from several threads: extractions run one at a time, since each sets
        the model's configuration while it copies the weights."""
        from .extract import to_static

        with _EXTRACTING, self.using(width if width is not None else self._config.width,
                                     resolution, frames):
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
    if not (0 < lo <= hi):
        raise ConfigError(f"width_range must satisfy 0 < lo <= hi, got ({lo:g}, {hi:g})")
    return lo, hi
