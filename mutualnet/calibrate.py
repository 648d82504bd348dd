"""Post-training batch-norm calibration: statistics recomputed for each configuration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .errors import ConfigError
from .nn.layers import _SlimBatchNormNd
from .nn.model import SlimmableModel
from .space import Config, to_config

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

        iterator = tqdm(configs, desc="calibrate", unit="config", leave=False)
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
