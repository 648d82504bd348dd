"""Check the paper's claims on your data: every mode of the one engine, several seeds, one report.

For each seed, MutualNet (width + resolution), US-Nets (width only), the full network trained
alone (single) and one independently trained static network per budget configuration are
trained with the same data, epochs and augmentation; all are calibrated and evaluated the same
way; methods are compared at the MACs of the budget configurations.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import MODES, config_to_dict, load_config
from .errors import ConfigError
from .evaluate import evaluate_run
from .run import load_run, read_run_config
from .select import mmacs_figure, mmacs_text, save_mmacs_figure
from .space import Config
from .train import build_space, train
from .train.loop import RESUMABLE_KEYS, _differing_keys
from .train.checkpoint import WEIGHTS, atomic_write_bytes
from .train.log import read_log

__all__ = ["PRESETS", "Preset", "reproduce"]

log = logging.getLogger("mutualnet")

METHODS = ("independent", "usnet", "mutualnet")


@dataclass(frozen=True)
class Preset:
    """A reproduction: the shared recipe, the budget configurations and the seeds."""

    description: str
    overrides: tuple[str, ...]
    budgets: tuple[tuple[float, int], ...]
    seeds: int = 3
    width_step: float = 0.05
    calibration_batches: int = 16


_FASHION_MODEL = (
    "model.name=mobilenet_v2",
    "model.options={block_setting: [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2],"
    " [6, 96, 1, 1]], last_channels: 640}",
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "seconds-long smoke reproduction on synthetic data (used by the tests)",
        ("data.format=synthetic", "data.num_workers=0", "model.name=mobilenet_v2",
         "model.options={block_setting: [[1, 16, 1, 1], [2, 32, 1, 2], [2, 48, 1, 2]], "
         "last_channels: 64, stem_channels: 16}",
         "space.width_range=[0.25, 1.0]", "space.resolutions=[16, 12, 8]",
         "train.epochs=1", "train.batch_size=32", "optim.lr=0.1", "train.validate=false",
         "train.progress=false"),
        ((1.0, 16), (0.75, 16), (0.75, 12), (0.5, 12), (0.5, 8), (0.25, 8)),
        seeds=3, width_step=0.25, calibration_batches=2,
    ),
    "fashion-mnist": Preset(
        "Fashion-MNIST, the default recipe's network over widths 0.25-1.0 and 16-28 px",
        ("data.format=fashion_mnist", "data.augment=shift", "data.shift=2", "data.hflip=false",
         *_FASHION_MODEL, "space.width_range=[0.25, 1.0]", "space.resolutions=[28, 24, 20, 16]",
         "optim.lr=0.1", "optim.weight_decay=5e-5", "optim.warmup_epochs=0.2",
         "train.epochs=3", "train.batch_size=128", "train.channels_last=true",
         "train.validate=false", "train.progress=false"),
        ((1.0, 28), (0.75, 24), (0.5, 24), (0.35, 20), (0.35, 16), (0.25, 16)),
    ),
    "cifar10": Preset(
        "CIFAR-10 (python batches via --data), MobileNetV2 small-input layout",
        ("data.format=cifar10", "data.augment=shift", "data.shift=4", "data.hflip=true",
         "data.num_workers=4", "model.name=mobilenet_v2", "model.options={small_input: true}",
         "space.width_range=[0.35, 1.0]", "space.resolutions=[32, 28, 24, 20]",
         "optim.lr=0.1", "optim.weight_decay=5e-4", "train.epochs=200", "train.batch_size=128",
         "train.channels_last=true", "train.validate=false", "train.progress=false"),
        ((1.0, 32), (0.75, 28), (0.6, 28), (0.5, 24), (0.4, 20), (0.35, 20)),
    ),
    "imagenet": Preset(
        "ImageNet-format folder (train/ and val/ via --data), MobileNetV1 [0.25, 1.0], the "
        "official recipe; meant for a multi-GPU machine",
        ("data.format=image_folder", "data.augment=resized_crop", "data.crop_scale=[0.25, 1.0]",
         "data.num_workers=8", "model.name=mobilenet_v1", "space.width_range=[0.25, 1.0]",
         "space.resolutions=[224, 192, 160, 128]", "optim.lr=0.5", "optim.weight_decay=1e-4",
         "train.epochs=250", "train.batch_size=1024", "train.amp=bf16",
         "train.channels_last=true", "train.validate=false", "train.progress=false"),
        ((1.0, 224), (0.75, 192), (0.5, 192), (0.5, 160), (0.35, 128), (0.25, 128)),
        seeds=3,
    ),
}


@dataclass
class _Job:
    seed: int
    method: str
    config: Config | None = None
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.config is None:
            return f"seed{self.seed}/{self.method}"
        return f"seed{self.seed}/independent_w{self.config.width:g}_r{self.config.resolution}"


def _jobs(preset: Preset, seeds: int, methods: tuple[str, ...] = MODES) -> list[_Job]:
    jobs = []
    for seed in range(seeds):
        for method in ("mutualnet", "usnet", "single"):
            if method in methods:
                jobs.append(_Job(seed, method, None, [f"train.mode={method}"]))
        if "independent" not in methods:
            continue
        for width, resolution in preset.budgets:
            jobs.append(_Job(seed, "independent", Config(width, resolution), [
                "train.mode=independent", f"space.width_range=[{width}, {width}]",
                f"space.resolutions=[{resolution}]"]))
    return jobs


def _finished(run_dir: Path, cfg) -> float | None:
    """Training seconds of a finished run of ``cfg`` (None when it has to be trained).

    A finished run of another recipe (other epochs, overrides...) is never reused silently."""
    if not (run_dir / WEIGHTS).is_file():
        return None
    saved = read_run_config(run_dir)
    differ = _differing_keys(config_to_dict(saved), config_to_dict(cfg)) - RESUMABLE_KEYS
    if differ:
        raise ConfigError(f"{run_dir} holds a finished run of a different recipe "
                          f"({', '.join(sorted(differ))}); give another --out")
    done = [r for r in read_log(run_dir) if r.get("kind") == "done"]
    return float(done[-1]["seconds"]) if done else None


def _eval_configs(run, method: str, job: _Job, width_step: float) -> list[Config]:
    space = build_space(run.config)
    if method == "independent":
        return [job.config]
    if method == "single":
        return [space.full]
    return space.grid(width_step)


def _best_within(rows: list[dict], budget: float) -> dict | None:
    fits = [r for r in rows if r["mmacs"] <= budget * (1 + 1e-9)]
    return max(fits, key=lambda r: (r["top1"], -r["mmacs"])) if fits else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation, rounded; None when no value (e.g. no US-Nets
    configuration is cheap enough for a budget), the standard deviation None for one value."""
    if not values:
        return None, None
    if len(values) == 1:  # the spread of one value is not 0, it is unknown
        return round(values[0], 3), None
    return round(statistics.fmean(values), 3), round(statistics.stdev(values), 3)


def reproduce(
    preset_name: str, out: str | Path, data: str | None = None, seeds: int | None = None,
    epochs: int | None = None, device: str | None = None,
    methods: tuple[str, ...] | None = None, overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Train, calibrate and evaluate every method and write ``report.md``, ``report.json`` and
    ``curves.png`` to ``out``. Finished runs found in ``out`` are reused, so an interrupted
    reproduction continues where it stopped.

    ``methods`` restricts the modes trained (e.g. to study MutualNet's recipe alone);
    ``overrides`` (``key=value``) change the shared recipe of every run."""
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    seeds = preset.seeds if seeds is None else seeds
    if seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    methods = tuple(MODES) if methods is None else tuple(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in MODES]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(MODES)}")
    out = Path(out)
    common = list(preset.overrides)
    if data is not None:
        common.append(f"data.root={data}")
    if epochs is not None:
        common.append(f"train.epochs={epochs}")
    if device is not None:
        common.append(f"train.device={device}")
    common += list(overrides or [])
    load_config(None, common)  # a bad preset or override fails before any training
    started = time.time()
    results: dict[str, Any] = {}
    for job in _jobs(preset, seeds, methods):
        run_dir = out / job.name
        cfg = load_config(None, common + job.overrides + [f"train.seed={job.seed}"])
        seconds = _finished(run_dir, cfg)
        if seconds is None:
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an unfinished run of an earlier, interrupted call
            log.info("training %s", job.name)
            seconds = float(train(cfg, run_dir)["seconds"])
        run = load_run(run_dir, _device(cfg))
        rows = evaluate_run(run, _eval_configs(run, job.method, job, preset.width_step),
                            calibration_batches=preset.calibration_batches, progress=False)
        results[job.name] = {"seed": job.seed, "method": job.method, "seconds": seconds,
                             "rows": rows}
    report = _summarise(preset_name, preset, seeds, results,
                        config_to_dict(load_config(None, common)), methods, run.meta)
    report["wall_seconds"] = round(time.time() - started, 1)
    _write_report(out, report)
    return report


def _device(cfg) -> torch.device:
    from .train.distributed import resolve_device

    return resolve_device(cfg.train.device)


def _budget_mmacs(preset: Preset, meta: dict) -> list[float]:
    """MACs of each budget configuration, counted on the preset's network (the independent
    networks have exactly these shapes)."""
    from .macs import count_macs
    from .models import create_model

    widths = [w for w, _ in preset.budgets]
    model = create_model(meta["model"], num_classes=meta["num_classes"],
                         in_chans=meta["in_chans"], width_range=(min(widths), max(widths)),
                         **meta.get("options", {}))
    return [round(count_macs(model, r, width=w)[0] / 1e6, 6) for w, r in preset.budgets]


def _summarise(name: str, preset: Preset, seeds: int, results: dict, recipe: dict,
               methods: tuple[str, ...], meta: dict) -> dict:
    by_seed: dict[int, dict[str, Any]] = {s: {"independent": {}} for s in range(seeds)}
    for entry in results.values():
        seed, method = entry["seed"], entry["method"]
        if method == "independent":
            row = entry["rows"][0]
            by_seed[seed]["independent"][(row["width"], row["resolution"])] = entry
        else:
            by_seed[seed][method] = entry
    compared = [m for m in METHODS if m in methods]
    budgets = []
    for (width, resolution), mmacs in zip(preset.budgets, _budget_mmacs(preset, meta)):
        line: dict[str, Any] = {"config": Config(width, resolution).name, "mmacs": mmacs}
        for method in compared:
            values, chosen = [], []
            for seed in range(seeds):
                if method == "independent":
                    row = by_seed[seed]["independent"][(width, resolution)]["rows"][0]
                else:
                    row = _best_within(by_seed[seed][method]["rows"], mmacs)
                if row is not None:
                    values.append(row["top1"])
                    chosen.append(Config(row["width"], row["resolution"]).name)
            mean, std = _mean_std(values)
            line[method] = {"mean": mean, "std": std, "n": len(values), "configs": chosen}
        budgets.append(line)
    full = preset.budgets[0]
    # the full network trained alone: `single`, or the independent run of the full
    # configuration, which is the same training
    alone = ("single" if "single" in methods else
             "independent" if "independent" in methods else None)
    single = None
    if alone is not None:
        single_acc = [(by_seed[seed]["single"] if alone == "single"
                       else by_seed[seed]["independent"][full])["rows"][0]["top1"]
                      for seed in range(seeds)]
        single = {"full_config": Config(*full).name, "single_top1": _ms(single_acc)}
        if "mutualnet" in methods:
            mutual_full = [next(r["top1"] for r in by_seed[seed]["mutualnet"]["rows"]
                                if r["width"] == full[0] and r["resolution"] == full[1])
                           for seed in range(seeds)]
            single.update(mutualnet_full_top1=_ms(mutual_full),
                          gain=_ms([m - a for m, a in zip(mutual_full, single_acc)]))
    times = []
    for seed in range(seeds):
        t: dict[str, Any] = {"seed": seed}
        for method in ("mutualnet", "usnet", "single"):
            if method in methods:
                t[f"{method}_s"] = by_seed[seed][method]["seconds"]
        if "independent" in methods:
            t["independent_sum_s"] = round(
                sum(e["seconds"] for e in by_seed[seed]["independent"].values()), 1)
        times.append(t)
    return {
        "preset": name, "description": preset.description, "seeds": seeds,
        "methods": list(methods), "recipe": recipe, "budgets": budgets,
        "single": single,
        "training_time": times,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "runs": {k: {"seconds": v["seconds"], "rows": v["rows"]} for k, v in results.items()},
    }


def _ms(values: list[float]) -> dict[str, float | None]:
    mean, std = _mean_std(values)
    return {"mean": mean, "std": std}


def _fmt(cell: dict) -> str:
    if cell["mean"] is None:
        return "n/a"
    return f"{cell['mean']:.2f}" + ("" if cell["std"] is None else f" ± {cell['std']:.2f}")


_NAMES = {"independent": "independent", "usnet": "US-Nets", "mutualnet": "MutualNet",
          "single": "single"}


def _resize_name(report: dict) -> str:
    if report["recipe"]["space"].get("antialias"):
        return "antialiased, space.antialias"
    return "plain bilinear, as the official code"


def _markdown(report: dict) -> str:
    compared = [m for m in METHODS if m in report["methods"]]
    lines = [
        f"# Reproduction: {report['preset']}",
        "",
        f"{report['description']}; {_counted(report['recipe']['train']['epochs'], 'epoch')} "
        f"per run. "
        f"{_counted(report['seeds'], 'seed')}; top-1 (%)"
        f"{' mean ± std over seeds' if report['seeds'] > 1 else ''}, all methods calibrated "
        f"and evaluated by the same code, each on images resized as it was trained: "
        f"independent networks by the data pipeline (antialiased), "
        f"MutualNet's configurations on the device ({_resize_name(report)}). MutualNet and "
        f"US-Nets take their most accurate configuration within each budget (MACs of the "
        f"budget configuration).",
        "",
    ]
    if compared:
        lines += ["| budget (MMACs) | budget config | " + " | ".join(_NAMES[m] for m in compared)
                  + " |", "|---|---|" + "---|" * len(compared)]
        for b in report["budgets"]:
            lines.append(f"| {mmacs_text(b['mmacs'])} | {b['config']} | "
                         + " | ".join(_fmt(b[m]) for m in compared) + " |")
    else:
        lines.append("No budget comparison: it needs mutualnet, usnet or independent among "
                     "the methods.")
    s = report["single"]
    if s is not None:
        text = (f"**Single network.** Full configuration {s['full_config']}: trained alone "
                f"{_fmt(s['single_top1'])}")
        if "gain" in s:
            text += (f", as part of MutualNet {_fmt(s['mutualnet_full_top1'])}; gain "
                     f"{_fmt(s['gain'])} points")
        lines += ["", text + "."]
    timed = [m for m in ("mutualnet", "usnet", "single") if m in report["methods"]]
    independent = "independent" in report["methods"]
    header = [_NAMES[m] for m in timed]
    if independent:
        header.append(f"independent (sum of {len(report['budgets'])})")
    ratio = independent and "mutualnet" in timed
    if ratio:
        header.append("MutualNet / independent")
    lines += ["", "**Training time** (seconds of training per run, this machine):", "",
              "| seed | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for t in report["training_time"]:
        cells = [f"{t[f'{m}_s']:.1f}" for m in timed]
        if independent:
            cells.append(f"{t['independent_sum_s']:.1f}")
        if ratio:
            total = t["independent_sum_s"]
            cells.append(f"{t['mutualnet_s'] / total if total else math.nan:.2f}")
        lines.append(f"| {t['seed']} | " + " | ".join(cells) + " |")
    m = report["machine"]
    lines += ["", f"Machine: {m['platform']}, {m['threads']} torch threads, torch {m['torch']}"
              + (f", GPU {m['cuda']}" if m["cuda"] else ", CPU only")
              + f". Whole reproduction: {report.get('wall_seconds', 0):.0f} s.", "",
              "![accuracy against MACs](curves.png)", ""]
    return "\n".join(lines)


def _plot(report: dict, path: Path) -> None:
    fig, ax = mmacs_figure()
    labels = {"independent": "independent networks", "usnet": "US-Nets (width only)",
              "mutualnet": "MutualNet (width + resolution)"}
    for method in [m for m in METHODS if m in report["methods"]]:
        points = [(b["mmacs"], b[method]["mean"], b[method]["std"]) for b in report["budgets"]
                  if b[method]["mean"] is not None]
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[p[2] or 0.0 for p in points], marker="o", ms=4, capsize=3,
                    label=labels[method])
    s = report["single"]
    if s is not None:
        ax.errorbar([report["budgets"][0]["mmacs"]], [s["single_top1"]["mean"]],
                    yerr=[s["single_top1"]["std"] or 0.0], marker="*", ms=10, ls="none", capsize=3,
                    color="k", label="full network trained alone")
    save_mmacs_figure(fig, ax, "top-1 (%)",
                      f"{report['preset']}: {_counted(report['seeds'], 'seed')}, mean ± std", path)


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _scope(report: dict) -> str:
    return f"{'+'.join(report['methods'])}-{_counted(report['seeds'], 'seed')}"


def _keep_other_report(out: Path, report: dict) -> None:
    """A report of other methods or seeds already in ``out`` is renamed after what it covers
    (e.g. ``report-mutualnet+usnet-3-seeds.md``), not replaced."""
    try:
        scope = _scope(json.loads((out / "report.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return  # none, or not one this command wrote: left as it is, and replaced
    if scope == _scope(report):
        return
    suffix = scope.replace(" ", "-")
    for name in ("report.json", "report.md", "curves.png"):
        if (out / name).is_file():
            stem, ext = name.split(".")
            os.replace(out / name, out / f"{stem}-{suffix}.{ext}")
    log.warning("the report already in %s covers other methods or seeds (%s): it is kept as "
                "report-%s.md", out, scope, suffix)


def _write_report(out: Path, report: dict) -> None:
    _keep_other_report(out, report)
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(out / "report.md", _markdown(report).encode())
    _plot(report, out / "curves.png")
