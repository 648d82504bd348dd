"""Building the query table for 20 configurations of a trained Fashion-MNIST run:
ours (calibration batches and evaluation set decoded once for all configurations) against the
official procedure (for each configuration: fresh calibration batches through the data
pipeline, recalibration, then a full evaluation pass). Both use the same calibration images, so
the accuracies must agree.

Usage: python bench/grid.py [--run runs/demo]   (trains the default recipe for 1 epoch into
runs/bench-grid when no run is given and none exists)
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import emit

from mutualnet.calibrate import calibrate, calibration_batches
from mutualnet.config import load_config
from mutualnet.evaluate import evaluate
from mutualnet.run import load_run
from mutualnet.space import to_config
from mutualnet.tasks import ClassificationTask
from mutualnet.train import train

BATCHES, BATCH = 16, 128


def official(run, configs, train_set, val_set, task, device):
    """Per configuration, as the official code does it: calibration batches from a fresh
    loader, BN recalibration, then a full evaluation pass of the slimmable model."""
    rows = []
    cfg = run.config
    # the official code keeps the default (NCHW) layout
    model = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format).eval()
    for config in configs:
        batches = calibration_batches(train_set, BATCHES, BATCH, cfg.train.seed,
                                      cfg.data.num_workers, device)
        calibrate(model, batches, [config])
        model.set_config(config)
        correct = total = 0
        with torch.no_grad():
            for images, labels in DataLoader(val_set, batch_size=256,
                                             num_workers=cfg.data.num_workers):
                output = model(to_config(images.to(device), config))
                correct += int((output.argmax(1) == labels.to(device)).sum())
                total += labels.shape[0]
        rows.append({"top1": 100.0 * correct / total})
    return rows


def ours(run, configs, train_set, val_set, task, device):
    """What `mutualnet evaluate` does: calibration batches decoded once for all
    configurations, then one pass over the evaluation set for all of them."""
    cfg = run.config
    batches = calibration_batches(train_set, BATCHES, BATCH, cfg.train.seed,
                                  cfg.data.num_workers, device, cfg.train.channels_last)
    calibrate(run.model, batches, configs)
    loader = DataLoader(val_set, batch_size=256, num_workers=cfg.data.num_workers)
    return evaluate(run.model, loader, configs, task, device, cfg.train.channels_last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--configs", type=int, default=20)
    args = parser.parse_args()
    run_dir = Path(args.run)
    if not (run_dir / "model.safetensors").exists():
        run_dir = Path("runs/bench-grid")
        if not (run_dir / "model.safetensors").exists():
            train(load_config("configs/fashion_mnist.yaml",
                              ["train.epochs=1", "train.progress=false", "train.validate=false"]),
                  run_dir)
    device = torch.device("cpu")
    run = load_run(run_dir, device)
    configs = run.space.grid(0.05)[: args.configs]
    train_set, val_set = run.datasets()
    task = ClassificationTask()
    timings, accuracy = {}, {}
    for name, fn in (("official", official), ("ours", ours), ("official_again", official),
                     ("ours_again", ours)):
        start = time.perf_counter()
        rows = fn(run, configs, train_set, val_set, task, device)
        timings[name] = time.perf_counter() - start
        accuracy[name.split("_")[0]] = [r["top1"] for r in rows]
        print(name, round(timings[name], 2), "s", flush=True)
    official_s = min(timings["official"], timings["official_again"])
    ours_s = min(timings["ours"], timings["ours_again"])
    worst = max(abs(a - b) for a, b in zip(accuracy["official"], accuracy["ours"]))
    emit({"benchmark": "grid", "run": str(run_dir), "configurations": len(configs),
          "calibration_batches": BATCHES, "ours_s": round(ours_s, 2),
          "official_s": round(official_s, 2), "speedup": round(official_s / ours_s, 2),
          "max_top1_difference": round(worst, 4),
          "top1_ours": [round(a, 2) for a in accuracy["ours"]], "targets": {"speedup": 5.0,
                                                              "max_top1_difference": 0.1}})


if __name__ == "__main__":
    main()
