"""Post-training batch-norm calibration: statistics recomputed for each configuration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .errors import ConfigError
from .nn.layers import _SlimBatchNormNd
from .nn.model import SlimmableModel
from .space import Config, to_config
from .space import channels_last as layout

__all__ = ["calibrate"]


@torch.no_grad()
def calibrate(
    model: SlimmableModel,
    batches: Sequence[Tensor],
    configs: Iterable[Config],
    progress: bool = False,
) -> list[Config]:
    """Recompute BN statistics of each configuration from the same decoded ``batches``.

    The batches are at the largest resolution; each configuration sees them resized on the
    device. The statistics are the cumulative average over the batches, with BN normalising
    by batch statistics as in training; nothing else about the model changes (its mode,
    active configuration, shared statistics and weights are left as they were).
    """
    configs = list(configs)
    bns = [m for m in model.modules() if isinstance(m, _SlimBatchNormNd)]
    training = {m: m.training for m in model.modules()}
    previous = model.config
    model.eval()
    iterator = configs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(configs, desc="calibrate", unit="config", leave=False, disable=None)
    try:
        for config in iterator:
            if config.resolution is None:
                raise ConfigError("calibration needs configurations with a resolution")
            model.set_config(config)
            for bn in bns:
                bn.begin_calibration()
            for batch in batches:
                model(to_config(batch, config))
            for bn in bns:
                bn.end_calibration()
    finally:
        for bn in bns:
            bn._calibration = None
        for m, mode in training.items():
            m.training = mode
        model.set_config(previous)
    return configs


def calibration_batches(
    train_set, count: int, batch_size: int, seed: int, num_workers: int, device: torch.device,
    channels_last: bool = False,
) -> list[Tensor]:
    """``count`` training batches at the largest resolution, decoded once, in a fixed order
    (channels-last when the recipe trains so: the same layout, the faster kernels)."""
    from torch.utils.data import DataLoader

    from .data.base import collate_fn_of
    from .train.order import EpochOrder, SeededItems

    if count < 1:
        raise ConfigError(f"calibration needs at least one batch, got {count}")
    batch_size = min(batch_size, len(train_set))
    order = EpochOrder(len(train_set), batch_size, seed, -1, 0)
    loader = DataLoader(SeededItems(train_set), batch_size=batch_size, sampler=order,
                        collate_fn=collate_fn_of(train_set),
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
    batches = []
    for images, _ in loader:
        images = images.to(device, non_blocking=True)
        if channels_last and images.dim() in (4, 5):
            images = images.contiguous(memory_format=layout(images.dim()))
        batches.append(images)
        if len(batches) == count:
            break
    return batches


def calibrate_run(
    run, configs: Sequence[Config], batches: int = 16, batch_size: int | None = None,
    progress: bool = True,
) -> list[Config]:
    """Calibrate ``configs`` of a run and save their statistics with its weights."""
    configs = [run.check_config(c) for c in configs]
    cfg = run.config
    train_set, _ = run.datasets()
    data = calibration_batches(train_set, batches, batch_size or min(cfg.train.batch_size, 256),
                               cfg.train.seed, cfg.data.num_workers, run.device,
                               cfg.train.channels_last)
    calibrate(run.model, data, configs, progress=progress)
    run.meta["calibration"] = {"batches": len(data), "batch_size": int(data[0].shape[0])}
    run.meta.pop("needs_calibration", None)
    run.save()
    return configs
