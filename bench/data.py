"""A recipe's input pipeline against the training step it feeds: images per second delivered
by the loader (the recipe's worker count, per-item seeded augmentation) and images per second
consumed by the engine's MutualNet training steps on a batch of it. The recipe is the default,
configs/fashion_mnist.yaml, unless --config names another.

Usage: python bench/data.py [--config configs/fashion_mnist.yaml] [--steps 60]
"""

from __future__ import annotations

import time

import torch

from common import Parser, emit, positive, program

from mutualnet.config import load_config
from mutualnet.data import build_datasets
from mutualnet.space import Space
from mutualnet.tasks import ClassificationTask
from mutualnet.train import build_model
from mutualnet.train.distributed import Distributed
from mutualnet.train.loop import _loader, _train_step
from mutualnet.train.optim import build_optimizer
from mutualnet.train.order import EpochOrder, SeededItems


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--config", default="configs/fashion_mnist.yaml",
                        help="the recipe whose pipeline and step are measured")
    parser.add_argument("--steps", type=positive(int), default=60)
    args = parser.parse_args()
    cfg = load_config(args.config)
    train_set, _, info = build_datasets(cfg.data, max(cfg.space.resolutions))
    batch = cfg.train.batch_size

    order = EpochOrder(len(train_set), batch, 0, 0)
    # the loader `mutualnet train` builds (workers, start method, collate function)
    loader = _loader(SeededItems(train_set), order, batch, cfg, torch.device("cpu"))
    it = iter(loader)
    images, labels = next(it)  # workers started; the step trains on this batch
    start = time.perf_counter()
    for _ in range(args.steps * 2):
        next(it)
    delivered = args.steps * 2 * batch / (time.perf_counter() - start)
    del it, loader

    device = torch.device("cpu")
    model = build_model(cfg, info.num_classes, info.in_chans).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    task = ClassificationTask()
    space = Space(cfg.space.width_range, cfg.space.resolutions, None, cfg.space.num_random)

    single = Distributed()

    def step(i: int) -> None:
        """One optimizer step exactly as ``mutualnet train`` takes it."""
        _train_step(model, model, images, labels, space.sandwich(0, i), task, optimizer, None,
                    None, device, single, i, False, 1)

    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    consumed = args.steps * batch / (time.perf_counter() - start)
    emit({"benchmark": "data", "config": args.config, "workers": cfg.data.num_workers,
          "batch": batch, "loader_images_per_s": round(delivered, 1),
          "step_images_per_s": round(consumed, 1), "ratio": round(delivered / consumed, 2),
          "targets": {"ratio": 2.0}})


if __name__ == "__main__":
    program(main)
