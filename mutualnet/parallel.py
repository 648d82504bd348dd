"""Many configurations side by side on CPU: one task per configuration, in a pool of threads.

Small sub-networks use a core better one per configuration than all on one configuration
(their convolutions are too small to split well between threads), so calibration and
evaluation hand each configuration to a thread of their own, the torch threads shared out
between them. The costliest configurations go first, so the last tasks to finish are short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .space import Config

__all__ = ["ConfigPool", "MAX_CPU_THREADS", "cost_order"]

#: most configurations that run side by side on CPU (more threads mostly wait on Python)
MAX_CPU_THREADS = 4


def cost_order(configs: Sequence[Config]) -> list[int]:
    """Indices of ``configs``, costliest first (width² × pixels × frames, a proxy of MACs);
    ties keep their order."""
    costs = [c.width ** 2 * (c.resolution or 1) ** 2 * (c.frames or 1) for c in configs]
    return sorted(range(len(configs)), key=lambda i: -costs[i])


class ConfigPool:
    """Runs one task per configuration, side by side on CPU, one after another elsewhere.

    ``threads`` (default: one per torch thread, at most :data:`MAX_CPU_THREADS` and the number
    of configurations; always 1 off the CPU) threads share out the torch threads while the
    pool is open; the count is restored when it closes. :meth:`map` runs ``task(i)`` for every
    configuration index, costliest first, with gradients off, and returns when all are done
    (the first error is raised).
    """

    def __init__(self, configs: Sequence[Config], device: torch.device,
                 threads: int | None = None) -> None:
        if threads is None:
            threads = min(torch.get_num_threads(), MAX_CPU_THREADS) if device.type == "cpu" else 1
        self.threads = max(1, min(int(threads), len(configs)))
        self.order = cost_order(configs)
        self._pool: ThreadPoolExecutor | None = None
        self._previous = 0

    def __enter__(self) -> ConfigPool:
        if self.threads > 1:
            self._previous = torch.get_num_threads()
            share = max(1, self._previous // self.threads)
            torch.set_num_threads(share)
            # a new thread starts with the process's initial thread count (OpenMP's is per
            # thread), so each worker sets its share itself
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mutualnet",
                                            initializer=torch.set_num_threads,
                                            initargs=(share,))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self._previous)

    def map(self, task: Callable[[int], None]) -> None:
        def run(i: int) -> None:
            with torch.no_grad():  # grad mode is per thread
                task(i)

        if self._pool is None:
            for i in self.order:
                run(i)
            return
        futures = [self._pool.submit(run, i) for i in self.order]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()
