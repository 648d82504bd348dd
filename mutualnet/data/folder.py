"""Image folders in the ImageNet layout: ``root/train/<class>/*`` and ``root/val/<class>/*``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["ImageFolderDataset", "check_image", "list_classes", "load_image"]

log = logging.getLogger("mutualnet")
_FIX = "remove it or set data.skip_bad_files: true"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_image(path: str | os.PathLike) -> Any:
    """Decode ``path`` with Pillow as an RGB image; a :class:`DataError` naming it otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # Pillow raises many types for damaged files
        raise DataError(f"cannot read image {path} ({_reason(exc)}); {_FIX}") from None


def check_image(path: str) -> str | None:
    """Cheap check (open + verify, no full decode): None when fine, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:
        return _reason(exc)
    return None


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_classes(split_dir: Path, kind: str = "images") -> list[str]:
    """Sorted names of the (non-hidden) sub-folders of ``split_dir`` (a folder of ``kind``)."""
    if not split_dir.is_dir():
        raise DataError(f"{kind[:-1]} folder {split_dir} does not "
                        f"exist; point --data (data.root) at a folder holding "
                        f"train/<class>/<{kind}> and val/<class>/<{kind}>")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))
    if not classes:
        raise DataError(f"{split_dir} has no class sub-folders; expected "
                        f"{split_dir}/<class>/<{kind}>")
    return classes


def _list_files(class_dir: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f))
    return files


def folder_samples(
    root: Path, classes: list[str] | None, kind: str, check: Callable[[str], str | None],
    skip_bad_files: bool, extensions: tuple[str, ...] | None = None,
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """The (path, label) samples of a split folder with one sub-folder per class, the class
    names (``classes``: the train split's, which this split must match) and the files skipped
    as unreadable (``check`` gives the reason, with ``skip_bad_files``). ``kind`` names the
    files in messages; ``extensions`` keeps only files with those endings."""
    found = list_classes(root, kind=kind)
    if classes is None:
        classes = found
    elif found != list(classes):
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        parts = ([f"lacks {', '.join(missing[:5])}"] if missing else []) + \
                ([f"has extra {', '.join(extra[:5])}"] if extra else [])
        raise DataError(f"{root} must hold the same class folders as train: it "
                        f"{' and '.join(parts)}")
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = _list_files(root / name)
        if extensions is not None:
            files = [f for f in files if f.lower().endswith(extensions)]
        if not files:
            which = f" ({', '.join(extensions)})" if extensions else ""
            raise DataError(f"class folder {root / name} holds no {kind}{which}; add some "
                            f"or remove the folder")
        samples.extend((f, label) for f in files)
    skipped: list[str] = []
    if skip_bad_files:
        workers = min(16, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            reasons = list(pool.map(check, (p for p, _ in samples), chunksize=64))
        skipped = [p for (p, _), r in zip(samples, reasons) if r is not None]
        if skipped:
            samples = [s for s, r in zip(samples, reasons) if r is None]
            first = ", ".join(skipped[:3])
            more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            log.warning("skipped %d unreadable file(s) in %s: %s%s", len(skipped), root,
                        first, more)
    if not samples:
        raise DataError(f"{root} holds no readable {kind}; add some or point --data elsewhere")
    return list(classes), samples, skipped


class ImageFolderDataset(Dataset):
    """The images of one split (``split_dir/<class>/...``), decoded with Pillow on access.

    ``classes`` fixes the label order (default: the sorted sub-folder names). Every visible file
    counts as an image; with ``skip_bad_files`` each is checked cheaply here and the unreadable
    ones are dropped (listed in ``.skipped``, with a warning), otherwise an unreadable file raises
    :class:`DataError` when its item is loaded.
    """

    def __init__(self, split_dir: str | os.PathLike, transform: Callable[[Any], torch.Tensor], *,
                 classes: list[str] | None = None, skip_bad_files: bool = False):
        self.root = Path(split_dir).expanduser()
        self.classes, samples, self.skipped = folder_samples(
            self.root, classes, "images", check_image, skip_bad_files)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path)), label

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({self.root}: {len(self.samples)} images, "
                f"{len(self.classes)} classes, transform={self.transform!r})")
