"""``build_datasets``: a :class:`~mutualnet.config.DataConfig` -> train/val datasets + facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import TensorImageDataset
from .cifar import load_cifar
from .folder import ImageFolderDataset
from . import idx as _idx
from .idx import FASHION_MNIST_CLASSES, IDX_FILES, find_idx_files, load_idx_split
from .synthetic import SYNTHETIC_CHANNELS, SYNTHETIC_CLASSES, make_synthetic
from .transforms import (EvalTransform, ImageEvalTransform, ImageTrainTransform, TrainTransform,
                         _check_size)

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = ["DEFAULT_STATS", "DataInfo", "build_datasets"]

#: format -> (mean, std) used when the config gives none
DEFAULT_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "idx": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "image_folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5,) * SYNTHETIC_CHANNELS, (0.25,) * SYNTHETIC_CHANNELS),
}
_SYNTHETIC_SEED = 0


@dataclass
class DataInfo:
    """What the model and the logs need to know about the data."""

    num_classes: int
    in_chans: int
    class_names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    source: str = ""  # where the data came from, for people


def _stats(cfg: DataConfig, channels: int) -> tuple[list[float], list[float]]:
    mean, std = DEFAULT_STATS[cfg.format]
    out = []
    for key, given, default in (("mean", cfg.mean, mean), ("std", cfg.std, std)):
        values = list(default) if given is None else [float(v) for v in given]
        if len(values) != channels:
            raise DataError(f"data.{key} has {len(values)} value(s) but {cfg.format} images have "
                            f"{channels} channel(s); give {channels} or leave it unset")
        if key == "std" and any(not v > 0 for v in values):
            raise DataError(f"data.std values must be positive, got {values}")
        out.append(values)
    return out[0], out[1]


def _tensor_transforms(cfg: DataConfig, image_size: int, mean: list[float],
                       std: list[float]) -> tuple[TrainTransform, EvalTransform]:
    train = TrainTransform(image_size, mean, std, augment=cfg.augment, shift=cfg.shift,
                           hflip=cfg.hflip, crop_scale=cfg.crop_scale)
    return train, EvalTransform(image_size, mean, std)


def _need_root(cfg: DataConfig, what: str) -> Path:
    if not cfg.root:
        raise DataError(f"data.format {cfg.format} needs a location: point --data (data.root) "
                        f"at {what}")
    return Path(cfg.root).expanduser()


def _check_labels(labels: torch.Tensor, num_classes: int, path: Path, what: str) -> None:
    if labels.numel() and int(labels.max()) >= num_classes:
        raise DataError(f"{path} holds label {int(labels.max())}, outside 0..{num_classes - 1} "
                        f"({what}); is this the right data.format?")


def _load_idx(cfg: DataConfig) -> tuple[dict, list[str], str]:
    if cfg.format == "fashion_mnist":
        if cfg.root:
            folder = Path(cfg.root).expanduser()
            files = find_idx_files(folder, hint=" (e.g. apt-get install dataset-fashion-mnist)")
        else:
            folder = _idx.fashion_mnist_files()
            files = find_idx_files(folder)
        system = any(folder == Path(d) for d in _idx.FASHION_MNIST_SYSTEM_DIRS)
        source = f"Fashion-MNIST from {folder}" + (
            " (Debian package dataset-fashion-mnist)" if system else "")
        names: list[str] | None = list(FASHION_MNIST_CLASSES)
    else:
        folder = _need_root(cfg, "a folder holding " + ", ".join(
            f"{n}[.gz]" for n in IDX_FILES.values()))
        files = find_idx_files(folder)
        title = "MNIST" if cfg.format == "mnist" else "IDX files"
        source = f"{title} from {folder}"
        names = [str(i) for i in range(10)] if cfg.format == "mnist" else None
    train_images, train_labels = load_idx_split(files["train_images"], files["train_labels"])
    val_images, val_labels = load_idx_split(files["val_images"], files["val_labels"])
    if train_images.shape[1:] != val_images.shape[1:]:
        train_hw, val_hw = ("x".join(map(str, t.shape[1:])) for t in (train_images, val_images))
        raise DataError(f"{files['train_images']} holds {train_hw} images but "
                        f"{files['val_images']} holds {val_hw}; the files do not belong together: "
                        f"fetch the dataset again")
    if names is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
        names = [str(i) for i in range(num_classes)]
    else:
        _check_labels(train_labels, len(names), files["train_labels"], cfg.format)
        _check_labels(val_labels, len(names), files["val_labels"], cfg.format)
    data = {"train_images": train_images.unsqueeze(1), "train_labels": train_labels,
            "val_images": val_images.unsqueeze(1), "val_labels": val_labels}
    return data, names, source


def build_datasets(cfg: DataConfig, image_size: int) -> tuple[Dataset, Dataset, DataInfo]:
    """The train dataset (with augmentation), the val dataset (evaluation transform), and facts.

    Items are ``(float32 [C, image_size, image_size] normalised with info.mean/std, int label)``.
    Raises :class:`DataError` for missing or damaged data, with a one-line fix.
    """
    _check_size(image_size)
    fmt = cfg.format
    if fmt not in DEFAULT_STATS:
        raise ConfigError(f"data.format must be one of {', '.join(DEFAULT_STATS)}, got {fmt!r}")

    if fmt == "image_folder":
        root = _need_root(cfg, "a folder holding train/<class>/<images> and val/<class>/<images>")
        mean, std = _stats(cfg, 3)
        train_tf = ImageTrainTransform(image_size, mean, std, augment=cfg.augment,
                                       shift=cfg.shift, hflip=cfg.hflip, crop_scale=cfg.crop_scale)
        val_tf = ImageEvalTransform(image_size, mean, std, crop_ratio=cfg.eval_crop_ratio)
        train = ImageFolderDataset(root / "train", train_tf, skip_bad_files=cfg.skip_bad_files)
        val = ImageFolderDataset(root / "val", val_tf, classes=train.classes,
                                 skip_bad_files=cfg.skip_bad_files)
        skipped = len(train.skipped) + len(val.skipped)
        source = f"image folder {root}" + (f" ({skipped} unreadable files skipped)"
                                           if skipped else "")
        info = DataInfo(len(train.classes), 3, list(train.classes), mean, std, source)
        return train, val, info

    if fmt == "synthetic":
        data = make_synthetic(image_size, _SYNTHETIC_SEED)
        names = [f"pattern {i}" for i in range(SYNTHETIC_CLASSES)]
        source = (f"synthetic: {SYNTHETIC_CLASSES} smooth random patterns generated in memory "
                  f"(seed {_SYNTHETIC_SEED})")
    elif fmt in ("cifar10", "cifar100"):
        loaded = load_cifar(_need_root(cfg, f"the {fmt} python-version folder, its parent or "
                                            f"its .tar.gz archive"), fmt)
        data = {k: loaded[k] for k in ("train_images", "train_labels", "val_images",
                                       "val_labels")}
        names, source = loaded["class_names"], loaded["source"]
    else:
        data, names, source = _load_idx(cfg)

    channels = data["train_images"].shape[1]
    mean, std = _stats(cfg, channels)
    train_tf, val_tf = _tensor_transforms(cfg, image_size, mean, std)
    train = TensorImageDataset(data["train_images"], data["train_labels"], train_tf,
                               name=f"{fmt} train")
    val = TensorImageDataset(data["val_images"], data["val_labels"], val_tf, name=f"{fmt} val")
    info = DataInfo(len(names), channels, list(names), mean, std, source)
    return train, val, info
