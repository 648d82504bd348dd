"""Runtime switching: one loaded run serving any compute budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .select import read_grid, select
from .space import Config, to_config

__all__ = ["AdaptiveModel"]


class AdaptiveModel(nn.Module):
    """A trained run that picks its configuration from the query table.

    >>> m = AdaptiveModel.load("runs/fashion_mnist")
    >>> m.set_budget(mmacs=1.0)      # or latency_ms=...
    >>> logits = m(images)           # images at any size; resized to the configuration
    """

    def __init__(self, run, grid: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.run = run
        self.model = run.model
        self.grid = grid
        #: the query-table row chosen by the last ``set_budget`` (None after ``use``)
        self.active: dict[str, Any] | None = None
        # the inference network of each configuration used so far (extracted, BN folded):
        # switching back is free and a forward pass does no slicing or normalisation
        self._nets: dict[Config, nn.Module] = {}
        # this instance's own configuration: several may serve one run's model side by side
        self._config = self.use(Config(run.model.max_width, max(run.config.space.resolutions)))

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "AdaptiveModel":
        from .run import load_run

        run = load_run(run_dir, device)
        grid = read_grid(run.path) if (Path(run_dir) / "grid.json").is_file() else None
        return cls(run, grid).eval()

    @property
    def config(self) -> Config:
        return self._config

    def use(self, config: Config | tuple) -> Config:
        """Switch to an explicit configuration, a :class:`Config` or ``(width, resolution)``
        (``(width, resolution, frames)`` for clips), with its calibrated statistics when it
        has them."""
        if isinstance(config, tuple) and not isinstance(config, Config) and \
                1 <= len(config) <= 3:
            config = Config(*config)
        if not isinstance(config, Config):
            raise ConfigError(f"use takes a Config or (width, resolution), got {config!r}")
        self._config = self.run.check_config(config)
        self.active = None
        return self._config

    def set_budget(self, mmacs: float | None = None, latency_ms: float | None = None
                   ) -> dict[str, Any]:
        """Switch to the most accurate configuration of the query table within the budget."""
        if self.grid is None:
            raise ConfigError(f"{self.run.path} has no query table; run "
                              f"`mutualnet evaluate {self.run.path}` first")
        if (mmacs is None) == (latency_ms is None):
            raise ConfigError("give exactly one budget: mmacs= or latency_ms=")
        row = select(self.grid, max_mmacs=mmacs, max_latency_ms=latency_ms, run=self.run.path)
        config = Config(row["width"], row["resolution"], row.get("frames"))
        if not self.run.is_calibrated(config):
            raise ConfigError(f"configuration {config.key} has no calibrated statistics; run "
                              f"`mutualnet calibrate {self.run.path}`")
        self.use(config)
        self.active = row
        return row

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 -- .to(), .double(), ...
        self._nets.clear()  # built again from the moved model when next used
        return super()._apply(fn, recurse)

    def load_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003
        self._nets.clear()  # built again from the new weights and statistics
        return super().load_state_dict(*args, **kwargs)

    def rebuild(self) -> None:
        """Forget the inference networks built so far: needed after the run's model was
        changed other than through this object's ``load_state_dict`` or ``.to()`` (which do
        it themselves), e.g. its weights edited in place. Each configuration's network is
        built again from the model when next used."""
        self._nets.clear()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Logits of ``images`` (float, normalised as the run's data; any size: resized to the
        configuration) in the dtype and on the device of the model."""
        from .evaluate import static_network

        if not images.is_floating_point():
            raise ConfigError(f"AdaptiveModel takes float images (normalised as the run's data), "
                              f"got {images.dtype}")
        temporal = getattr(self.model, "temporal", False)
        rank, layout = (5, "[N, C, T, H, W] clips") if temporal else (4, "[N, C, H, W] images")
        if images.dim() != rank or images.shape[1] != self.model.in_chans:
            raise ConfigError(f"AdaptiveModel takes {layout} with C = {self.model.in_chans}, "
                              f"got shape {list(images.shape)}")
        like = next(self.model.parameters())
        config = self._config
        net = self._nets.get(config)  # by the exact widths: two may share a key
        if net is None:
            if self.run.placeholder_statistics and not self.run.is_calibrated(config):
                frames = f" --frames {config.frames}" if config.frames else ""
                raise ConfigError(
                    f"configuration {config.name} of {self.run.path} has "
                    f"no calibrated statistics (a converted run's own are placeholders); run "
                    f"`mutualnet calibrate {self.run.path} --widths {config.width:g} "
                    f"--resolutions {config.resolution}{frames}`")
            net = self._nets[config] = static_network(
                self.model, config, self.run.config.train.channels_last)
        return net(to_config(images.to(like.device, like.dtype), config,
                             self.run.config.space.antialias))
