"""Accuracy of many configurations from one pass over the evaluation data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .data.base import collate_fn_of, to_device
from .errors import ConfigError
from .nn.extract import fold_batchnorm, to_static
from .nn.model import SlimmableModel
from .space import Config, to_config
from .space import channels_last as layout

__all__ = ["average_clips", "evaluate", "static_network"]


@torch.no_grad()
def evaluate(
    model: SlimmableModel,
    batches: Iterable[tuple[Tensor, Tensor]],
    configs: Sequence[Config],
    task,
    device: torch.device,
    channels_last: bool = False,
    all_reduce=None,
    groups: int | None = None,
) -> list[dict]:
    """Each batch is decoded once, resized once per resolution and run through every
    configuration.

    Each configuration runs as its extracted static sub-network with batch norm folded into
    the convolutions (the same function as the slimmable model at that configuration, without
    slicing or normalisation at run time); ``model`` itself is left untouched. Returns one row
    per configuration with its metrics in percent, accumulated by one ``task.meter()`` per
    configuration. ``all_reduce`` sums tensors over processes in a distributed run (each
    meter merges its state with it). A batch of several clips per video,
    ``[N, K, C, T, H, W]``, is scored per video (:func:`average_clips`).

    On CPU the configurations are split into ``groups`` (default: :func:`cpu_groups`) of
    about equal cost that run side by side in threads, the torch threads shared out between
    them: small networks use cores better one per configuration than all on one.
    """
    nets = [static_network(model, config, channels_last) for config in configs]
    meters = [task.meter() for _ in configs]
    if groups is None:
        groups = cpu_groups(len(configs)) if device.type == "cpu" else 1
    parts = split_by_cost(configs, groups)

    def run_part(part: list[int], images: Tensor, labels, clips: int) -> None:
        with torch.no_grad():  # grad mode is per thread
            resized: dict[tuple, Tensor] = {}
            for i in part:
                config = configs[i]
                view = (config.resolution, config.frames)
                if view not in resized:
                    resized[view] = to_config(images, config)
                output = nets[i](resized[view])
                meters[i].update(average_clips(output, clips) if clips else output, labels,
                                 config)

    with _threads(len(parts)) as pool:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = to_device(labels, device)
            clips = images.shape[1] if images.dim() == 6 else 0
            if clips:
                images = images.flatten(0, 1)
            if channels_last and images.dim() in (4, 5):
                images = images.contiguous(memory_format=layout(images.dim()))
            if pool is None:
                run_part(parts[0], images, labels, clips)
            else:
                for future in [pool.submit(run_part, p, images, labels, clips) for p in parts]:
                    future.result()
    rows = []
    for config, meter in zip(configs, meters):
        meter.reduce(all_reduce)
        entry: dict = {"width": config.width, "resolution": config.resolution}
        if config.frames is not None:
            entry["frames"] = config.frames
        entry.update(meter.result())
        rows.append(entry)
    return rows


#: most configuration groups run side by side on CPU (more threads mostly wait on Python)
MAX_CPU_GROUPS = 4


def cpu_groups(num_configs: int) -> int:
    """How many groups of configurations to run side by side on CPU: one per torch thread,
    at most ``MAX_CPU_GROUPS`` and ``num_configs``."""
    return max(1, min(torch.get_num_threads(), MAX_CPU_GROUPS, num_configs))


def split_by_cost(configs: Sequence[Config], groups: int) -> list[list[int]]:
    """Indices of ``configs`` in ``groups`` parts of about equal cost (width² × pixels ×
    frames, a proxy of MACs), each part in the original order; empty parts are dropped."""
    costs = [c.width ** 2 * (c.resolution or 1) ** 2 * (c.frames or 1) for c in configs]
    parts: list[list[int]] = [[] for _ in range(max(1, groups))]
    loads = [0.0] * len(parts)
    for i in sorted(range(len(configs)), key=lambda i: -costs[i]):
        k = loads.index(min(loads))
        parts[k].append(i)
        loads[k] += costs[i]
    return [sorted(p) for p in parts if p]


@contextlib.contextmanager
def _threads(parts: int):
    """A pool of one thread per part, the torch threads shared out between them (restored
    after); ``None`` for a single part."""
    if parts <= 1:
        yield None
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, previous // parts))
    try:
        with ThreadPoolExecutor(parts, thread_name_prefix="evaluate") as pool:
            yield pool
    finally:
        torch.set_num_threads(previous)


def average_clips(logits: Tensor, clips: int) -> Tensor:
    """One prediction per video from ``clips`` consecutive rows: the log of the mean of the
    clips' softmax (SlowFast's multi-view testing), still a valid logit tensor."""
    probs = logits.float().softmax(-1).unflatten(0, (-1, clips)).mean(1)
    return probs.log()


def static_network(model: SlimmableModel, config: Config,
                   channels_last: bool = False) -> torch.nn.Module:
    """The inference network of one configuration: extracted, BN folded, in eval mode."""
    with model.using(config):
        net = fold_batchnorm(to_static(model)).eval()
    if channels_last:
        net = net.to(memory_format=layout(5 if getattr(model, "temporal", False) else 4))
    return net


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
    from .tasks import build_task

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
                        collate_fn=collate_fn_of(val_set),
                        pin_memory=run.device.type == "cuda")
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"evaluate {len(configs)} configs", unit="batch",
                      leave=False, disable=None)
    task = build_task(cfg)
    rows = evaluate(run.model, loader, configs, task, run.device, cfg.train.channels_last)
    model = run.model
    for row, config in zip(rows, configs):
        macs, params = count_macs(model, config.resolution, width=config.width,
                                  frames=config.frames)
        row["mmacs"] = round(macs / 1e6, 3)
        row["params_m"] = round(params / 1e6, 4)
        for name in task.metric_names:
            row[name] = round(row[name], 3)
    if latency:
        iterator = list(zip(rows, configs))
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, desc="latency", unit="config", leave=False,
                            disable=None)
        for row, config in iterator:
            static = static_network(model, config, cfg.train.channels_last)
            frames = (config.frames,) if config.frames else ()
            shape = (model.in_chans, *frames, config.resolution, config.resolution)
            row["latency_ms"] = round(measure_latency(static, (1, *shape), run.device), 4)
            row[f"latency_ms_b{latency_batch}"] = round(
                measure_latency(static, (latency_batch, *shape), run.device, 2, 7), 4)
    write_results(run.path, rows, device=str(run.device))
    return rows
