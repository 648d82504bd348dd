"""Helpers shared by the benchmarks: interleaved timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mutualnet.cli import Parser, guarded, positive  # noqa: E402
from mutualnet.train.allocator import retain_freed_memory  # noqa: E402

__all__ = ["Parser", "emit", "interleaved", "machine", "positive", "program", "sync"]

# the allocator setting of the `mutualnet` commands, for both sides of every comparison
# (MUTUALNET_MALLOC=system measures with the C library's defaults instead)
ALLOCATOR = "freed memory retained" if retain_freed_memory() else "system default"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "allocator": ALLOCATOR,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds of each function, run in alternating rounds so that machine noise hits
    every contender alike. The order rotates from round to round, so that no contender always
    runs right after the same other one (whose threads or caches it would inherit)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for k in range(rounds):
        for name in names[k % len(names):] + names[: k % len(names)]:
            fn = fns[name]
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def emit(result: dict) -> None:
    """Print the machine-readable result as the final line."""
    result = {"machine": machine(), **result}
    print(json.dumps(result))


def program(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main`` as a program: a bad option or input is one line on stderr
    and exit code 2, as in the ``mutualnet`` commands."""
    sys.exit(guarded(main))
