"""Checkpoints written atomically and read without running code."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = [
    "CHECKPOINT",
    "PREVIOUS",
    "WEIGHTS",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_weights",
    "resume_checkpoint",
    "save_checkpoint",
    "save_weights",
]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
WEIGHTS = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}; "
                              f"check the output directory is writable and has space") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Save ``state`` as the run's checkpoint; the previous one is kept until this one is whole."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    run_dir = Path(run_dir)
    final, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    tmp = run_dir / f".{CHECKPOINT}.new"
    atomic_write_bytes(tmp, buffer.getvalue())
    if final.exists():
        os.replace(final, previous)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    return final


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: tensors and plain data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} refused: it holds objects other than tensors and plain data "
            f"({str(exc).strip().splitlines()[0][:160]}); only load files you trust"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); "
            f"resume from {PREVIOUS} or retrain"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a mutualnet checkpoint (no model state)")
    return state


def resume_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The newest readable checkpoint of a run (falling back to the previous one)."""
    run_dir = Path(run_dir)
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
    if errors:
        raise CheckpointError(errors[0])
    raise CheckpointError(f"no checkpoint to resume in {run_dir}; train without --resume first")


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights (with calibrated BN statistics) as safetensors, ``meta`` as JSON metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(Path(path), save(tensors, metadata={"mutualnet": json.dumps(meta)}))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mutualnet", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"weights file {path} is corrupt ({type(exc).__name__})") from None
    return tensors, meta
