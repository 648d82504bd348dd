"""The dataset type of the in-memory formats: uint8 images held in one tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset", "collate_fn_of", "evaluation_loader", "reading_workers",
           "to_device"]


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
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size,
                      num_workers=reading_workers(dataset, num_workers),
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
