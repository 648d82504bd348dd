"""Configurations of an adaptive network: width, input resolution and (for video) frames."""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    """One configuration. ``resolution`` and ``frames`` may be None where they do not apply."""

    width: float
    resolution: int | None = None
    frames: int | None = None

    @property
    def key(self) -> str:
        """A stable name for the configuration, safe inside state-dict keys."""
        parts = [f"w{_fmt(self.width)}"]
        if self.resolution is not None:
            parts.append(f"r{int(self.resolution)}")
        if self.frames is not None:
            parts.append(f"t{int(self.frames)}")
        return "_".join(parts)

    @property
    def name(self) -> str:
        """The configuration in the paper's notation, width-resolution(-frames), e.g. 1.0-224,
        0.75-160, 0.5-112-8f (the width to 4 decimals, as in :attr:`key`)."""
        width = f"{float(self.width):.4f}".rstrip("0")
        parts = [width + "0" if width.endswith(".") else width]
        if self.resolution is not None:
            parts.append(str(int(self.resolution)))
        if self.frames is not None:
            parts.append(f"{int(self.frames)}f")
        return "-".join(parts)


def is_count(value: Any) -> bool:
    """Whether ``value`` is a positive integer (any integral type, not a bool or a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def whole(name: str, value: Any, what: str) -> int | None:
    """``value`` as a positive int (None stays None, a whole float is taken); a
    :class:`ConfigError` saying it must be ``what`` otherwise."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    raise ConfigError(f"{name} must be {what}, got {value!r}")


def _fmt(width: float) -> str:
    return f"{width:.4f}".rstrip("0").rstrip(".").replace(".", "p")


@dataclass(frozen=True)
class Space:
    """The configurations trained together and the sandwich rule that samples them.

    Each step trains the full configuration (max width, resolution and frames), the smallest
    width and ``num_random`` uniformly random widths. Every configuration but the full one
    draws its resolution (and frame count) uniformly from the whole list, as the official
    code does; ``smallest_at_lowest`` pins the smallest width to the lowest resolution instead.
    ``antialias``: how every configuration's images are resized (see :func:`to_config`).
    Sampling depends only on ``(seed, step)``, so it is reproducible, identical on every
    process of a distributed run, and unchanged by a resume.
    """

    width_range: tuple[float, float]
    resolutions: tuple[int, ...]
    frames: tuple[int, ...] | None = None
    num_random: int = 2
    smallest_at_lowest: bool = False
    antialias: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "width_range", tuple(float(w) for w in self.width_range))
        object.__setattr__(self, "resolutions", tuple(int(r) for r in self.resolutions))
        if self.frames is not None:
            object.__setattr__(self, "frames", tuple(int(t) for t in self.frames))

    @property
    def full(self) -> Config:
        return Config(self.width_range[1], max(self.resolutions),
                      max(self.frames) if self.frames else None)

    @property
    def smallest(self) -> Config:
        return Config(self.width_range[0], min(self.resolutions),
                      min(self.frames) if self.frames else None)

    def sandwich(self, seed: int, step: int) -> list[Config]:
        """The configurations of one training step; the first is the full (teacher) one."""
        rng = random.Random(f"mutualnet-sandwich:{seed}:{step}")
        lo, hi = self.width_range
        configs = [self.full]
        if self.full == self.smallest:  # a single configuration: nothing to distil
            return configs
        widths = [lo] + [rng.uniform(lo, hi) for _ in range(self.num_random)]
        for i, width in enumerate(widths):
            if i == 0 and self.smallest_at_lowest:
                configs.append(self.smallest)
                continue
            resolution = rng.choice(self.resolutions)
            frames = rng.choice(self.frames) if self.frames else None
            configs.append(Config(width, resolution, frames))
        return configs

    def grid(self, width_step: float = 0.05) -> list[Config]:
        """Widths over the range in equal steps, as near ``width_step`` as the range divides
        into (both ends kept; 0.35–1.0 by 0.25 steps by 0.2167) × resolutions × frames."""
        lo, hi = self.width_range
        steps = (hi - lo) / width_step
        # the whole number of steps whose size is nearest width_step (the finer on a tie)
        n = min({max(1, math.floor(steps)), max(1, math.ceil(steps))},
                key=lambda k: (abs((hi - lo) / k - width_step), -k)) if hi > lo else 0
        widths = sorted({round(lo + i * (hi - lo) / n, 4) for i in range(n + 1)} if n else {lo, hi})
        frames: tuple[int | None, ...] = self.frames or (None,)
        return [Config(w, r, t) for w in widths for r in sorted(self.resolutions) for t in frames]


def channels_last(dims: int) -> torch.memory_format:
    """The channels-last layout of a tensor with ``dims`` dimensions (images 4, clips 5)."""
    return torch.channels_last_3d if dims == 5 else torch.channels_last


def channels_last_format(model: torch.nn.Module) -> torch.memory_format:
    """The channels-last format of a model's inputs (images, or clips when it is temporal)."""
    return channels_last(5 if getattr(model, "temporal", False) else 4)


def to_config(images: Tensor, config: Config, antialias: bool = False) -> Tensor:
    """The batch as a configuration sees it: bilinear resize on the device (and, for clips
    ``[N, C, T, H, W]``, temporal subsampling to ``config.frames`` evenly spaced frames).

    The resize is the official code's (``align_corners=True``, no low-pass filter); with
    ``antialias`` it is the data pipeline's (``align_corners=False``, antialiased), the resize
    a network trained at that resolution sees its images through."""
    if images.dim() == 5 and config.frames is not None and images.shape[2] != config.frames:
        t = images.shape[2]
        index = torch.linspace(0, t - 1, config.frames, device=images.device).round().long()
        images = images.index_select(2, index)
    if config.resolution is None or images.shape[-1] == config.resolution == images.shape[-2]:
        return images
    size = (config.resolution, config.resolution)
    if images.dim() == 5:
        n, c, t, h, w = images.shape
        flat = images.transpose(1, 2).reshape(n * t, c, h, w)
        return _resize(flat, size, antialias).reshape(n, t, c, *size).transpose(1, 2)
    return _resize(images, size, antialias)


def _resize(images: Tensor, size: tuple[int, int], antialias: bool) -> Tensor:
    if antialias:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=True)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=True)
