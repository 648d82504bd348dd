"""Building the query table for 20 configurations of a trained Fashion-MNIST run:
ours (calibration batches and evaluation set decoded once for all configurations) against the
official procedure (for each configuration: fresh calibration batches through the data
pipeline with the recipe's workers, recalibration of the slimmable model's running statistics,
then a full evaluation pass of it). Both use the same calibration images, so the accuracies
must agree. After an untimed warm-up of each on two configurations, each round times both
(alternating which goes first); the fastest of each is compared.

Usage: python bench/grid.py [--run RUN] [--configs 20] [--rounds 3]   (without --run: runs/demo,
or else runs/bench-grid, trained from the default recipe for 1 epoch when absent)
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from common import Parser, emit, positive, program

from mutualnet.calibrate import calibrate, calibration_batches
from mutualnet.config import load_config
from mutualnet.data.base import evaluation_loader
from mutualnet.evaluate import evaluate
from mutualnet.nn.layers import _SlimBatchNormNd
from mutualnet.run import load_run
from mutualnet.space import to_config
from mutualnet.tasks import ClassificationTask
from mutualnet.train import train
from mutualnet.train.order import EpochOrder, SeededItems

BATCHES, BATCH = 16, 128


@torch.no_grad()
def official_recalibration(model, batches, config, antialias: bool = False) -> None:
    """The official recalibration of one configuration, on the slimmable model itself: every
    BN layer's running statistics reset, then the batches run through the model at that
    configuration with BN normalising by batch statistics and accumulating the cumulative
    average into the running statistics of its active channels (``momentum=None``); the
    evaluation pass then reads those running statistics."""
    bns = [m for m in model.modules() if isinstance(m, _SlimBatchNormNd)]
    model.set_config(config.width)  # no statistics key: eval mode reads running statistics
    count = [0]

    def forward(bn, x):
        c = bn.active
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c],
                            bn.bias[:c], True, 1.0 / count[0], bn.eps)

    for bn in bns:
        bn.reset_running_stats()
        bn.forward = types.MethodType(forward, bn)
    try:
        for batch in batches:
            count[0] += 1
            model(to_config(batch, config, antialias))
    finally:
        for bn in bns:
            del bn.forward


def official(run, configs, train_set, val_set, task, device):
    """Per configuration, as the official code does it: calibration batches from a fresh
    loader, BN recalibration of the slimmable model, then a full evaluation pass of it."""
    rows = []
    cfg = run.config
    # the official code keeps the default (NCHW) layout and has no per-configuration store
    model = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format).eval()
    for bn in model.modules():
        if isinstance(bn, _SlimBatchNormNd):
            bn.calibrated = {}
    for config in configs:
        # a fresh loader over the same seeded training batches as ours, with the recipe's
        # worker processes, as the official code reads them
        loader = DataLoader(SeededItems(train_set), batch_size=BATCH,
                            sampler=EpochOrder(len(train_set), BATCH, cfg.train.seed, -1, 0),
                            num_workers=cfg.data.num_workers, generator=torch.Generator())
        batches = [images.to(device) for images, _ in itertools.islice(loader, BATCHES)]
        official_recalibration(model, batches, config, run.space.antialias)
        correct = total = 0
        with torch.no_grad():
            for images, labels in DataLoader(val_set, batch_size=256,
                                             num_workers=cfg.data.num_workers):
                output = model(to_config(images.to(device), config, run.space.antialias))
                correct += int((output.argmax(1) == labels.to(device)).sum())
                total += labels.shape[0]
        rows.append({"top1": 100.0 * correct / total})
    return rows


def ours(run, configs, train_set, val_set, task, device):
    """What `mutualnet evaluate` does: calibration batches decoded once for all
    configurations, then one pass over the evaluation set for all of them (through the
    inference networks calibration left)."""
    cfg = run.config
    batches = calibration_batches(train_set, BATCHES, BATCH, cfg.train.seed,
                                  cfg.data.num_workers, device, cfg.train.channels_last)
    networks: dict = {}
    calibrate(run.model, batches, configs, channels_last=cfg.train.channels_last,
              networks=networks, antialias=run.space.antialias)
    loader = evaluation_loader(val_set, 256, cfg.data.num_workers, device)
    return evaluate(run.model, loader, configs, task, device, cfg.train.channels_last,
                    networks=networks, antialias=run.space.antialias)


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--run", help="a trained classification run (default: runs/demo if it "
                        "is one, else runs/bench-grid, trained for 1 epoch if absent)")
    parser.add_argument("--configs", type=positive(int), default=20)
    parser.add_argument("--rounds", type=positive(int), default=3,
                        help="timed runs of each procedure (the fastest of each is compared)")
    args = parser.parse_args()
    if args.run is not None:
        run_dir = Path(args.run)
    elif (Path("runs/demo") / "model.safetensors").exists():
        run_dir = Path("runs/demo")
    else:
        run_dir = Path("runs/bench-grid")
        if not (run_dir / "model.safetensors").exists():
            train(load_config("configs/fashion_mnist.yaml",
                              ["train.epochs=1", "train.progress=false", "train.validate=false"]),
                  run_dir)
    device = torch.device("cpu")
    run = load_run(run_dir, device)
    if run.config.task != "classification":
        parser.error(f"{run_dir} is a {run.config.task} run; the grid compares top-1 accuracy "
                     f"of classification runs")
    configs = run.space.grid(0.05)[: args.configs]
    train_set, val_set = run.datasets()
    task = ClassificationTask()
    timings: dict[str, list[float]] = {"official": [], "ours": []}
    accuracy = {}
    for fn in (official, ours):  # untimed: neither pays the first-use costs in a timed round
        fn(run, configs[:2], train_set, val_set, task, device)
    for round_ in range(args.rounds):
        # alternate which goes first, so that neither always follows the other
        contenders = (("official", official), ("ours", ours))
        for name, fn in contenders if round_ % 2 == 0 else contenders[::-1]:
            start = time.perf_counter()
            rows = fn(run, configs, train_set, val_set, task, device)
            timings[name].append(time.perf_counter() - start)
            accuracy[name] = [r["top1"] for r in rows]
            print(f"round {round_ + 1}: {name} {timings[name][-1]:.2f} s", flush=True)
    official_s, ours_s = min(timings["official"]), min(timings["ours"])
    worst = max(abs(a - b) for a, b in zip(accuracy["official"], accuracy["ours"]))
    emit({"benchmark": "grid", "run": str(run_dir), "configurations": len(configs),
          "calibration_batches": BATCHES, "rounds": args.rounds, "ours_s": round(ours_s, 2),
          "official_s": round(official_s, 2), "speedup": round(official_s / ours_s, 2),
          "speedup_of_medians": round(statistics.median(timings["official"])
                                      / statistics.median(timings["ours"]), 2),
          "max_top1_difference": round(worst, 4),
          "top1_ours": [round(a, 2) for a in accuracy["ours"]], "targets": {"speedup": 5.0,
                                                              "max_top1_difference": 0.1}})


if __name__ == "__main__":
    program(main)
