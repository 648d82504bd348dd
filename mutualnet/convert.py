"""Turn an official MutualNet checkpoint into a run directory.

Every official key is mapped to ours by the structure of the official model (which unit of
which block it belongs to), never by position; every name and shape is checked. The official
per-width BN statistics (``bn.N.running_*``, kept for a fixed width list at an unknown
resolution) are not used: the run is marked as needing calibration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from .config import RunConfig, config_to_dict
from .errors import CheckpointError, ConfigError
from .models import create_model
from .train.checkpoint import WEIGHTS, save_weights, torch_load, write_config

__all__ = ["ARCHES", "convert_official", "map_official_key", "read_official"]

ARCHES = {
    "mobilenet_v1": (0.25, 1.0),
    "mobilenet_v2": (0.7, 1.0),
    "resnet50": (0.9, 1.0),
}
IMAGENET_RESOLUTIONS = [224, 192, 160, 128]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# Official statistics that are deliberately not carried over.
_STATS = re.compile(r"(\.bn\.\d+\.(running_mean|running_var|num_batches_tracked)"
                    r"|\.(running_mean|running_var|num_batches_tracked))$")


def _unit(body_index: int) -> str:
    """Official blocks are flat Sequentials of (conv, BN, activation) triples; ours nest them."""
    return f"{body_index // 3}.{body_index % 3}"


def _v1(module: str) -> str | None:
    if m := re.fullmatch(r"features\.0\.([01])", module):
        return f"features.0.{m[1]}"
    if m := re.fullmatch(r"features\.(\d+)\.body\.([0134])", module):
        part = {"0": "depthwise.0", "1": "depthwise.1", "3": "pointwise.0", "4": "pointwise.1"}
        return f"features.{m[1]}.{part[m[2]]}"
    if module == "classifier.0":
        return "head.2"
    return None


def _v2(module: str) -> str | None:
    if m := re.fullmatch(r"features\.(\d+)\.([01])", module):
        return f"features.{m[1]}.{m[2]}"
    if m := re.fullmatch(r"features\.(\d+)\.body\.(\d+)", module):
        k = int(m[2])
        return f"features.{m[1]}.body.{_unit(k)}" if k % 3 < 2 else None
    if module == "classifier.0":
        return "head.2"
    return None


def _resnet(module: str) -> str | None:
    if m := re.fullmatch(r"features\.0\.([01])", module):
        return f"features.0.{m[1]}"
    if m := re.fullmatch(r"features\.(\d+)\.body\.(\d+)", module):
        k = int(m[2])  # our features hold the max-pool separately, one index later
        return f"features.{int(m[1]) + 1}.body.{_unit(k)}" if k % 3 < 2 else None
    if m := re.fullmatch(r"features\.(\d+)\.shortcut\.([01])", module):
        return f"features.{int(m[1]) + 1}.shortcut.{m[2]}"
    if module == "classifier.0":
        return "head.2"
    return None


_MAPPERS: dict[str, Callable[[str], str | None]] = {
    "mobilenet_v1": _v1, "mobilenet_v2": _v2, "resnet50": _resnet,
}


def map_official_key(arch: str, key: str) -> str | None:
    """Our state-dict key for an official parameter key (None: not a mapped key)."""
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    ours = _MAPPERS[arch](module)
    return f"{ours}.{leaf}" if ours is not None else None


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint, read without running pickled code."""
    path = Path(path)
    data = torch_load(path, fix="download the official checkpoint again")
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} holds no state dict of tensors (expected the official "
                              f"{{'model': state_dict, ...}} or a bare state dict)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def convert_official(
    checkpoint: str | Path, arch: str, out: str | Path,
    width_range: tuple[float, float] | None = None,
) -> dict:
    """Write a run directory holding the official weights; returns a summary."""
    if arch not in ARCHES:
        raise ConfigError(f"unknown --arch {arch!r}; use one of {', '.join(ARCHES)}")
    width_range = tuple(width_range or ARCHES[arch])
    if not (len(width_range) == 2 and 0 < width_range[0] <= width_range[1]):
        raise ConfigError(f"--width-range must be LO,HI with 0 < LO <= HI, got "
                          f"{','.join(f'{w:g}' for w in width_range)}")
    out = Path(out)
    from .run import held_run_files

    held = held_run_files(out)
    if held:
        raise ConfigError(f"{out} already holds a run ({', '.join(held)}); choose another -o "
                          f"directory")
    official = read_official(checkpoint)
    classifier = official.get("classifier.0.weight")
    if classifier is None or classifier.dim() != 2:
        raise CheckpointError(f"{checkpoint} has no classifier.0.weight: not an official "
                              f"MutualNet {arch} checkpoint")
    num_classes = int(classifier.shape[0])
    model = create_model(arch, num_classes=num_classes, in_chans=3, width_range=width_range)
    ours = model.state_dict()
    wanted = {k for k in ours if k.endswith((".weight", ".bias"))}
    state: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in official.items():
        target = map_official_key(arch, key)
        if target is None:
            if _STATS.search(key):
                dropped += 1
                continue
            raise CheckpointError(f"official key {key} has no place in {arch}; is --arch right?")
        if target not in ours:
            raise CheckpointError(f"official key {key} maps to {target}, which {arch} lacks; "
                                  f"is --arch right?")
        if tuple(value.shape) != tuple(ours[target].shape):
            raise CheckpointError(
                f"official key {key} has shape {tuple(value.shape)} but {arch} with width range "
                f"[{width_range[0]:g}, {width_range[1]:g}] needs {tuple(ours[target].shape)}; "
                f"check --arch and --width-range")
        state[target] = value.to(ours[target].dtype)
    missing = sorted(wanted - set(state))
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} weight(s) of {arch} "
                              f"(first: {missing[0]}); is --arch right?")
    model.load_state_dict(state, strict=False)

    cfg = RunConfig()
    cfg.model.name = arch
    cfg.space.width_range = width_range
    cfg.space.resolutions = list(IMAGENET_RESOLUTIONS)
    cfg.data.format = "image_folder"
    cfg.data.augment = "resized_crop"
    cfg.train.batch_size = 256
    cfg.validate()
    meta = {
        "model": arch, "options": {}, "num_classes": num_classes, "in_chans": 3,
        "class_names": [str(i) for i in range(num_classes)],
        "width_range": list(width_range), "resolutions": list(IMAGENET_RESOLUTIONS),
        "frames": None, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "mode": "mutualnet",
        "needs_calibration": True, "placeholder_statistics": True,
        "converted_from": str(Path(checkpoint).name),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}; choose a writable -o") from None
    write_config(out, config_to_dict(cfg))
    save_weights(out / WEIGHTS, model.state_dict(), meta)
    return {"run": str(out), "arch": arch, "weights": len(state), "num_classes": num_classes,
            "width_range": list(width_range), "dropped_bn_statistics": dropped,
            "next": f"mutualnet calibrate {out} --data IMAGENET_DIR"}
