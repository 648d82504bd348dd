"""The one configuration type of a run: plain dataclasses, read from YAML, checked strictly."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SpaceConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

DATA_FORMATS = ("fashion_mnist", "mnist", "idx", "cifar10", "cifar100", "image_folder", "synthetic")
MODES = ("mutualnet", "usnet", "independent", "single")


@dataclass
class ModelConfig:
    """Which network; ``options`` go to ``create_model`` (e.g. ``small_input``, ``dropout``)."""

    name: str = "mobilenet_v2"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpaceConfig:
    """The configurations trained together (see ``mutualnet.space.Space``)."""

    width_range: tuple[float, float] = (0.35, 1.0)
    resolutions: list[int] = field(default_factory=lambda: [28, 24, 20, 16])
    frames: list[int] | None = None
    num_random: int = 2
    smallest_at_lowest: bool = False


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented.

    ``format``: fashion_mnist, mnist, idx (a folder of IDX files), cifar10, cifar100,
    image_folder (one sub-folder per class, with ``train``/``val`` splits) or synthetic.
    ``augment``: ``shift`` (random translation by up to ``shift`` pixels, for small images),
    ``resized_crop`` (ImageNet-style random resized crop with ``crop_scale``) or ``none``.
    """

    format: str = "fashion_mnist"
    root: str | None = None
    augment: str = "shift"
    shift: int = 2
    hflip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    eval_crop_ratio: float = 0.875
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 2
    skip_bad_files: bool = False


@dataclass
class OptimConfig:
    """SGD with Nesterov momentum and a per-iteration cosine schedule with optional warmup."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    no_decay_bn_bias_depthwise: bool = True
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    """The loop: length, batch (global, over all processes), precision, checkpoints, logs.

    ``accumulate`` splits each process's batch into that many micro-batches whose gradients
    are summed before the one optimizer step (the global batch is unchanged).
    ``checkpoint_every`` saves every N steps (0: at each epoch end only).
    """

    mode: str = "mutualnet"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    accumulate: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    distill_temperature: float = 1.0
    distill_weight: float = 1.0
    checkpoint_every: int = 0
    log_every: int = 20
    validate: bool = True
    progress: bool = True
    skip_nonfinite: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        """Check values whose type is right but whose meaning is not."""
        lo, hi = self.space.width_range
        if not 0 < lo <= hi:
            raise ConfigError(f"space.width_range must satisfy 0 < lo <= hi, got [{lo}, {hi}]")
        if not self.space.resolutions or min(self.space.resolutions) < 1:
            raise ConfigError("space.resolutions must be a non-empty list of positive sizes")
        if self.space.frames is not None and (not self.space.frames or min(self.space.frames) < 1):
            raise ConfigError("space.frames must be a non-empty list of positive frame counts")
        if self.space.num_random < 0:
            raise ConfigError("space.num_random must be 0 or more")
        if self.data.format not in DATA_FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(DATA_FORMATS)}, "
                              f"got {self.data.format!r}")
        if self.data.augment not in ("shift", "resized_crop", "none"):
            raise ConfigError("data.augment must be shift, resized_crop or none, "
                              f"got {self.data.augment!r}")
        if self.train.mode not in MODES:
            raise ConfigError(f"train.mode must be one of {', '.join(MODES)}, "
                              f"got {self.train.mode!r}")
        if self.train.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be none, bf16 or fp16, got {self.train.amp!r}")
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self.train, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1")
        if self.train.max_steps is not None and self.train.max_steps < 1:
            raise ConfigError("train.max_steps must be at least 1")
        if self.optim.lr <= 0:
            raise ConfigError("optim.lr must be positive")
        if self.data.num_workers < 0:
            raise ConfigError("data.num_workers must be 0 or more")
        return self


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting lists/tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data or {}, "").validate()


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML/JSON-able data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values in YAML syntax) to raw config data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. optim.lr=0.05)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; give the path of a YAML recipe "
                              f"(e.g. configs/fashion_mnist.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    return config_from_dict(apply_overrides(data, list(overrides or [])))
