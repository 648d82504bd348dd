"""Configurations of an adaptive network: width, input resolution and (for video) frames."""

from __future__ import annotations

from dataclasses import dataclass


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


def _fmt(width: float) -> str:
    return f"{width:.4f}".rstrip("0").rstrip(".").replace(".", "p")
