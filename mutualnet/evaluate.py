"""Accuracy of many configurations from one pass over the evaluation data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

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
