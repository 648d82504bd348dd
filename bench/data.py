"""A recipe's input pipeline against the training step it feeds: images per second delivered
by the loader (the recipe's worker count, per-item seeded augmentation, epoch after epoch) and
images per second consumed by the engine's training steps on a batch of it, with the recipe's
mode, task loss, precision and micro-batches. The recipe is the default,
configs/fashion_mnist.yaml, unless --config names another; it must be an image classification
recipe (the step of detection, segmentation and video recipes is not measured here).

Usage: python bench/data.py [--config configs/fashion_mnist.yaml] [--steps 60]
"""

from __future__ import annotations

import time

import torch

from common import Parser, emit, positive, program

from mutualnet.config import VIDEO_DATA_FORMATS, load_config
from mutualnet.data import build_datasets
from mutualnet.space import channels_last as layout
from mutualnet.tasks import build_task
from mutualnet.train import build_model
from mutualnet.train.distributed import Distributed
from mutualnet.train.loop import _loader, _train_step, build_space
from mutualnet.train.optim import build_optimizer
from mutualnet.train.order import EpochOrder, SeededItems


def batches(train_set, batch: int, cfg):
    """The loader `mutualnet train` builds (workers, start method, collate function), one
    epoch after another."""
    epoch = 0
    while True:
        order = EpochOrder(len(train_set), batch, cfg.train.seed, epoch, 0)
        yield from _loader(SeededItems(train_set), order, batch, cfg, torch.device("cpu"))
        epoch += 1


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--config", default="configs/fashion_mnist.yaml",
                        help="the recipe whose pipeline and step are measured")
    parser.add_argument("--steps", type=positive(int), default=60)
    args = parser.parse_args()
    cfg = load_config(args.config)
    if cfg.task != "classification" or cfg.data.format in VIDEO_DATA_FORMATS:
        kind = cfg.task if cfg.task != "classification" else "video"
        parser.error(f"{args.config} is a {kind} recipe; this benchmark measures image "
                     f"classification recipes")
    train_set, _, info = build_datasets(cfg.data, max(cfg.space.resolutions))
    batch = cfg.train.batch_size

    it = batches(train_set, batch, cfg)
    images, labels = next(it)  # workers started; the step trains on this batch
    start = time.perf_counter()
    for _ in range(args.steps * 2):
        next(it)
    delivered = args.steps * 2 * batch / (time.perf_counter() - start)
    it.close()

    device = torch.device("cpu")
    model = build_model(cfg, info.num_classes, info.in_chans).train()
    if cfg.train.channels_last:
        model = model.to(memory_format=layout(4))
        images = images.contiguous(memory_format=layout(4))
    optimizer = build_optimizer(model, cfg.optim)
    task = build_task(cfg)
    space = build_space(cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
    scaler = torch.amp.GradScaler("cpu") if cfg.train.amp == "fp16" else None
    single = Distributed()

    def step(i: int) -> None:
        """One optimizer step as ``mutualnet train`` takes it."""
        _train_step(model, model, images, labels, space.sandwich(cfg.train.seed, i), task,
                    optimizer, scaler, amp_dtype, device, single, i, False,
                    cfg.train.accumulate, space.antialias)

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
