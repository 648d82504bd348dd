"""Accuracy of many configurations from one pass over the evaluation data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .errors import ConfigError
from .nn.model import SlimmableModel
from .space import Config, to_config

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: SlimmableModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    configs: Sequence[Config],
    task,
    device: torch.device,
    channels_last: bool = False,
    all_reduce=None,
) -> list[dict]:
    """Each batch is decoded once and run through every configuration.

    Returns one row per configuration with its metrics in percent. ``all_reduce`` sums the
    counts over processes in a distributed run.
    """
    training = {m: m.training for m in model.modules()}
    previous = model.config
    model.eval()
    names = task.metric_names
    counts = torch.zeros(len(configs), len(names) + 1, dtype=torch.float64)
    try:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            for i, config in enumerate(configs):
                model.set_config(config)
                hits = task.correct(model(to_config(images, config)), labels)
                counts[i, :-1] += torch.tensor([hits[n] for n in names], dtype=torch.float64)
                counts[i, -1] += labels.shape[0]
    finally:
        for m, mode in training.items():
            m.training = mode
        model.set_config(previous)
    if all_reduce is not None:
        counts = all_reduce(counts)
    rows = []
    for config, row in zip(configs, counts.tolist()):
        total = max(row[-1], 1.0)
        entry: dict = {"width": config.width, "resolution": config.resolution}
        if config.frames is not None:
            entry["frames"] = config.frames
        entry.update({n: 100.0 * v / total for n, v in zip(names, row[:-1])})
        rows.append(entry)
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(
    module: torch.nn.Module, shape: tuple[int, ...], device: torch.device,
    warmup: int = 5, repeats: int = 20,
) -> float:
    """Median wall time of one forward pass in milliseconds (synchronised on GPU)."""
    import time

    x = torch.randn(shape, device=device)
    for _ in range(warmup):
        module(x)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def evaluate_run(
    run,
    configs: Sequence[Config],
    latency: bool = False,
    batch_size: int = 256,
    latency_batch: int = 32,
    calibration_batches: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Evaluate every configuration of a run; write grid.json, grid.csv, the query table and
    the plot. Configurations without calibrated statistics are calibrated first (once)."""
    from torch.utils.data import DataLoader

    from .calibrate import calibrate_run
    from .macs import count_macs
    from .select import write_results
    from .tasks import ClassificationTask

    configs = [run.check_config(c) for c in configs]
    if run.meta.get("needs_calibration"):
        raise ConfigError(f"{run.path} holds weights whose BN statistics are not trusted; "
                          f"run `mutualnet calibrate {run.path}` first")
    calibrated = run.calibrated_keys()  # one pass over the BN layers, not one per config
    missing = [c for c in configs if c.key not in calibrated]
    if missing:
        calibrate_run(run, missing, batches=calibration_batches, progress=progress)
    cfg = run.config
    _, val_set = run.datasets()
    loader = DataLoader(val_set, batch_size=batch_size, num_workers=cfg.data.num_workers,
                        pin_memory=run.device.type == "cuda")
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"evaluate {len(configs)} configs", unit="batch",
                      leave=False, disable=None)
    task = ClassificationTask()
    rows = evaluate(run.model, loader, configs, task, run.device)
    model = run.model
    for row, config in zip(rows, configs):
        macs, params = count_macs(model, config.resolution, width=config.width,
                                  frames=config.frames)
        row["mmacs"] = round(macs / 1e6, 3)
        row["params_m"] = round(params / 1e6, 4)
        row["top1"], row["top5"] = round(row["top1"], 3), round(row["top5"], 3)
    if latency:
        iterator = list(zip(rows, configs))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="latency", unit="config", leave=False,
                            disable=None)
        for row, config in iterator:
            static = model.subnet(config.width, config.resolution).eval()
            frames = (config.frames,) if config.frames else ()
            shape = (model.in_chans, *frames, config.resolution, config.resolution)
            row["latency_ms"] = round(measure_latency(static, (1, *shape), run.device), 4)
            row[f"latency_ms_b{latency_batch}"] = round(
                measure_latency(static, (latency_batch, *shape), run.device, 2, 7), 4)
    write_results(run.path, rows, device=str(run.device))
    return rows
