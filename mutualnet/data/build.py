"""``build_datasets``: a :class:`~mutualnet.config.DataConfig` -> train/val datasets + facts."""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError, listed
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
    "coco": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "scenes": ((0.25, 0.25, 0.25), (0.25, 0.25, 0.25)),
    "video_folder": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),  # Kinetics, as in SlowFast
    "synthetic_motion": ((0.13, 0.13, 0.13), (0.18, 0.18, 0.18)),
}
_SYNTHETIC_SEED = 0


log = logging.getLogger("mutualnet")


@dataclass
class DataInfo:
    """What the model and the logs need to know about the data."""

    num_classes: int
    in_chans: int
    class_names: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    source: str = ""  # where the data came from, for people
    #: COCO data: the category id of each class index (None for a segmenter's background)
    category_ids: list[int | None] | None = None

    def check_classes(self, meta: Any) -> None:
        """Refuse data whose classes are not the ``class_names`` of a run's ``meta`` (as saved
        with its weights and checkpoints): a label is an index into the class list, so another
        list gives it another meaning (a class folder missing or renamed since training shifts
        every label after it). Lists that only number their classes, as IDX files and
        converted runs do, say nothing and are not compared (fewer classes than such a run's
        get a warning: they are taken as its first ones); fewer classes are fine when they
        come first."""
        trained = meta.get("class_names") if isinstance(meta, dict) else None
        # names as the folders give them (NFC: one name in either Unicode form is one class)
        trained = [_nfc(n) for n in trained] if isinstance(trained, list) else []
        found = [_nfc(n) for n in self.class_names]
        if _named(trained) and _named(found) and found != trained[:len(found)]:
            raise DataError(f"the data ({self.source}) has the classes {listed(found)} but the "
                            f"run was trained on {listed(trained)}; its labels would name other "
                            f"classes: point --data at the run's dataset")
        if trained and not _named(trained) and len(found) < len(trained):
            log.warning("the data (%s) has %d classes and the run %d, which it only numbers: "
                        "the data's classes are taken as the run's first %d, so its accuracy "
                        "is right only for data whose classes are those, in that order",
                        self.source, len(found), len(trained), len(found))


def _nfc(name: Any) -> Any:
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def _named(names: list) -> bool:
    """Whether a class list names its classes (not just numbers them 0, 1, ...)."""
    return (bool(names) and all(isinstance(n, str) for n in names)
            and names != [str(i) for i in range(len(names))])


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


def augmentation(cfg: DataConfig) -> dict:
    """The training transforms' keyword arguments from the data section."""
    return {"augment": cfg.augment, "shift": cfg.shift, "shift_pad": cfg.shift_pad,
            "hflip": cfg.hflip, "crop_scale": cfg.crop_scale, "color_jitter": cfg.color_jitter}


def _tensor_transforms(cfg: DataConfig, image_size: int, mean: list[float],
                       std: list[float]) -> tuple[TrainTransform, EvalTransform]:
    train = TrainTransform(image_size, mean, std, **augmentation(cfg))
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


def _dense_datasets(cfg: DataConfig, image_size: int, task: str
                    ) -> tuple[Dataset, Dataset, DataInfo]:
    """COCO-style data (files, or the synthetic scenes in memory) for detection/segmentation.

    Detection classes are the categories; segmentation adds a background class 0.
    """
    from .coco import CocoDataset, find_split, parse_coco, read_coco
    from .scenes import SCENES_TRAIN, SCENES_VAL, make_scenes

    mean, std = _stats(cfg, 3)
    masks = task == "segmentation"
    splits = []
    for split, count in (("train", SCENES_TRAIN), ("val", SCENES_VAL)):
        if cfg.format == "scenes":
            coco, pixels = make_scenes(count, image_size, _SYNTHETIC_SEED, split, cfg.root)
            index = parse_coco(coco, f"synthetic scenes ({split})", masks)
            splits.append(CocoDataset(index, task, image_size, mean, std, train=split == "train",
                                      hflip=cfg.hflip, pixels=pixels))
        else:
            annotations, folder = find_split(_need_root(cfg, "a COCO-style folder"), split)
            index = read_coco(annotations, masks)
            splits.append(CocoDataset(index, task, image_size, mean, std, train=split == "train",
                                      hflip=cfg.hflip, image_dir=folder))
    train, val = splits
    for split in splits:  # a score of nothing would read as a score of 0
        if not split.index.images:
            raise DataError(f"{split.index.source} lists no images; both splits need some")
    if not masks and not any(not crowd for boxes in val.index.annotations
                             for _, _, crowd, _ in boxes):
        raise DataError(f"{val.index.source} has no boxes (other than crowd regions) to score "
                        f"detections against; the validation split needs some")
    if train.index.categories != val.index.categories:
        raise DataError(f"{train.index.source} and {val.index.source} list different "
                        f"categories; both splits need the same ones")
    names = train.index.class_names
    ids: list[int | None] = [c for c, _ in train.index.categories]
    if masks:
        names, ids = ["background", *names], [None, *ids]
    source = (f"synthetic scenes of Fashion-MNIST items ({image_size} px, seed "
              f"{_SYNTHETIC_SEED})" if cfg.format == "scenes"
              else f"COCO-style {task} data from {cfg.root}")
    return train, val, DataInfo(len(names), 3, names, mean, std, source, ids)


def build_datasets(cfg: DataConfig, image_size: int, task: str = "classification",
                   frames: int | None = None) -> tuple[Dataset, Dataset, DataInfo]:
    """The train dataset (with augmentation), the val dataset (evaluation transform), and facts.

    Items are ``(float32 [C, image_size, image_size] normalised with info.mean/std, int label)``.
    Raises :class:`DataError` for missing or damaged data, with a one-line fix.
    The video formats give clips of ``frames`` frames instead (see :mod:`.video`).
    """
    _check_size(image_size)
    fmt = cfg.format
    if fmt in ("video_folder", "synthetic_motion"):
        from .video import build_video_datasets

        return build_video_datasets(cfg, image_size, frames, *_stats(cfg, 3))
    if fmt in ("coco", "scenes"):
        return _dense_datasets(cfg, image_size, task)
    if fmt not in DEFAULT_STATS:
        raise ConfigError(f"data.format must be one of {', '.join(DEFAULT_STATS)}, got {fmt!r}")

    if fmt == "image_folder":
        root = _need_root(cfg, "a folder holding train/<class>/<images> and val/<class>/<images>")
        mean, std = _stats(cfg, 3)
        train_tf = ImageTrainTransform(image_size, mean, std, **augmentation(cfg))
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
