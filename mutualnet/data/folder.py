"""Image folders in the ImageNet layout: ``root/train/<class>/*`` and ``root/val/<class>/*``."""

from __future__ import annotations

import functools
import logging
import os
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, listed, no_folder, printable

__all__ = ["ImageFolderDataset", "check_image", "list_classes", "load_image"]

log = logging.getLogger("mutualnet")
_FIX = "remove it or set data.skip_bad_files: true"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_8_bits(img: Any) -> Any:
    """A 16-bit or float grey image as mode ``L`` scaled from its range (``convert`` would clip
    it to white); other modes as they are."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    from PIL import Image

    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    top = float(values.max()) if values.size else 0.0
    if img.mode == "F" and top <= 1:
        full = 1.0  # the usual range of float images
    elif img.mode.startswith("I;16") or top <= 65535:
        full = 65535.0  # 16-bit content, also when stored in 32 bits
    else:
        full = top
    return Image.fromarray(np.rint(np.clip(values * (255 / full), 0, 255)).astype(np.uint8))


def _decode(path: str | os.PathLike) -> Any:
    """``path`` fully decoded as an 8-bit RGB image, upright (its EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        ImageOps.exif_transpose(img, in_place=True)
        return to_8_bits(img).convert("RGB")


def load_image(path: str | os.PathLike) -> Any:
    """Decode ``path`` with Pillow as an RGB image; a :class:`DataError` naming it otherwise."""
    try:
        return _decode(path)
    except Exception as exc:  # Pillow raises many types for damaged files
        raise DataError(f"cannot read image {path} ({_reason(exc)}); {_FIX}") from None


def check_image(path: str) -> str | None:
    """Decode ``path`` as :func:`load_image` does (damage past the header shows only there):
    None when fine, else the reason."""
    try:
        _decode(path)
    except Exception as exc:
        return _reason(exc)
    return None


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """The file name endings (lower case) of the formats Pillow can read."""
    from PIL import Image

    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.OPEN))


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_folders(split_dir: Path, kind: str) -> dict[str, str]:
    """The (non-hidden) sub-folders of ``split_dir`` (a folder of ``kind``): class name →
    folder name, sorted by class name. A class is named by the Unicode NFC form of its folder
    name, so one copied through a system that stores names decomposed (macOS) is the same
    class, in the same place of the order."""
    if not split_dir.is_dir():
        root = split_dir.parent
        where = no_folder(root) if root.is_file() else no_folder(split_dir, f"{kind[:-1]} folder")
        raise DataError(f"{where}; point --data "
                        f"(data.root) at a folder holding train/<class>/<{kind}> and "
                        f"val/<class>/<{kind}>")
    folders: dict[str, str] = {}
    for name in sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name)):
        other = folders.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            raise DataError(f"{split_dir} holds the class folders {other!r} and {name!r}, one "
                            f"name in two Unicode forms; merge them")
    if not folders:
        raise DataError(f"{split_dir} has no class sub-folders; expected "
                        f"{split_dir}/<class>/<{kind}>")
    return dict(sorted(folders.items()))


def list_classes(split_dir: Path, kind: str = "images") -> list[str]:
    """Sorted names of the classes of ``split_dir`` (a folder of ``kind`` with one
    sub-folder per class; names in Unicode NFC form)."""
    return list(_class_folders(split_dir, kind))


def _list_files(class_dir: Path, looping: list[str]) -> list[str]:
    """The visible files under ``class_dir``, symbolic links followed, except links back to
    a folder already listed or to one holding it (a loop, or other classes), which go to
    ``looping``."""
    files = []
    top = os.path.realpath(class_dir)
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if _visible(d)):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen or top.startswith(real + os.sep):
                looping.append(os.path.join(dirpath, d))
            else:
                seen.add(real)
                kept.append(d)
        dirnames[:] = kept
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f))
    return files


def folder_samples(
    root: Path, classes: list[str] | None, kind: str, check: Callable[[str], str | None],
    skip_bad_files: bool, extensions: tuple[str, ...],
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """The (path, label) samples of a split folder with one sub-folder per class, the class
    names (``classes``: the train split's, which this split must match; its class folders may
    then be empty) and the files skipped as unreadable (``check`` gives the reason, with
    ``skip_bad_files``). ``kind`` names the files in messages; only files whose names end in
    one of ``extensions`` (any case) count, the others are ignored with a warning."""
    folders = _class_folders(root, kind)
    found = list(folders)
    matched = classes is not None
    if classes is None:
        classes = found
    elif found != [unicodedata.normalize("NFC", c) for c in classes]:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        parts = ([f"lacks {listed(missing, 5)}"] if missing else []) + \
                ([f"has extra {listed(extra, 5)}"] if extra else [])
        fixes = (["add the missing folders (empty ones are fine)"] if missing else []) + \
                (["remove or rename the extra ones"] if extra else [])
        raise DataError(f"{root} must hold the same class folders as train: it "
                        f"{' and '.join(parts)}; {' and '.join(fixes)}")
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    looping: list[str] = []
    stray = sorted(e.name for e in os.scandir(root) if not e.is_dir() and _visible(e.name))
    if stray:  # a file beside the class folders has no class
        log.warning("ignored %d file(s) in %s outside any class folder: %s", len(stray), root,
                    listed(stray, 3))
    usual = [e for e in (".jpg", ".jpeg", ".png") if e in extensions]
    endings = ", ".join(extensions) if len(extensions) <= 8 else \
        f"{', '.join(usual)} and {len(extensions) - len(usual)} other endings Pillow reads"
    for label, name in enumerate(found):
        files = []
        for f in _list_files(root / folders[name], looping):
            (files if f.lower().endswith(extensions) else ignored).append(f)
        if not files and not matched:
            raise DataError(f"class folder {root / folders[name]} holds no {kind} ({endings}); add "
                            f"some, or remove the class from every split")
        if not files:
            log.info("%s holds no %s: this split has none of class %s", root / folders[name], kind,
                     printable(name))
        samples.extend((f, label) for f in files)
    if looping:
        log.warning("did not follow %d folder link(s) in %s that lead back to a folder listed "
                    "already or holding it: %s", len(looping), root,
                    listed([os.path.relpath(f, root) for f in looping], 3))
    if ignored:
        log.warning("ignored %d file(s) in %s that are not %s by their names (%s): %s",
                    len(ignored), root, kind, endings,
                    listed([os.path.relpath(f, root) for f in ignored], 3))
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
            emptied = sorted(set(range(len(found))) - {label for _, label in samples})
            if emptied and not matched and samples:  # as an empty class folder is refused
                name = found[emptied[0]]
                raise DataError(f"class folder {root / folders[name]} holds no readable {kind} "
                                f"(all were skipped as unreadable, data.skip_bad_files); add "
                                f"some, or remove the class from every split")
    if not samples:
        raise DataError(f"{root} holds no readable {kind}; add some or point --data elsewhere")
    return list(classes) if matched else found, samples, skipped


class ImageFolderDataset(Dataset):
    """The images of one split (``split_dir/<class>/...``), decoded with Pillow on access.

    ``classes`` fixes the label order (default: the sorted sub-folder names); given, a class
    folder may be empty (this split has no images of it). Every visible file whose name ends in
    a format Pillow reads counts as an image (others are ignored, with a warning); with
    ``skip_bad_files`` each is decoded once here and the unreadable ones are dropped (listed
    in ``.skipped``, with a warning), otherwise an unreadable file raises :class:`DataError` when
    its item is loaded.
    """

    def __init__(self, split_dir: str | os.PathLike, transform: Callable[[Any], torch.Tensor], *,
                 classes: list[str] | None = None, skip_bad_files: bool = False):
        self.root = Path(split_dir).expanduser()
        self.classes, samples, self.skipped = folder_samples(
            self.root, classes, "images", check_image, skip_bad_files, image_extensions())
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
