"""The default recipe's input pipeline against the training step it feeds: images per second
delivered by the loader (default worker count, per-item seeded augmentation) and images per
second consumed by MutualNet training steps of configs/fashion_mnist.yaml.

Usage: python bench/data.py [--steps 60]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from common import emit

from mutualnet.config import load_config
from mutualnet.data import build_datasets
from mutualnet.space import Space, to_config
from mutualnet.tasks import ClassificationTask
from mutualnet.train import build_model
from mutualnet.train.optim import build_optimizer
from mutualnet.train.order import EpochOrder, SeededItems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    cfg = load_config("configs/fashion_mnist.yaml")
    train_set, _, info = build_datasets(cfg.data, max(cfg.space.resolutions))
    batch = cfg.train.batch_size

    order = EpochOrder(len(train_set), batch, 0, 0)
    loader = DataLoader(SeededItems(train_set), batch_size=batch, sampler=order,
                        num_workers=cfg.data.num_workers, generator=torch.Generator())
    it = iter(loader)
    next(it)  # workers started
    start = time.perf_counter()
    for _ in range(args.steps * 2):
        next(it)
    delivered = args.steps * 2 * batch / (time.perf_counter() - start)
    del it, loader

    model = build_model(cfg, info.num_classes, info.in_chans).train()
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.optim)
    task = ClassificationTask()
    space = Space(cfg.space.width_range, cfg.space.resolutions, None, cfg.space.num_random)
    x = torch.randn(batch, info.in_chans, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, info.num_classes, (batch,))

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        teacher = None
        for j, c in enumerate(space.sandwich(0, i)):
            model.set_config(c)
            out = model(to_config(x, c))
            if j == 0:
                loss, teacher = task.label_loss(out, y), task.teacher_signal(out)
            else:
                loss = task.distill_loss(out, teacher)
            loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    consumed = args.steps * batch / (time.perf_counter() - start)
    emit({"benchmark": "data", "workers": cfg.data.num_workers, "batch": batch,
          "loader_images_per_s": round(delivered, 1), "step_images_per_s": round(consumed, 1),
          "ratio": round(delivered / consumed, 2), "targets": {"ratio": 2.0}})


if __name__ == "__main__":
    main()
