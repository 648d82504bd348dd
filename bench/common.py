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

__all__ = ["Parser", "device_of", "emit", "image_models", "interleaved", "machine", "positive",
           "program", "ratio_quartiles", "sync"]

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


def device_of(parser: Parser, name: str) -> torch.device:
    """``--device`` as the commands take it (cpu, cuda or cuda:N); any other is one line."""
    from mutualnet.errors import ConfigError
    from mutualnet.train.distributed import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        parser.error(f"--device: {exc}")


def image_models(parser: Parser, names: str) -> list[str]:
    """Comma-separated model names, each a registered model of images (the benchmarks feed
    images; clips need other shapes)."""
    from mutualnet import create_model

    models = [n for n in names.split(",") if n]
    if not models:
        parser.error("give at least one model")
    for name in models:
        with torch.device("meta"):
            clips = getattr(create_model(name), "temporal", False)
        if clips:
            parser.error(f"{name} is a video model; this benchmark measures image models")
    return models


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int,
                device: torch.device, samples: dict[str, list[float]] | None = None,
                ) -> dict[str, float]:
    """Median seconds of each function, run in alternating rounds so that machine noise hits
    every contender alike. The order rotates from round to round, so that no contender always
    runs right after the same other one (whose threads or caches it would inherit). With
    ``samples``, each function's seconds in every round are put there under its name."""
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
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def ratio_quartiles(samples: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Quartiles (25%, median, 75%) of the round-by-round ratio ``num / den`` of
    :func:`interleaved`'s ``samples``. The two run close together in each round, so slow
    changes of the machine's load mostly cancel; the spread tells how far one run's ratio can
    be trusted."""
    ratios = [a / b for a, b in zip(samples[num], samples[den])]
    if len(ratios) < 2:
        return [round(ratios[0], 3)] * 3
    return [round(q, 3) for q in statistics.quantiles(ratios, n=4, method="inclusive")]


def emit(result: dict) -> None:
    """Print the machine-readable result as the final line."""
    result = {"machine": machine(), **result}
    print(json.dumps(result))


def program(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main`` as a program: a bad option or input is one line on stderr
    and exit code 2, as in the ``mutualnet`` commands."""
    sys.exit(guarded(main))
