"""Accuracy of many configurations from one pass over the evaluation data."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .data.base import evaluation_loader, to_device
from .nn.extract import inference_network
from .nn.model import SlimmableModel
from .parallel import ConfigPool
from .space import Config, channels_last_format, to_config
from .space import channels_last as layout
from .train.checkpoint import writes_run

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
    threads: int | None = None,
    networks: Mapping[str, torch.nn.Module] | None = None,
    antialias: bool = False,
) -> list[dict]:
    """Each batch is decoded once, resized once per resolution (as the run was trained:
    :func:`~mutualnet.space.to_config`, ``antialias``) and run through every configuration.

    Each configuration runs as its inference network (:func:`static_network`: extracted, batch
    norm folded into the convolutions, activations in place), the same function as the
    slimmable model at that configuration without slicing or normalisation at run time;
    ``model`` itself is left untouched. Returns one row per configuration with its metrics in
    percent, accumulated by one ``task.meter()`` per configuration. ``all_reduce`` sums
    tensors over processes in a distributed run (each meter merges its state with it). A
    batch of several clips per video, ``[N, K, C, T, H, W]``, is scored per video
    (:func:`average_clips`).

    On CPU the configurations of a batch run side by side in ``threads`` threads (a
    :class:`~mutualnet.parallel.ConfigPool`). ``networks`` holds inference networks built
    already, by configuration key (:func:`~mutualnet.calibrate.calibrate` hands them over);
    the others are built here.
    """
    # the others are built by the pool's threads on the first batch, while others compute
    nets: list[torch.nn.Module | None] = [(networks or {}).get(c.key) for c in configs]
    meters = [task.meter() for _ in configs]
    views = [(config.resolution, config.frames) for config in configs]

    with ConfigPool(configs, device, threads) as pool:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = to_device(labels, device)
            clips = images.shape[1] if images.dim() == 6 else 0
            if clips:
                images = images.flatten(0, 1)
            if channels_last and images.dim() in (4, 5):
                images = images.contiguous(memory_format=layout(images.dim()))
            resized: dict[tuple, Tensor] = {}
            for view, config in zip(views, configs):
                if view not in resized:
                    resized[view] = to_config(images, config, antialias)

            def run(i: int, resized=resized, labels=labels, clips=clips) -> None:
                if nets[i] is None:
                    nets[i] = static_network(model, configs[i], channels_last)
                output = nets[i](resized[views[i]])
                meters[i].update(average_clips(output, clips) if clips else output, labels,
                                 configs[i])

            pool.map(run)
    rows = []
    for config, meter in zip(configs, meters):
        meter.reduce(all_reduce)
        entry: dict = {"width": config.width, "resolution": config.resolution}
        if config.frames is not None:
            entry["frames"] = config.frames
        entry.update(meter.result())
        rows.append(entry)
    return rows


def average_clips(logits: Tensor, clips: int) -> Tensor:
    """One prediction per video from ``clips`` consecutive rows: the log of the mean of the
    clips' softmax (SlowFast's multi-view testing), still a valid logit tensor."""
    probs = logits.float().softmax(-1).unflatten(0, (-1, clips)).mean(1)
    return probs.log()


def static_network(model: SlimmableModel, config: Config,
                   channels_last: bool = False) -> torch.nn.Module:
    """The inference network of one configuration (:func:`~mutualnet.nn.extract.inference_network`
    of its extracted twin), channels-last when ``channels_last``."""
    static = model.subnet(config.width, config.resolution, config.frames)
    return inference_network(static, channels_last_format(model) if channels_last else None)


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


@writes_run("evaluate")  # no other command writes into the run meanwhile
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
    from .calibrate import calibrate_run
    from .macs import count_macs
    from .select import update_results
    from .tasks import build_task

    configs = list(dict.fromkeys(run.check_config(c) for c in configs))
    run.check_trusted()
    calibrated = run.calibrated_keys()  # one pass over the BN layers, not one per config
    missing = [c for c in configs if c.key not in calibrated]
    networks: dict[str, torch.nn.Module] = {}
    if missing:
        calibrate_run(run, missing, batches=calibration_batches, progress=progress,
                      networks=networks)
    cfg = run.config
    _, val_set = run.datasets()
    loader = evaluation_loader(val_set, batch_size, cfg.data.num_workers, run.device)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"evaluate {len(configs)} configs", unit="batch",
                      leave=False, disable=None)
    task = build_task(cfg)
    rows = evaluate(run.model, loader, configs, task, run.device, cfg.train.channels_last,
                    networks=networks, antialias=run.space.antialias)
    model = run.model
    for row, config in zip(rows, configs):
        row["data"] = run.data_source  # rows compare only when measured on the same data
        macs, params = count_macs(model, config.resolution, width=config.width,
                                  frames=config.frames)
        row["mmacs"] = round(macs / 1e6, 6)  # exact: a budget compares with every MAC
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
            row["latency_device"] = str(run.device)
    untrained = sorted({c.resolution for c in configs} - set(run.config.space.resolutions))
    if untrained:
        logging.getLogger("mutualnet").warning(
            "evaluated resolutions the run was not trained at (%s; trained: %s): their rows "
            "enter the table as measured", ", ".join(map(str, untrained)),
            ", ".join(map(str, run.config.space.resolutions)))
    update_results(run.path, rows, device=str(run.device))
    return rows
