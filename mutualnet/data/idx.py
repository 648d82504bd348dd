"""IDX files (MNIST, Fashion-MNIST and any dataset in that layout), and locating Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type byte, the number of dimensions),
one big-endian uint32 per dimension, then the values. Only unsigned-byte files are read:
labels ``0x00000801`` (``[N]``) and images ``0x00000803`` (``[N, H, W]``). Files may be gzipped
(recognised by their content, whatever the name).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, no_folder

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_SYSTEM_DIRS",
    "FASHION_MNIST_URL",
    "IDX_FILES",
    "data_cache_dir",
    "fashion_mnist_files",
    "find_idx_files",
    "load_idx_split",
    "read_idx",
    "read_idx_bytes",
]

#: split part -> file name (without ``.gz``)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
_FILE_LIST = ", ".join(f"{n}[.gz]" for n in IDX_FILES.values())

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
#: where system packages put Fashion-MNIST (Debian: ``apt-get install dataset-fashion-mnist``)
FASHION_MNIST_SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]
INSTALL_HINT = ("install it with 'apt-get install dataset-fashion-mnist' or point --data "
                "(data.root) at a folder holding " + _FILE_LIST)

_KINDS = {"labels": (0x0801, 1), "images": (0x0803, 3)}

# The one function that touches the network; tests replace it.
_open_url = urllib.request.urlopen


# --------------------------------------------------------------------------------------------
# reading


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise DataError(f"{name} is not a valid gzip file ({reason}); the file is corrupt or "
                        f"truncated: fetch it again") from None


def read_idx_bytes(data: bytes, name: str, kind: str) -> torch.Tensor:
    """Parse the bytes of an IDX file (gzipped or not) named ``name`` (for messages).

    ``kind`` is ``"images"`` (returns uint8 ``[N, H, W]``) or ``"labels"`` (uint8 ``[N]``).
    Every problem is a :class:`DataError` naming the file.
    """
    expected_magic, ndim = _KINDS[kind]
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, name)
    if len(data) < 4:
        raise DataError(f"{name} is truncated: an IDX file starts with a 4-byte magic number, "
                        f"found {len(data)} bytes; fetch it again")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        if data[0] == 0 and data[1] == 0 and data[3] == ndim and data[2] != 0x08:
            raise DataError(f"{name} holds IDX values of type 0x{data[2]:02X}; only unsigned "
                            f"bytes (type 0x08) are supported: convert the file")
        other = "images" if kind == "labels" else "labels"
        swapped = (" (it looks like an IDX " + other + " file: are the files swapped?)"
                   if magic == _KINDS[other][0] else "")
        raise DataError(f"{name} is not an IDX {kind} file: magic number 0x{magic:08X}, "
                        f"expected 0x{expected_magic:08X}{swapped}; point --data at the "
                        f"dataset's own files or fetch them again")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is truncated: its header needs {header} bytes, found "
                        f"{len(data)}; fetch it again")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = math.prod(dims)
    expected = header + count
    shape = "x".join(str(d) for d in dims[1:])
    what = f"{dims[0]} {kind}" + (f" of {shape}" if shape else "")
    if len(data) < expected:
        raise DataError(f"{name} is truncated: its header declares {what} ({expected} bytes) "
                        f"but it holds {len(data)} bytes; fetch it again")
    if len(data) > expected:
        raise DataError(f"{name} is longer than its header declares: {what} ({expected} bytes) "
                        f"but it holds {len(data)} bytes; fetch it again")
    if count == 0:
        raise DataError(f"{name} holds no {kind} (its header declares {what}); fetch it "
                        f"again")
    arr = np.frombuffer(data, dtype=np.uint8, count=count, offset=header).reshape(dims)
    return torch.from_numpy(arr.copy())


def read_idx(path: str | os.PathLike, kind: str) -> torch.Tensor:
    """Read an IDX file (gzipped or not); see :func:`read_idx_bytes`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; make it readable or point "
                        f"--data elsewhere") from None
    return read_idx_bytes(data, str(path), kind)


def load_idx_split(images_path: str | os.PathLike,
                   labels_path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 ``[N, H, W]`` and labels int64 ``[N]`` of one split, counts checked."""
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels; the files do not belong together: fetch "
                        f"the dataset again")
    return images, labels.to(torch.int64)


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_idx_files(root: str | os.PathLike, *, hint: str = "") -> dict[str, Path]:
    """The four IDX files in ``root`` (each plain or ``.gz``), keyed like :data:`IDX_FILES`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{no_folder(root)}; point --data (data.root) at a "
                        f"folder holding {_FILE_LIST}{hint}")
    found = {part: _find(root, name) for part, name in IDX_FILES.items()}
    missing = [IDX_FILES[part] for part, path in found.items() if path is None]
    if missing:
        raise DataError(f"{root} lacks {', '.join(m + '[.gz]' for m in missing)}; point --data "
                        f"(data.root) at a folder holding {_FILE_LIST}{hint}")
    return found  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# locating / downloading Fashion-MNIST


def data_cache_dir() -> Path:
    """``$MUTUALNET_DATA``, else ``$XDG_CACHE_HOME/mutualnet`` (``~/.cache/mutualnet``)."""
    env = os.environ.get("MUTUALNET_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mutualnet"


def _has_all(folder: Path) -> bool:
    return folder.is_dir() and all(_find(folder, n) is not None for n in IDX_FILES.values())


def _download(url: str, dest: Path, sha256: str) -> None:
    """Fetch ``url`` to ``dest`` atomically (temp file + rename) after checking its SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout=60) as response:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"download of {url} has SHA-256 {digest.hexdigest()}, expected "
                            f"{sha256} (corrupt or changed file, nothing kept); try again or "
                            + INSTALL_HINT)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fashion_mnist_files(download: bool = True) -> Path:
    """A folder holding the four Fashion-MNIST files.

    Looks in :data:`FASHION_MNIST_SYSTEM_DIRS` (the Debian package ``dataset-fashion-mnist``),
    then in the cache (``$MUTUALNET_DATA/fashion-mnist``, ``$MUTUALNET_DATA``, or
    ``~/.cache/mutualnet/fashion-mnist``); otherwise downloads the missing files into the
    cache, checking their SHA-256. Raises :class:`DataError` when none of that works.
    """
    cache = data_cache_dir()
    candidates = [Path(d) for d in FASHION_MNIST_SYSTEM_DIRS] + [cache / "fashion-mnist"]
    if os.environ.get("MUTUALNET_DATA"):
        candidates.append(cache)
    for folder in candidates:
        if _has_all(folder):
            return folder
    searched = ", ".join(str(c) for c in candidates)
    if not download:
        raise DataError(f"Fashion-MNIST not found (searched {searched}); {INSTALL_HINT}")
    target = cache / "fashion-mnist"
    for name in IDX_FILES.values():
        if _find(target, name) is not None:
            continue
        gz = name + ".gz"
        url = FASHION_MNIST_URL + gz
        try:
            _download(url, target / gz, FASHION_MNIST_SHA256[gz])
        except DataError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"Fashion-MNIST not found (searched {searched}) and downloading "
                            f"{url} failed ({reason}); {INSTALL_HINT}") from None
    return target
