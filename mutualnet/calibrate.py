"""Post-training batch-norm calibration: statistics recomputed for each configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .nn.extract import inference_network, inplace_activations
from .nn.layers import _SlimBatchNormNd
from .nn.model import SlimmableModel
from .parallel import ConfigPool
from .space import Config, channels_last_format, to_config
from .space import channels_last as layout
from .train.checkpoint import deferred_signals, writes_run

__all__ = ["calibrate"]


@torch.no_grad()
def calibrate(
    model: SlimmableModel,
    batches: Iterable[Tensor],
    configs: Iterable[Config],
    progress: bool = False,
    channels_last: bool = False,
    threads: int | None = None,
    networks: dict[str, nn.Module] | None = None,
    antialias: bool = False,
) -> list[Config]:
    """Recompute BN statistics of each configuration from the same decoded ``batches``.

    The batches are at the largest resolution; each configuration sees them resized on the
    device (:func:`~mutualnet.space.to_config`, ``antialias`` as the run was trained). The
    statistics are the cumulative average over the batches, with BN normalising
    by batch statistics as in training, and become the configuration's own (``calibrated``
    of each slimmable BN layer); nothing else about the model changes.

    Each configuration is calibrated on its static twin (extracted weights, channels-last
    when ``channels_last``, activations in place), so the passes do no slicing, and on CPU the
    configurations run side by side in ``threads`` threads (a
    :class:`~mutualnet.parallel.ConfigPool`). With ``networks``, each calibrated twin is
    also made the configuration's inference network (what
    :func:`~mutualnet.evaluate.static_network` would build) and kept there under its key.
    """
    configs = list(configs)
    named: dict[str, Config] = {}
    for config in configs:
        if config.resolution is None:
            raise ConfigError("calibration needs configurations with a resolution")
        with model.using(config):  # a width, resolution or frame count the model cannot take
            pass
        other = named.setdefault(config.key, config)
        if other != config:
            raise ConfigError(f"{other} and {config} are both named {config.key} (widths to 4 "
                              f"decimals); calibrate one of them")
    batches = list(batches)
    if not batches:
        raise ConfigError("calibration saw no batch")
    slim = {name: m for name, m in model.named_modules() if isinstance(m, _SlimBatchNormNd)}
    memory_format = channels_last_format(model) if channels_last else None
    statistics: dict[int, dict[str, tuple[Tensor, Tensor]]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(configs), desc="calibrate", unit="config", leave=False,
                   disable=None)

    def run(i: int) -> None:
        config = configs[i]
        twin = model.subnet(config.width, config.resolution, config.frames)
        twin = inplace_activations(twin).eval()
        bns = {name: m for name, m in twin.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        missing = set(slim) - set(bns)
        if missing:
            raise ConfigError(f"the extracted network lacks the batch norm layers "
                              f"{sorted(missing)}; calibration needs them under "
                              f"features and head")
        for name in slim:  # a plain BN layer of the model keeps its statistics, as in eval
            bns[name].train()
            bns[name].momentum = None  # the cumulative average
            bns[name].reset_running_stats()
        if memory_format is not None:
            twin = twin.to(memory_format=memory_format)
        for batch in batches:
            twin(to_config(batch, config, antialias))
        statistics[i] = {name: (bns[name].running_mean, bns[name].running_var)
                         for name in slim}
        if networks is not None:
            networks[config.key] = inference_network(twin, memory_format)
        if bar is not None:
            bar.update()

    try:
        with ConfigPool(configs, batches[0].device, threads) as pool:
            pool.map(run)
    finally:
        if bar is not None:
            bar.close()
    for i, config in enumerate(configs):
        for name, bn in slim.items():
            bn.calibrated[config.key] = statistics[i][name]
    return configs


def calibration_batches(
    train_set, count: int, batch_size: int, seed: int, num_workers: int, device: torch.device,
    channels_last: bool = False,
) -> list[Tensor]:
    """``count`` training batches at the largest resolution, decoded once, in a fixed order
    (channels-last when the recipe trains so: the same layout, the faster kernels)."""
    from .data.base import Loader, collate_fn_of, reading_workers
    from .train.order import EpochOrder, SeededItems

    if count < 1:
        raise ConfigError(f"calibration needs at least one batch, got {count}")
    batch_size = min(batch_size, len(train_set))
    order = EpochOrder(len(train_set), batch_size, seed, -1, 0)
    loader = Loader(SeededItems(train_set), batch_size=batch_size, sampler=order,
                    collate_fn=collate_fn_of(train_set),
                    num_workers=reading_workers(train_set, num_workers),
                    pin_memory=device.type == "cuda", generator=torch.Generator())
    batches = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last and images.dim() in (4, 5):
            images = images.contiguous(memory_format=layout(images.dim()))
        batches.append(images)
        if len(batches) == count:
            break
    return batches


@writes_run("calibrate")  # no other command writes into the run meanwhile
def calibrate_run(
    run, configs: Sequence[Config], batches: int = 16, batch_size: int | None = None,
    progress: bool = True, networks: dict[str, nn.Module] | None = None,
) -> list[Config]:
    """Calibrate ``configs`` of a run and save their statistics with its weights (and their
    inference networks in ``networks``, see :func:`calibrate`)."""
    configs = [run.check_config(c) for c in configs]
    cfg = run.config
    train_set, _ = run.datasets()
    data = calibration_batches(train_set, batches, batch_size or min(cfg.train.batch_size, 256),
                               cfg.train.seed, cfg.data.num_workers, run.device,
                               cfg.train.channels_last)
    calibrate(run.model, data, configs, progress=progress,
              channels_last=cfg.train.channels_last, networks=networks,
              antialias=run.space.antialias)
    run.meta["calibration"] = {"batches": len(data), "batch_size": int(data[0].shape[0])}
    run.meta.pop("needs_calibration", None)
    from .select import remove_results_of

    # the rows measured with the statistics about to be replaced go with them (first: should
    # the saving fail, rows are missing, never rows that no statistics back)
    with deferred_signals():
        dropped = remove_results_of(run.path, {c.key for c in configs})
        run.save()
    if dropped:
        logging.getLogger("mutualnet").warning(
            "dropped %s from the results of %s: measured with the statistics just replaced; "
            "run `mutualnet evaluate %s` to measure again", ", ".join(dropped), run.path,
            run.path)
    return configs
