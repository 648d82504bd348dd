"""A data order that depends only on (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

__all__ = ["EpochOrder", "SeededItems"]

_MASK = (1 << 63) - 1


def item_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) & _MASK


class EpochOrder(Sampler):
    """Shuffled indices of one epoch for one process, from batch ``start_batch`` on.

    Global batch ``j`` holds ``perm[j*B:(j+1)*B]`` of a permutation seeded by (seed, epoch);
    process ``r`` of ``world`` takes its slice ``r*B/world:(r+1)*B/world`` of it, so the
    global batch is the same for any number of processes. Each index comes with the seed of
    its augmentation, making augmentation independent of worker scheduling.
    """

    def __init__(
        self, size: int, global_batch: int, seed: int, epoch: int, start_batch: int = 0,
        rank: int = 0, world_size: int = 1, shuffle: bool = True,
    ) -> None:
        self.size, self.global_batch, self.seed, self.epoch = size, global_batch, seed, epoch
        self.start_batch, self.rank, self.world_size, self.shuffle = (
            start_batch, rank, world_size, shuffle)
        self.local_batch = global_batch // world_size
        self.num_batches = size // global_batch

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch) * self.local_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, 0) ^ 0x5EED)
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        lo = self.rank * self.local_batch
        for j in range(self.start_batch, self.num_batches):
            base = j * self.global_batch + lo
            for index in perm[base: base + self.local_batch]:
                yield index, item_seed(self.seed, self.epoch, index)


class SeededItems(Dataset):
    """Fetches ``dataset[index]`` with the torch RNG seeded for that item, leaving it as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        generator = torch.default_generator
        if get_worker_info() is not None:  # a loader worker: its RNG state is its own
            generator.manual_seed(seed)
            return self.dataset[index]
        state = generator.get_state()
        try:
            generator.manual_seed(seed)
            return self.dataset[index]
        finally:
            generator.set_state(state)
