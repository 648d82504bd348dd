"""MutualNet training on a GPU at ImageNet shapes (224 px and the sandwich of bench/train_step.py).

1. Throughput: the engine's own training step (``train.loop._train_step``: full + smallest + two
   random configurations, distillation, optimizer step) with AMP (bf16) and channels-last,
   against the same step in fp32 and the default layout. Images per second of training batch.
2. Step / floor on the GPU: the MutualNet step against the same four configurations run as
   separately built static networks, both in bf16 autocast and channels-last.

Interleaved rounds, medians, synchronised. cuDNN's TF32 setting is left at torch's default and
reported. Usage: python bench/gpu.py [--models mobilenet_v2,resnet50] [--batch 128]
[--rounds 20]; ``--device cpu --batch 2 --rounds 1`` runs it on CPU as a smoke check only.
"""

from __future__ import annotations

import torch

from common import (Parser, device_of, emit, image_models, interleaved, positive, program,
                    ratio_quartiles)
from train_step import build, slim_step, static_step

from mutualnet.tasks import ClassificationTask
from mutualnet.train.distributed import Distributed
from mutualnet.train.loop import _train_step


def engine_step(model, optimizer, configs, x, y, amp_dtype, device):
    """One optimizer step exactly as ``mutualnet train`` takes it."""
    task, single = ClassificationTask(), Distributed()
    return lambda: _train_step(model, model, x, y, configs, task, optimizer, None, amp_dtype,
                               device, single, 0, False, 1)


def autocast(fn, device):
    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            fn()
    return run


def measure(name: str, batch: int, rounds: int, device: torch.device) -> dict:
    # throughput: bf16 + channels-last against fp32 in the default layout
    amp_model, _, configs, x_cl, y = build(name, "imagenet", device, True, batch)
    fp32_model, _, _, x, _ = build(name, "imagenet", device, False, batch)
    amp_opt = torch.optim.SGD(amp_model.parameters(), lr=0.01, momentum=0.9)
    fp32_opt = torch.optim.SGD(fp32_model.parameters(), lr=0.01, momentum=0.9)
    t = interleaved({
        "amp": engine_step(amp_model, amp_opt, configs, x_cl, y, torch.bfloat16, device),
        "fp32": engine_step(fp32_model, fp32_opt, configs, x, y, None, device),
    }, rounds=rounds, warmup=3, device=device)
    del amp_model, amp_opt, fp32_model, fp32_opt
    # step / floor, both in bf16 + channels-last
    slim, static, _, _, _ = build(name, "imagenet", device, True, batch)
    opt_a = torch.optim.SGD(slim.parameters(), lr=0.01, momentum=0.9)
    opt_b = torch.optim.SGD([p for n in static for p in n.parameters()], lr=0.01, momentum=0.9)
    samples: dict = {}
    f = interleaved({
        "step": autocast(lambda: slim_step(slim, opt_a, configs, x_cl, y), device),
        "floor": autocast(lambda: static_step(static, opt_b, configs, x_cl, y), device),
    }, rounds=rounds, warmup=3, device=device, samples=samples)
    row = {"model": name, "batch": batch,
           "configs": [f"{c.width:g}-{c.resolution}" for c in configs],
           "amp_images_per_s": round(batch / t["amp"], 1),
           "fp32_images_per_s": round(batch / t["fp32"], 1),
           "amp_over_fp32": round(t["fp32"] / t["amp"], 3),
           "step_s": round(f["step"], 4), "floor_s": round(f["floor"], 4),
           "step_over_floor": round(f["step"] / f["floor"], 3),
           "step_over_floor_quartiles": ratio_quartiles(samples, "step", "floor")}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--batch", type=positive(int), default=128)
    parser.add_argument("--rounds", type=positive(int), default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; run it on a GPU machine (or --device cpu for a "
                     "smoke check)")
    device = device_of(parser, args.device)
    models = image_models(parser, args.models)
    results = []
    for name in models:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        row = measure(name, args.batch, args.rounds, device)
        print(row, flush=True)
        results.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit({"benchmark": "gpu", "device": str(device),
          "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
          "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
          "results": results, "targets": {"amp_over_fp32": 2.0, "step_over_floor": 1.10}})


if __name__ == "__main__":
    program(main)
