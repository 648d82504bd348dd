"""The dataset type of the in-memory formats: uint8 images held in one tensor."""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit handler is registered before ours)
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError

__all__ = ["TensorImageDataset", "collate_fn_of", "evaluation_loader", "reading_workers",
           "to_device", "Loader", "new_folder"]


def worker_init(_worker: int) -> None:
    """``worker_init_fn`` of :class:`Loader`: a worker ignores SIGTERM (for the start methods
    that do not inherit the blocked signal, see :class:`Loader`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Loader(DataLoader):
    """The ``DataLoader`` of every pass here, whose worker processes leave SIGTERM to the main
    process. Sent to the whole process group (``timeout``, service managers, a cluster's
    scheduler), it would kill the workers, and the main process would die of their deaths with
    a traceback instead of saving a checkpoint and stopping. Workers are started with SIGTERM
    blocked, which a forked worker keeps from its first instruction (and ignore it too, see
    :func:`worker_init`); they end with the main process (:func:`_end_workers`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, worker_init_fn=worker_init, **kwargs)

    def _get_iterator(self):
        if self.num_workers == 0 or not hasattr(signal, "pthread_sigmask"):
            return super()._get_iterator()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM meanwhile: now


def _end_workers() -> None:
    """At exit, kill the loader workers still running. multiprocessing's own exit handler,
    which runs after this one, ends them with SIGTERM, which they ignore, and waits for them
    (a loader left behind by an error is not always shut down before the exit)."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if children and hasattr(signal, "SIGCHLD"):
        # the loader's own SIGCHLD handler would raise at the first death, the others alive
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=10)


atexit.register(_end_workers)


def check_new_folder(out: str | Path) -> Path:
    """``out`` as a path, when it is a new or empty folder."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not an empty folder; choose a new output folder")
    return out


@contextlib.contextmanager
def new_folder(out: str | Path, what: str) -> Iterator[Path]:
    """The folder a dataset writer fills, written whole or not at all: ``out`` (which must be
    new or empty) appears only when the writer is done. The writer fills a hidden sibling of
    its own (``.NAME.partial-PID-XXXXXXXX``) that is renamed to ``out`` at the end; an error or an
    interruption leaves ``out`` as it was. Two writers to one folder do not mix: the second to
    finish finds ``out`` taken. (The sibling of a writer killed outright stays, hidden.)"""
    out = check_new_folder(out)
    place = Path(os.path.realpath(out))  # "." or a link to an empty folder: the folder itself
    stage = None
    try:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            name = f".{place.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            (place.parent / name).mkdir()  # the usual permissions, unlike tempfile's
            stage = place.parent / name
            yield stage
            if place.exists():
                place.rmdir()  # empty, checked above (not empty: another writer finished first)
            os.replace(stage, place)
        except OSError as exc:
            raise DataError(f"cannot write {what} to {out}: {exc.strerror or exc}; choose a "
                            f"writable folder that no other writer fills") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


def to_device(batch_part, device: torch.device):
    """Tensors moved to ``device`` inside any nesting of lists, tuples and dicts (the targets
    of dense tasks); other values as they are."""
    if isinstance(batch_part, torch.Tensor):
        return batch_part.to(device, non_blocking=True)
    if isinstance(batch_part, dict):
        return {k: to_device(v, device) for k, v in batch_part.items()}
    if isinstance(batch_part, (list, tuple)):
        return type(batch_part)(to_device(v, device) for v in batch_part)
    return batch_part


def collate_fn_of(dataset):
    """The collate function a dataset asks for (``collate_fn`` attribute), else the default."""
    while not hasattr(dataset, "collate_fn") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # SeededItems, Subset
    return getattr(dataset, "collate_fn", None)


def _innermost(dataset):
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset  # SeededItems, Subset
    return dataset


def reading_workers(dataset, num_workers: int) -> int:
    """Worker processes for one pass over ``dataset`` outside training (calibration,
    evaluation): none when its items are already decoded in memory (an ``in_memory`` dataset),
    where making an item costs less than receiving it from a worker and the workers would
    only take cores from the networks; ``num_workers`` (the recipe's) otherwise."""
    return 0 if getattr(_innermost(dataset), "in_memory", False) else num_workers


def evaluation_loader(dataset, batch_size: int, num_workers: int, device: torch.device):
    """The loader of an evaluation pass: in order, the dataset's collate function, workers
    as :func:`reading_workers` decides, pinned memory for CUDA."""
    return Loader(dataset, batch_size=batch_size, num_workers=reading_workers(dataset, num_workers),
                  collate_fn=collate_fn_of(dataset), pin_memory=device.type == "cuda")


class TensorImageDataset(Dataset):
    """``images``: uint8 ``[N, C, H, W]``; ``labels``: int64 ``[N]``; items are
    ``(transform(images[i]), int(labels[i]))``.

    Picklable (the tensors travel with it); under ``fork`` workers share the memory.
    """

    #: items are decoded already: a pass outside training reads them without workers
    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor], name: str = ""):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got "
                             f"{tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.targets: list[int] = self.labels.tolist()
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.targets[index]

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (f"TensorImageDataset({self.name or 'unnamed'}: {n} images {c}x{h}x{w}, "
                f"transform={self.transform!r})")
