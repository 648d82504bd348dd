"""CIFAR-10 / CIFAR-100 in their "python version" pickle layout, read without running code.

The files are pickles of dicts holding numpy arrays. ``pickle.load`` would run whatever code
a (tampered) file asks for, so :class:`SafeUnpickler` resolves only the few numpy callables
that rebuild an array and refuses every other global.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = ["CIFAR_LAYOUTS", "CifarLayout", "SafeUnpickler", "load_cifar", "read_cifar_batch_bytes",
           "safe_unpickle"]


def _numpy_attr(modules: tuple[str, ...], attr: str) -> Any:
    for module in modules:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {attr}; cannot read numpy pickles")  # pragma: no cover


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
#: (module, name) a CIFAR pickle may name -> where to find it in this numpy
_ALLOWED: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("numpy.core.multiarray", "_reconstruct"): (_MULTIARRAY, "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): (_MULTIARRAY, "_reconstruct"),
    # protocol-5 pickles (Python 3.8+ default) rebuild arrays from an in-band buffer
    ("numpy.core.numeric", "_frombuffer"): (_NUMERIC, "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): (_NUMERIC, "_frombuffer"),
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
}


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that builds numpy arrays, plain containers and scalars, and nothing else.

    It extends the pure-Python unpickler: a CIFAR file is a handful of large opcodes, so it is
    as fast here, and unlike the C one it cannot be made to allocate a huge memo table by a
    damaged ``LONG_BINPUT`` index.
    """

    def __init__(self, file: io.BytesIO, name: str = "<pickle>"):
        super().__init__(file, encoding="bytes")
        self.name = name
        self._size = len(file.getbuffer())

    def _load_bytearray8(self) -> None:
        # the stock version allocates the declared length before reading: refuse lengths
        # longer than the whole file, so a damaged length cannot allocate gigabytes
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._size:
            raise pickle.UnpicklingError(f"BYTEARRAY8 of {size} bytes in a {self._size}-byte file")
        buf = bytearray(size)
        self.readinto(buf)
        self.append(buf)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is not None:
            return _numpy_attr(*target)
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles from Python 3
            import _codecs

            return _codecs.encode
        # the names come from the file: shown escaped, so the message stays one line
        raise DataError(f"{self.name} refuses to load: the file asks to run code "
                        f"({ascii(f'{module}.{name}')}); a CIFAR file holds only numpy arrays "
                        f"and lists, so get a clean copy")

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.name} refuses to load: it refers to outside objects; a CIFAR "
                        f"file holds only numpy arrays and lists, so get a clean copy")


def safe_unpickle(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`; any failure is a :class:`DataError`."""
    try:
        return SafeUnpickler(io.BytesIO(data), name).load()
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{name} is not a valid pickle (nested too deeply)") from None
    except Exception as exc:  # a malformed pickle raises almost any type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{name} is not a valid pickle ({type(exc).__name__}: {reason[:200]}); "
                        f"the file is corrupt: get a clean copy") from None


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _str_keys(obj: Any, name: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{name} does not hold a dict (found {type(obj).__name__}); is it a "
                        f"CIFAR python-version file?")
    return {_text(k): v for k, v in obj.items()}


def read_cifar_batch_bytes(data: bytes, name: str, label_key: str,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file: (uint8 ``[N, 3, 32, 32]``, int64 ``[N]``), checked."""
    batch = _str_keys(safe_unpickle(data, name), name)
    if "data" not in batch or label_key not in batch:
        found = ", ".join(map(repr, batch))[:200] or "nothing"
        raise DataError(f"{name} lacks the 'data' and '{label_key}' entries of a CIFAR batch "
                        f"(found {found}); get a clean copy")
    images = batch["data"]
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2
            or images.shape[1] != 3072 or images.shape[0] == 0):
        what = (f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray)
                else type(images).__name__)
        raise DataError(f"{name}: 'data' must be a uint8 array of shape (N, 3072) with N > 0, "
                        f"found {what}; get a clean copy")
    raw = batch[label_key]
    try:
        labels = np.asarray(raw)
        ok = labels.ndim == 1 and (labels.size == 0 or np.issubdtype(labels.dtype, np.integer))
    except Exception:
        ok = False
    if not ok:
        raise DataError(f"{name}: '{label_key}' must be a list of integers; get a clean copy")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{name} holds {images.shape[0]} images but {labels.shape[0]} labels; "
                        f"get a clean copy")
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{name}: label {int(labels[bad][0])} is outside 0..{num_classes - 1}; "
                        f"is this the right CIFAR variant?")
    return images.reshape(-1, 3, 32, 32), labels


@dataclass(frozen=True)
class CifarLayout:
    title: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                           "batches.meta", "labels", "label_names", 10),
    "cifar100": CifarLayout("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz",
                            ("train",), "test", "meta", "fine_labels", "fine_label_names", 100),
}
_CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck"]


class _Source:
    """Reads member files from a folder or from a tar archive (in memory, nothing extracted)."""

    def __init__(self, root: Path, layout: CifarLayout):
        self.layout = layout
        self.members: dict[str, bytes] | None = None
        self.folder: Path | None = None
        wanted = set(layout.train) | {layout.test, layout.meta}
        archive = root if root.is_file() else root / layout.archive
        if root.is_dir():
            for folder in (root, root / layout.folder):
                if all((folder / f).is_file() for f in (*layout.train, layout.test)):
                    self.folder = folder
                    self.where = str(folder)
                    return
        if archive.is_file():
            self.members = self._read_archive(archive, wanted)
            self.where = str(archive)
            missing = [f for f in (*layout.train, layout.test) if f not in self.members]
            if missing:
                raise DataError(f"{archive} lacks {layout.folder}/{', '.join(missing)}; is it "
                                f"the {layout.title} python-version archive ({layout.archive})?")
            return
        need = ", ".join((*layout.train, layout.test))
        raise DataError(f"{layout.title} not found at {root}: point --data (data.root) at the "
                        f"'{layout.folder}' folder (holding {need}), its parent, or "
                        f"{layout.archive}")

    @staticmethod
    def _read_archive(path: Path, wanted: set[str]) -> dict[str, bytes]:
        members: dict[str, bytes] = {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in wanted and base not in members:
                        extracted = tar.extractfile(member)
                        if extracted is not None:
                            members[base] = extracted.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"cannot read archive {path}: {exc}; fetch it again") from None
        return members

    def exists(self, name: str) -> bool:
        if self.members is not None:
            return name in self.members
        assert self.folder is not None
        return (self.folder / name).is_file()

    def read(self, name: str) -> tuple[bytes, str]:
        if self.members is not None:
            return self.members[name], f"{self.where}:{self.layout.folder}/{name}"
        assert self.folder is not None
        path = self.folder / name
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}; make it readable or "
                            f"point --data elsewhere") from None


def load_cifar(root: str | os.PathLike, variant: str) -> dict[str, Any]:
    """Load ``cifar10`` or ``cifar100`` from a folder, its parent, or the ``.tar.gz`` archive.

    Returns ``train_images``/``val_images`` (uint8 ``[N, 3, 32, 32]`` tensors),
    ``train_labels``/``val_labels`` (int64), ``class_names`` and ``source``.
    """
    layout = CIFAR_LAYOUTS[variant]
    src = _Source(Path(root).expanduser(), layout)

    def split(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch_bytes(*src.read(n), layout.label_key, layout.num_classes)
                 for n in names]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0].copy()
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    train_images, train_labels = split(layout.train)
    val_images, val_labels = split((layout.test,))
    names = _class_names(src, layout)
    return {"train_images": train_images, "train_labels": train_labels,
            "val_images": val_images, "val_labels": val_labels,
            "class_names": names, "source": f"{layout.title} from {src.where}"}


def _class_names(src: _Source, layout: CifarLayout) -> list[str]:
    default = (_CIFAR10_NAMES if layout.num_classes == 10
               else [str(i) for i in range(layout.num_classes)])
    if not src.exists(layout.meta):
        return list(default)
    data, name = src.read(layout.meta)
    meta = _str_keys(safe_unpickle(data, name), name)
    names = meta.get(layout.names_key)
    if (not isinstance(names, (list, tuple)) or len(names) != layout.num_classes
            or not all(isinstance(n, (bytes, str)) for n in names)):
        raise DataError(f"{name}: '{layout.names_key}' must list {layout.num_classes} class "
                        f"names; is this the right CIFAR variant?")
    return [_text(n) for n in names]
