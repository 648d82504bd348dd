"""A run directory: its recipe, its weights (with calibrated BN statistics) and its results."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import (MIN_RESOLUTION, RunConfig, absolute_root, config_from_dict,
                     config_to_dict)
from .errors import CheckpointError, ConfigError, DataError, MutualNetError
from .nn.model import SlimmableModel
from .space import Config, Space, channels_last
from .tasks import build_task_model
from .select import GRID_CSV, GRID_JSON, PARETO_PNG, QUERY_TABLE, RESULT_FILES
from .train.checkpoint import (CHECKPOINT, CONFIG_FILE, LOCK, PREVIOUS, WEIGHTS, load_checkpoint,
                               load_model_state, load_weights, no_run_directory, save_weights,
                               write_config)
from .train.log import LOG

__all__ = ["Run", "load_run", "CONFIG_FILE", "GRID_JSON", "GRID_CSV",
           "QUERY_TABLE", "PARETO_PNG", "RUN_FILES"]

log = logging.getLogger("mutualnet")

#: the files a run directory holds
RUN_FILES = (CONFIG_FILE, CHECKPOINT, PREVIOUS, WEIGHTS, LOG, *RESULT_FILES, LOCK)


def held_run_files(folder: Path) -> list[str]:
    """The files of a trained or converted run that ``folder`` holds (weights, a training
    state or results), which nothing but that run's own commands may replace."""
    return [name for name in (CHECKPOINT, PREVIOUS, WEIGHTS, *RESULT_FILES)
            if (Path(folder) / name).exists()]



def _whole(name: str, value: Any) -> int | None:
    """A count of a configuration as an int (a whole float is taken, as ``set_config``
    takes it); its range is checked where the message can say what the run takes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    return None if value is None else int(value)

@dataclass
class Run:
    path: Path
    config: RunConfig
    meta: dict[str, Any]
    model: SlimmableModel
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: a data location given to a run that records none (a converted run), recorded once the
    #: data is found to fit
    _unrecorded_root: str | None = field(default=None, repr=False)
    #: where the data of the latest :meth:`datasets` came from, in words (results record it)
    data_source: str | None = field(default=None, repr=False)

    def use_data(self, root: str) -> None:
        """Read the data from ``root`` (it moved since training, or the run records none)."""
        root = absolute_root(root)
        if self.config.data.root is None and self.config.data.format == "image_folder":
            self._unrecorded_root = root  # a folder format without a folder: converted
        self.config.data.root = root

    @property
    def space(self) -> Space:
        s = self.config.space
        return Space(tuple(self.meta["width_range"]), tuple(s.resolutions),
                     tuple(s.frames) if s.frames else None, s.num_random, s.smallest_at_lowest,
                     s.antialias)

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is (or would become) one of the run's own files."""
        path = Path(path)
        for name in RUN_FILES:
            mine = self.path / name
            if path.resolve() == mine.resolve() or (path.exists() and mine.exists()
                                                    and path.samefile(mine)):
                return True
        return False

    def calibrated_keys(self) -> set[str]:
        from .nn.layers import _SlimBatchNormNd

        bns = [m for m in self.model.modules() if isinstance(m, _SlimBatchNormNd)]
        if not bns:
            return set()
        return set.intersection(*(set(bn.calibrated) for bn in bns))

    def is_calibrated(self, config: Config) -> bool:
        return config.key in self.calibrated_keys()

    def check_config(self, config: Config) -> Config:
        """Validate a configuration against what the model can run."""
        # widths are named, and their statistics kept, to 4 decimals: one that rounds to a
        # configuration's name is that configuration
        width = round(self.model.check_width(config.width), 4)
        trained = ", ".join(map(str, sorted(self.config.space.resolutions)))
        if config.resolution is None:
            raise ConfigError(f"a configuration needs a resolution (this run was trained at "
                              f"{trained})")
        config = Config(width, _whole("resolution", config.resolution),
                        _whole("frames", config.frames))
        if config.resolution < MIN_RESOLUTION:
            raise ConfigError(f"resolution {config.resolution} is too small: give at least "
                              f"{MIN_RESOLUTION} pixels (this run was trained at {trained})")
        trained_frames = self.config.space.frames
        if trained_frames and config.frames is None:
            config = Config(config.width, config.resolution, max(trained_frames))
        elif config.frames is not None and not trained_frames:
            raise ConfigError(f"this run's model takes images, not clips: drop the frame count "
                              f"({config.frames})")
        elif config.frames is not None and not 1 <= config.frames <= max(trained_frames):
            raise ConfigError(f"frames {config.frames} is outside 1..{max(trained_frames)}: the "
                              f"run's clips hold {max(trained_frames)} frames (it was trained "
                              f"at {', '.join(map(str, sorted(trained_frames)))})")
        return config

    def datasets(self):
        """The run's (train, val) datasets at its largest resolution, checked against the model."""
        from .data import build_datasets

        frames = self.config.space.frames
        train, val, info = build_datasets(self.config.data, max(self.config.space.resolutions),
                                          self.config.task, max(frames) if frames else None)
        if info.num_classes > self.meta["num_classes"] or info.in_chans != self.meta["in_chans"]:
            raise DataError(
                f"the data ({info.source}: {info.num_classes} classes, {info.in_chans} channels) "
                f"does not fit the model ({self.meta['num_classes']} classes, "
                f"{self.meta['in_chans']} channels); point --data at the run's dataset")
        info.check_classes(self.meta)
        self.data_source = info.source
        if self._unrecorded_root is not None:  # later commands need no --data
            recorded = config_to_dict(read_run_config(self.path))
            recorded["data"]["root"] = self._unrecorded_root
            write_config(self.path, recorded)
            self._unrecorded_root = None
        return train, val

    def check_trusted(self) -> None:
        """Refuse weights whose BN statistics must be calibrated first (a converted run)."""
        if self.meta.get("needs_calibration"):
            recorded = self.config.data.root is not None and self._unrecorded_root is None
            data = "" if recorded else " --data DIR"
            raise ConfigError(f"{self.path} holds weights whose BN statistics are not trusted; "
                              f"run `mutualnet calibrate {self.path}{data}` first"
                              + (" (DIR: the training images, train/<class>/...; it is "
                                 "recorded for later commands)" if data else ""))

    @property
    def placeholder_statistics(self) -> bool:
        """Whether the BN statistics shared by all configurations are placeholders (a converted
        run): only calibrated configurations can run."""
        return bool(self.meta.get("placeholder_statistics") or
                    self.meta.get("needs_calibration"))

    def save(self) -> None:
        """Write the weights and calibrated statistics back (atomically)."""
        save_weights(self.path / WEIGHTS, self.model.state_dict(), self.meta)


def read_run_config(path: Path) -> RunConfig:
    """The recipe a run directory records (its ``config.yaml``); a :class:`CheckpointError`
    naming the file when it is unreadable or invalid."""
    import yaml

    config_path = Path(path) / CONFIG_FILE
    try:
        return config_from_dict(yaml.safe_load(config_path.read_text()) or {})
    except MutualNetError as exc:
        raise CheckpointError(f"{config_path} is invalid: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, OSError):
        raise CheckpointError(f"{config_path} is unreadable or not YAML; restore it or "
                              f"retrain") from None


def load_run(path: str | Path, device: str | torch.device = "cpu") -> Run:
    """Open a run directory written by ``mutualnet train`` (or ``convert-official``)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{no_run_directory(path)}; give the --out of a finished "
                              f"`mutualnet train`")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} is not a run directory ({CONFIG_FILE} missing)")
    config = read_run_config(path)
    checkpoint = None
    if (path / WEIGHTS).is_file():
        source = path / WEIGHTS
        state, meta = load_weights(source)
        checkpoint = _continued(path, meta)
    elif (path / CHECKPOINT).is_file():
        checkpoint = load_checkpoint(path / CHECKPOINT)
    else:
        raise CheckpointError(f"{path} holds no weights ({WEIGHTS} or {CHECKPOINT}); "
                              f"train it first")
    if checkpoint is not None:  # training has not finished: its latest weights
        source = path / CHECKPOINT
        state, meta = checkpoint["model"], checkpoint.get("meta") or {}
        if isinstance(meta, dict):  # kept with the weights that commands write back
            meta = {**meta, "unfinished_step": checkpoint.get("step")}
    _check_meta(meta, source, config)
    if "unfinished_step" in meta:
        log.warning("%s has not finished training: its weights are those of step %s; "
                    "`mutualnet train --resume` finishes it", path, meta["unfinished_step"])
    if not isinstance(device, torch.device):
        from .train.distributed import resolve_device

        device = resolve_device(str(device))
    try:
        model = build_task_model(meta.get("task", "classification"), meta["model"],
                                 num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                                 width_range=tuple(meta["width_range"]),
                                 options=meta.get("options", {}), head=meta.get("head"))
    except (MutualNetError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source} describes a model that cannot be built ({exc}); "
                              f"restore the file or retrain") from None
    load_model_state(model, state, f"the weights in {source}")
    model.to(device).eval()
    if config.train.channels_last:  # the recipe's layout: calibration runs about 2x faster
        model.to(memory_format=channels_last(5 if getattr(model, "temporal", False) else 4))
    return Run(path, config, meta, model, device)


def _continued(path: Path, meta: Any) -> dict | None:
    """The checkpoint of a run whose training went on past its weights file (a later leg,
    stopped before it wrote its weights): its weights are the run's latest. Only a checkpoint
    written after the weights file is read; weights files of older versions record no step."""
    step = meta.get("step") if isinstance(meta, dict) else None
    checkpoint = path / CHECKPOINT
    if not isinstance(step, int) or "unfinished_step" in meta or not checkpoint.is_file():
        return None
    try:
        if checkpoint.stat().st_mtime_ns <= (path / WEIGHTS).stat().st_mtime_ns:
            return None
        state = load_checkpoint(checkpoint)
    except (OSError, MutualNetError):  # `train --resume` reports it; the weights are whole
        return None
    later = state.get("step")
    return state if isinstance(later, int) and later > step else None


def _check_meta(meta: Any, source: Path, config: RunConfig) -> None:
    """The model description saved with the weights: complete, and the model of config.yaml."""
    kinds = {"model": str, "num_classes": int, "in_chans": int, "width_range": list}
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"the weights in {source} carry no model description; retrain "
                              f"or convert them again")
    options = meta.get("options", {})
    bad = [k for k, kind in kinds.items() if not isinstance(meta.get(k), kind)]
    if not isinstance(options, dict):
        bad.append("options")
    if bad:
        raise CheckpointError(f"the model description in {source} is damaged ({', '.join(bad)}); "
                              f"restore the file or retrain")
    if meta["model"] != config.model.name:
        found, wanted = meta["model"], config.model.name
    elif options != config.model.options:
        found, wanted = (f"{meta['model']} with options {options}",
                         f"options {config.model.options}")
    else:
        return
    raise CheckpointError(f"{source} holds a {found} but {CONFIG_FILE} beside it describes "
                          f"{wanted}: the files come from different runs; restore the run's "
                          f"own files")
