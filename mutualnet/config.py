"""The one configuration type of a run: plain dataclasses, read from YAML, checked strictly."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
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
#: formats of the dense tasks: COCO instances annotations, and the built-in synthetic scenes
DENSE_DATA_FORMATS = ("coco", "scenes")
#: formats of action recognition (clips): video files in class folders, built-in motions
VIDEO_DATA_FORMATS = ("video_folder", "synthetic_motion")
TASKS = ("classification", "detection", "segmentation")
MODES = ("mutualnet", "usnet", "independent", "single")
#: the smallest input a configuration may use (the models downsample by up to 32)
MIN_RESOLUTION = 8
#: seeds go to ``torch.manual_seed``, which takes 64-bit values
_SEED_LIMIT = 2**63
#: bounds that catch a typo before it costs a training run: the widest network (times the
#: model's base widths), the largest input side, the random configurations per step
MAX_WIDTH, MAX_RESOLUTION, MAX_RANDOM = 4.0, 4096, 32


@dataclass
class ModelConfig:
    """Which network; ``options`` go to ``create_model`` (e.g. ``small_input``, ``dropout``)."""

    name: str = "mobilenet_v2"
    options: dict[str, Any] = field(default_factory=dict)
    #: detection / segmentation: the head's options (see ``mutualnet.models.dense``), and a
    #: classification run directory whose weights initialise the backbone
    head: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None


#: data.augment and data.shift_pad: the training transforms' geometry and its fill
AUGMENTS = ("shift", "resized_crop", "none")
SHIFT_PADS = ("zeros", "reflect")


@dataclass
class SpaceConfig:
    """The configurations trained together (see ``mutualnet.space.Space``)."""

    width_range: tuple[float, float] = (0.35, 1.0)
    resolutions: list[int] = field(default_factory=lambda: [28, 24, 20, 16])
    frames: list[int] | None = None
    num_random: int = 2
    smallest_at_lowest: bool = False
    #: resize each configuration's images with the data pipeline's antialiased filter instead
    #: of the official code's plain bilinear (align_corners=True) resize
    antialias: bool = False


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented.

    ``format``: fashion_mnist, mnist, idx (a folder of IDX files), cifar10, cifar100,
    image_folder (one sub-folder per class, with ``train``/``val`` splits) or synthetic.
    ``augment``: ``shift`` (random translation by up to ``shift`` pixels, for small images;
    ``shift_pad`` ``zeros`` or ``reflect`` fills the pixels from outside), ``resized_crop``
    (ImageNet-style random resized crop with ``crop_scale``) or ``none``. ``color_jitter``
    j > 0 scales brightness, contrast and saturation by factors in [1 - j, 1 + j] (training).
    Video (``video_folder``: ``train``/``val`` splits of class folders of video files;
    ``synthetic_motion``: built-in motions of Fashion-MNIST items): a clip is ``max(space.frames)``
    frames ``frame_stride`` apart; evaluation averages ``eval_clips`` clips per video.
    """

    format: str = "fashion_mnist"
    root: str | None = None
    augment: str = "shift"
    shift: int = 2
    shift_pad: str = "zeros"
    hflip: bool = True
    color_jitter: float = 0.0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    eval_crop_ratio: float = 0.875
    mean: list[float] | None = None
    std: list[float] | None = None
    num_workers: int = 2
    skip_bad_files: bool = False
    frame_stride: int = 1
    eval_clips: int = 1


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
    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        """Check values whose type is right but whose meaning is not."""
        lo, hi = self.space.width_range
        if not 0 < lo <= hi <= MAX_WIDTH:
            raise ConfigError(f"space.width_range must satisfy 0 < lo <= hi <= {MAX_WIDTH:g}, "
                              f"got [{lo}, {hi}]")
        res = self.space.resolutions
        if not res or not MIN_RESOLUTION <= min(res) <= max(res) <= MAX_RESOLUTION:
            raise ConfigError(f"space.resolutions must be a non-empty list of sizes from "
                              f"{MIN_RESOLUTION} to {MAX_RESOLUTION} pixels, got {res}")
        _check_distinct("space.resolutions", res)
        if self.space.frames is not None and (not self.space.frames or min(self.space.frames) < 1):
            raise ConfigError(f"space.frames must be a non-empty list of positive frame counts, "
                              f"got {self.space.frames}")
        if self.space.frames:
            _check_distinct("space.frames", self.space.frames)
        if not 0 <= self.space.num_random <= MAX_RANDOM:
            raise ConfigError(f"space.num_random must be from 0 to {MAX_RANDOM}, "
                              f"got {self.space.num_random}")
        formats = DATA_FORMATS + DENSE_DATA_FORMATS + VIDEO_DATA_FORMATS
        if self.data.format not in formats:
            raise ConfigError(f"data.format must be one of {', '.join(formats)}, "
                              f"got {self.data.format!r}")
        self._check_task()
        self._check_video()
        if self.data.skip_bad_files and self.data.format not in ("image_folder", "video_folder"):
            raise ConfigError(f"data.skip_bad_files applies to image_folder and video_folder "
                              f"data, not {self.data.format}; remove it")
        for key, allowed in (("augment", AUGMENTS), ("shift_pad", SHIFT_PADS)):
            value = getattr(self.data, key)
            if value not in allowed:
                raise ConfigError(f"data.{key} must be {', '.join(allowed[:-1])} or "
                                  f"{allowed[-1]}, got {value!r}")
        if not 0 <= self.data.color_jitter < 1:
            raise ConfigError(f"data.color_jitter must be in [0, 1), got {self.data.color_jitter}")
        if self.train.mode not in MODES:
            raise ConfigError(f"train.mode must be one of {', '.join(MODES)}, "
                              f"got {self.train.mode!r}")
        if self.train.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp must be none, bf16 or fp16, got {self.train.amp!r}")
        for name in ("epochs", "batch_size", "accumulate"):
            value = getattr(self.train, name)
            if value < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {value}")
        if self.train.max_steps is not None and self.train.max_steps < 1:
            raise ConfigError(f"train.max_steps must be at least 1, got {self.train.max_steps}")
        if not -_SEED_LIMIT <= self.train.seed < _SEED_LIMIT:
            raise ConfigError(f"train.seed must fit in 64 bits, got {self.train.seed}")
        if self.train.log_every < 1:
            raise ConfigError(f"train.log_every must be at least 1, got {self.train.log_every}")
        if self.train.distill_temperature <= 0:
            raise ConfigError(f"train.distill_temperature must be positive, "
                              f"got {self.train.distill_temperature}")
        self._check_not_negative("train", "checkpoint_every", "distill_weight")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        self._check_not_negative("optim", "weight_decay", "min_lr", "warmup_epochs")
        if not 0 <= self.optim.momentum < 1:
            raise ConfigError(f"optim.momentum must be at least 0 and below 1, "
                              f"got {self.optim.momentum}")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.min_lr ({self.optim.min_lr}) must not exceed optim.lr "
                              f"({self.optim.lr}): the schedule decays from lr to min_lr")
        if not 0 <= self.optim.warmup_start_factor <= 1:
            raise ConfigError(f"optim.warmup_start_factor must be between 0 and 1, "
                              f"got {self.optim.warmup_start_factor}")
        if not 0 <= self.optim.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing must be at least 0 and below 1, "
                              f"got {self.optim.label_smoothing}")
        self._check_not_negative("data", "num_workers", "shift")
        if self.data.augment == "shift" and self.data.shift > max(res) // 2:
            raise ConfigError(f"data.shift must be at most half the largest resolution "
                              f"({max(res) // 2} pixels), got {self.data.shift}: a shift by "
                              f"more moves most of the image out of view")
        lo, hi = self.data.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < lo <= hi <= 1 (shares of the "
                              f"image's area), got [{lo}, {hi}]")
        if not 0.1 <= self.data.eval_crop_ratio <= 1:
            raise ConfigError(f"data.eval_crop_ratio must be from 0.1 to 1 (the evaluation "
                              f"crop's share of the resized image's side), "
                              f"got {self.data.eval_crop_ratio}")
        return self

    def _check_task(self) -> None:
        """Dense tasks read COCO-style data, classification reads labelled images."""
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        dense = self.task != "classification"
        if dense and self.data.format not in DENSE_DATA_FORMATS:
            raise ConfigError(f"task {self.task} needs data.format coco or scenes, got "
                              f"{self.data.format!r}")
        if not dense and self.data.format in DENSE_DATA_FORMATS:
            raise ConfigError(f"data.format {self.data.format} holds boxes and masks; set "
                              f"task: detection or task: segmentation")
        if dense and self.data.color_jitter:
            raise ConfigError(f"data.color_jitter is not available for {self.task}; remove it")
        if dense and self.data.augment != "none":
            raise ConfigError(f"data.augment {self.data.augment} is not available for "
                              f"{self.task}; set data.augment: none (data.hflip flips images, "
                              f"boxes and masks)")
        if not dense and (self.model.head or self.model.backbone_weights):
            raise ConfigError("model.head and model.backbone_weights configure detection and "
                              "segmentation; remove them or set task: detection / segmentation")

    def _check_video(self) -> None:
        """Clips come from the video formats, and only they need (and give) frames."""
        video = self.data.format in VIDEO_DATA_FORMATS
        if video and not self.space.frames:
            raise ConfigError(f"data.format {self.data.format} gives clips: set space.frames, "
                              f"e.g. [8, 4]")
        if not video and self.space.frames:
            raise ConfigError(f"space.frames needs clips but data.format {self.data.format} "
                              f"holds images; use video_folder or synthetic_motion, or remove "
                              f"space.frames")
        for name in ("frame_stride", "eval_clips"):
            if getattr(self.data, name) < 1:
                raise ConfigError(f"data.{name} must be at least 1, got {getattr(self.data, name)}")
        if self.data.format == "synthetic_motion" and self.data.hflip:
            raise ConfigError("data.hflip would swap the left/right and clockwise/anticlockwise "
                              "classes of synthetic_motion; set data.hflip: false")

    def _check_not_negative(self, section: str, *names: str) -> None:
        for name in names:
            value = getattr(getattr(self, section), name)
            if value < 0:
                raise ConfigError(f"{section}.{name} must be 0 or more, got {value}")


def _check_distinct(key: str, values: list) -> None:
    """A size listed twice would be sampled twice as often, and tabled twice."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(f"{key} lists {', '.join(map(str, twice))} more than once, "
                          f"got {values}")


def absolute_root(root: str) -> str:
    """A data location as a run records it: absolute (``~`` expanded, links kept as given),
    so that the run finds its data from any working directory."""
    return os.path.abspath(os.path.expanduser(str(root)))


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
            return tuple(_coerce(v, a, f"{where}[{i}]")
                         for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if value is None:  # written with every entry commented out
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{where} must have names as keys, got {bad[0]!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = _as_float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {value!r}")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")


def _as_float(value: Any) -> float | None:
    """A number as a float (None when it is not one); YAML reads 1e-4 (no dot) as a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if isinstance(value, str) and "_" in value:  # Python reads "1_0" as 10; YAML does not
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return math.inf
    except ValueError:
        return None


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            # a section's key written at the top level: name the section it belongs in
            owners = [f"{name}.{key}" for name in names if dataclasses.is_dataclass(hints[name])
                      and key in {f.name for f in dataclasses.fields(hints[name])}]
            close = owners or [f"{where}.{name}" if where else name for name in
                               difflib.get_close_matches(str(key), names, n=1)]
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, {} if value is None else value, path)  # an empty section
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
    except (yaml.YAMLError, RecursionError):
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values in YAML syntax) to raw config data. A
    mapping given for a whole section changes the keys it names and keeps the others (one
    given for ``model.options`` or ``model.head`` replaces them: their keys depend on the
    model); ``null`` gives a key its default."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. optim.lr=0.05)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # absent, or an empty section in the YAML
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                where = ".".join(parts[:depth + 1])
                raise ConfigError(f"--set {key.strip()!r}: {where} is a value ({node!r}), not "
                                  f"a section of keys; set {where}=VALUE")
        value = _parse_value(text)
        if value is None:
            node.pop(parts[-1], None)
        else:
            old = node.get(parts[-1])
            section = len(parts) == 1 and isinstance(old, dict) and isinstance(value, dict)
            node[parts[-1]] = {**old, **value} if section else value
    return data


def _yaml_problem(exc: BaseException) -> str:
    """Where and what the YAML error is, on one line."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _strict_yaml(text: str) -> Any:
    """``yaml.safe_load``, refusing a key given twice in one mapping (where YAML would quietly
    keep the last)."""
    import yaml

    class Strict(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    break
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in this section",
                        key_node.start_mark)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=Strict)  # noqa: S506 (a SafeLoader)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}; give the path of a YAML recipe "
                              f"(e.g. configs/fashion_mnist.yaml)")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read config file {path} ({reason}); give a readable "
                              f"YAML recipe") from None
        try:
            data = _strict_yaml(text) or {}
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"config file {path} is not valid YAML ({_yaml_problem(exc)}); "
                              f"fix the recipe") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    return config_from_dict(apply_overrides(data, list(overrides or [])))
