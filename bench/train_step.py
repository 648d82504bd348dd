"""One MutualNet training step against the floor: the same four configurations as separately
built static networks of the same shapes (same batch, SGD step), interleaved rounds, median
(and the quartiles of the round-by-round ratio, to show the run's spread).

Configurations: full (1.0 at the largest resolution), smallest (the lower width at the lowest
resolution) and two fixed "random" ones (0.8 and 0.6 at the middle resolutions).
Usage: python bench/train_step.py [--models mobilenet_v2,resnet50] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (Parser, device_of, emit, image_models, interleaved, positive, program,
                    ratio_quartiles)

from mutualnet import create_model
from mutualnet.errors import MutualNetError
from mutualnet.space import Config, to_config

SHAPES = {  # name: (small_input, resolutions, batch on CPU, batch on GPU)
    "small": (True, (32, 28, 24, 20), 64, 256),
    "imagenet": (False, (224, 192, 160, 128), 8, 64),
}


def configs(lo: float, resolutions: tuple[int, ...]) -> list[Config]:
    r = sorted(resolutions, reverse=True)
    return [Config(1.0, r[0]), Config(lo, r[-1]), Config(0.8, r[1]), Config(0.6, r[2])]


def build(name: str, shape: str, device: torch.device, channels_last: bool,
          batch: int | None = None):
    small, resolutions, cpu_batch, gpu_batch = SHAPES[shape]
    lo = 0.35
    kwargs = {"num_classes": 100 if small else 1000, "small_input": small}
    slim = create_model(name, width_range=(lo, 1.0), **kwargs).to(device).train()
    cfgs = configs(lo, resolutions)
    static = [create_model(name, width_range=(c.width, c.width), **kwargs).subnet(c.width)
              .to(device).train() for c in cfgs]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    slim = slim.to(memory_format=memory_format)
    static = [s.to(memory_format=memory_format) for s in static]
    batch = batch or (gpu_batch if device.type == "cuda" else cpu_batch)
    x = torch.randn(batch, 3, resolutions[0], resolutions[0], device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, kwargs["num_classes"], (batch,), device=device)
    return slim, static, cfgs, x, y


def losses(i: int, out, y, teacher):
    if i == 0:
        return F.cross_entropy(out, y), F.softmax(out.detach(), 1)
    return F.kl_div(F.log_softmax(out, 1), teacher, reduction="batchmean"), teacher


def slim_step(model, opt, cfgs, x, y):
    opt.zero_grad(set_to_none=True)
    teacher = None
    for i, c in enumerate(cfgs):
        model.set_config(c)
        loss, teacher = losses(i, model(to_config(x, c)), y, teacher)
        loss.backward()
    opt.step()


def static_step(nets, opt, cfgs, x, y):
    opt.zero_grad(set_to_none=True)
    teacher = None
    for i, (net, c) in enumerate(zip(nets, cfgs)):
        loss, teacher = losses(i, net(to_config(x, c)), y, teacher)
        loss.backward()
    opt.step()


def peak_memory(name: str, shape: str, which: str, device: str, channels_last: bool,
                batch: int | None) -> float:
    """Peak memory growth (MiB) over three steps, in a fresh process so the numbers are clean.

    On CPU: freed heap is returned to the system after building the networks, the resident
    high-water mark is reset (``/proc/self/clear_refs``), and the growth of the high-water mark
    over the steps is reported."""
    code = f"""
import ctypes, sys, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from train_step import build, slim_step, static_step
device = torch.device({device!r})
slim, static, cfgs, x, y = build({name!r}, {shape!r}, device, {channels_last!r}, {batch!r})
if {which!r} == 'slim':
    opt = torch.optim.SGD(slim.parameters(), lr=0.01, momentum=0.9)
    step = lambda: slim_step(slim, opt, cfgs, x, y)
else:
    net = static[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    step = lambda: static_step([net], opt, cfgs[:1], x, y)
del static
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
if device.type == 'cuda':
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
    open('/proc/self/clear_refs', 'w').write('5')
    base = status('VmRSS')
for _ in range(3):
    step()
if device.type == 'cuda':
    torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated()
else:
    peak = status('VmHWM')
print((peak - base) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        raise MutualNetError(f"the memory measurement of {name} ({shape}, {which}) failed: "
                             f"{last}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = Parser(description=__doc__)
    parser.add_argument("--models", default="mobilenet_v2,resnet50",
                        help="comma-separated image models (default mobilenet_v2,resnet50)")
    parser.add_argument("--shapes", default="small,imagenet",
                        help=f"comma-separated, of {', '.join(SHAPES)} (default both)")
    parser.add_argument("--rounds", type=positive(int), default=7,
                        help="interleaved rounds after 2 untimed ones (default 7)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when there is one)")
    parser.add_argument("--contiguous-format", action="store_true",
                        help="NCHW instead of channels-last (the recipes' default) for both sides")
    parser.add_argument("--batch", type=positive(int),
                        help="batch size instead of the shape's default")
    args = parser.parse_args()
    unknown = sorted(set(args.shapes.split(",")) - set(SHAPES))
    if unknown:
        parser.error(f"--shapes takes {', '.join(SHAPES)}, got {', '.join(unknown)}")
    device = device_of(parser, args.device)
    models = image_models(parser, args.models)
    channels_last = not args.contiguous_format
    results = []
    for name in models:
        for shape in args.shapes.split(","):
            slim, static, cfgs, x, y = build(name, shape, device, channels_last, args.batch)
            opt_a = torch.optim.SGD(slim.parameters(), lr=0.01, momentum=0.9)
            opt_b = torch.optim.SGD([p for n in static for p in n.parameters()], lr=0.01,
                                    momentum=0.9)
            samples: dict = {}
            t = interleaved({
                "mutualnet_step": lambda: slim_step(slim, opt_a, cfgs, x, y),
                "floor": lambda: static_step(static, opt_b, cfgs, x, y),
            }, rounds=args.rounds, warmup=2, device=device, samples=samples)
            mem_slim = peak_memory(name, shape, "slim", str(device), channels_last, args.batch)
            mem_full = peak_memory(name, shape, "static", str(device), channels_last, args.batch)
            row = {"model": name, "shape": shape, "batch": x.shape[0],
                   "configs": [f"{c.width:g}-{c.resolution}" for c in cfgs],
                   "step_s": round(t["mutualnet_step"], 4), "floor_s": round(t["floor"], 4),
                   "step_over_floor": round(t["mutualnet_step"] / t["floor"], 3),
                   "step_over_floor_quartiles": ratio_quartiles(samples, "mutualnet_step",
                                                                "floor"),
                   "peak_mib_step": round(mem_slim, 1), "peak_mib_full_static": round(mem_full, 1),
                   "memory_ratio": round(mem_slim / mem_full, 3) if mem_full > 0 else None}
            print(row, flush=True)
            results.append(row)
    emit({"benchmark": "train_step", "device": str(device), "channels_last": channels_last,
          "results": results,
          "targets": {"step_over_floor": 1.05, "memory_ratio": 1.3}})


if __name__ == "__main__":
    program(main)
