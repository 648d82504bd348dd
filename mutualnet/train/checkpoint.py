"""Checkpoints written atomically and read without running code."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..errors import CheckpointError, MutualNetError, UnsafeCheckpointError

__all__ = [
    "CHECKPOINT",
    "CONFIG_FILE",
    "PREVIOUS",
    "WEIGHTS",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_model_state",
    "load_weights",
    "resume_checkpoint",
    "run_lock",
    "save_checkpoint",
    "save_weights",
    "torch_load",
    "write_config",
    "writes_run",
]

log = logging.getLogger("mutualnet")

CONFIG_FILE = "config.yaml"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
WEIGHTS = "model.safetensors"
#: the file whose lock a command writing into the run holds
LOCK = ".lock"
_RESUME_KEYS = ("optimizer", "rng", "step")


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
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        kept = " (the one there is left as it was)" if path.is_file() else ""
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}{kept}; free space "
                              f"or choose a writable location") from None
    except BaseException:  # interrupted: nothing is left beside the file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while files that must agree are written one after
    another; a signal that came meanwhile is delivered when they all are. (Outside the main
    thread, where handlers cannot be set, nothing is held back.)"""
    import signal

    came: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: came.append(signum))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(came):
            signal.raise_signal(sig)


#: run directories this process holds, and how many times (the lock is reentrant)
_HELD: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold ``run_dir`` while ``command`` writes into it (its weights, training state or
    results). A second writing command on the same directory, from any process, is refused
    with a :class:`MutualNetError` naming the first, instead of mixing its files with the
    first's. The lock is an advisory ``flock`` on ``run_dir/.lock``, released when the process
    ends however it ends; it is reentrant within a process. Creates ``run_dir``."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        key = run_dir.resolve()
    except OSError as exc:
        raise CheckpointError(f"cannot create run directory {run_dir}: "
                              f"{exc.strerror or exc}; choose a writable --out") from None
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        fcntl = None
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    try:
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CheckpointError(f"cannot write in run directory {run_dir}: "
                              f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise MutualNetError(f"{run_dir} is in use by {_holder(fd)}; wait for it to "
                                 f"finish (or stop it) and run this again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        _HELD[key] = 1
        try:
            _check_files(run_dir)
            yield
        finally:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # names no holder once released
    finally:
        os.close(fd)  # releases the lock


def writes_run(command: str) -> Callable:
    """Decorate a function whose first argument is a :class:`~mutualnet.run.Run` it writes
    into: the function holds the run's :func:`run_lock` while it runs."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def held(run, *args, **kwargs):
            with run_lock(run.path, command):
                return function(run, *args, **kwargs)
        return held
    return decorate


def _check_files(run_dir: Path) -> None:
    """A folder in the place of one of the run's files would fail the command when it
    writes there, maybe after all its work: it is refused first."""
    from ..run import RUN_FILES

    for name in RUN_FILES:
        if (run_dir / name).is_dir():
            raise MutualNetError(f"{run_dir / name} is a folder, where the run keeps a file "
                                 f"of that name; move it away and run this again")


def _holder(fd: int) -> str:
    """Who holds a run directory's lock, as its holder wrote it."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"`mutualnet {holder['command']}` (process {int(holder['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another mutualnet command"


def no_run_directory(path: Path) -> str:
    """Why ``path``, not a directory, holds no run, for a message."""
    return (f"{path} is a file, not a run directory" if Path(path).exists() else
            f"{path} does not exist: no run directory")


def config_bytes(config: dict[str, Any]) -> bytes:
    """A run's resolved recipe as its ``config.yaml`` holds it."""
    import yaml

    return yaml.safe_dump(config, sort_keys=False).encode()


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write a run's resolved recipe (``config.yaml``) atomically."""
    atomic_write_bytes(Path(run_dir) / CONFIG_FILE, config_bytes(config))


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
    """Save ``state`` as the run's checkpoint so that a crash at any instant leaves a whole one.

    The new file is written and fsynced beside the old one; the old one becomes
    ``checkpoint.prev.pt`` through a hard link, so ``checkpoint.pt`` never goes missing; the
    new one is then renamed over ``checkpoint.pt``. A torn ``checkpoint.pt`` (not a whole zip
    archive, as ``torch.save`` writes) is not kept: it would replace a good previous one.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    run_dir = Path(run_dir)
    final, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    tmp = run_dir / f".{CHECKPOINT}.new"
    for stray in run_dir.glob(f".{tmp.name}.tmp-*"):  # left by a process killed while writing
        stray.unlink(missing_ok=True)
    atomic_write_bytes(tmp, buffer.getvalue())
    try:
        if zipfile.is_zipfile(final):
            _keep_previous(final, previous)
        os.replace(tmp, final)
    except OSError as exc:
        raise CheckpointError(f"cannot save a checkpoint in {run_dir}: {exc.strerror or exc}; "
                              f"choose a writable --out with free space") from None
    _fsync_dir(run_dir)
    return final


def _keep_previous(final: Path, previous: Path) -> None:
    """Make ``previous`` name the file ``final`` names (a link renamed into place); where the
    filesystem has no hard links, ``final`` is renamed, which leaves it missing for an instant
    (``resume_checkpoint`` then takes ``previous``)."""
    link = previous.with_name(f".{previous.name}.new")
    link.unlink(missing_ok=True)
    try:
        os.link(final, link)
    except OSError:
        os.replace(final, previous)
        return
    os.replace(link, previous)


def _reason(exc: BaseException) -> str:
    """The informative part of a loader's error, short and on one line."""
    if isinstance(exc, LookupError):  # a damaged pickle stream: "KeyError: 246" says nothing
        return "its pickled data does not decode"
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.strip().startswith("Check the documentation")]
    text = lines[-1].split(". ")[0][:120] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def torch_load(path: Path, map_location: str | torch.device = "cpu",
               fix: str = "restore the file or retrain") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain data, never code.

    Every failure is a :class:`CheckpointError` ending with ``fix``; a file that asks to run
    code is an :class:`UnsafeCheckpointError`.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        code = re.search(r"GLOBAL (\S+)", str(exc))
        if code:
            raise UnsafeCheckpointError(
                f"checkpoint {path} asks to run code when loaded ({code[1]}); refusing to load "
                f"it, as a checkpoint holds only tensors and plain data: do not use this file"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or holds more than tensors and "
                              f"plain data ({_reason(exc)}); refusing to load it: {fix}") from None
    except Exception as exc:  # damaged files raise almost any type from the zip or pickle layer
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_reason(exc)}); "
                              f"{fix}") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A mutualnet checkpoint read with :func:`torch_load`, its model state checked."""
    state = torch_load(path, map_location)
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise CheckpointError(f"{path} is not a mutualnet checkpoint (no model state of "
                              f"tensors); restore the file or retrain")
    return state


def _check_resumable(state: dict[str, Any], path: Path) -> None:
    """Training needs the optimizer, RNG and step besides the weights."""
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}, so training cannot resume "
                              f"from it; restore the file or retrain")
    rng, step = state["rng"], state["step"]
    whole = (isinstance(state["optimizer"], dict) and isinstance(rng, dict)
             and isinstance(rng.get("torch"), torch.Tensor) and "python" in rng
             and isinstance(step, int) and step >= 0)
    if not whole:
        raise CheckpointError(f"{path} holds a damaged training state, so training cannot "
                              f"resume from it; restore the file or retrain")


def resume_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The newest readable checkpoint of a run: ``checkpoint.pt``, else ``checkpoint.prev.pt``.

    The fallback covers a crash while ``checkpoint.pt`` was replaced; a file that asks to run
    code is refused outright instead, as it was put there by someone, not by a crash.
    """
    run_dir = Path(run_dir)
    errors = []
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path, map_location)
            _check_resumable(state, path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if errors:
            log.warning("%s; resuming from %s instead", errors[0].split("; ")[0], name)
        return state
    if len(errors) > 1:
        raise CheckpointError(f"cannot resume {run_dir}: neither {CHECKPOINT} nor {PREVIOUS} "
                              f"can be used ({errors[0].split('; ')[0]}); restore one or retrain")
    if errors:
        raise CheckpointError(f"cannot resume {run_dir}: {errors[0]}")
    if (run_dir / WEIGHTS).is_file():  # a finished run whose checkpoints were removed
        raise CheckpointError(f"cannot resume {run_dir}: it holds weights ({WEIGHTS}) but no "
                              f"{CHECKPOINT}, the training state going on needs; its training "
                              f"cannot go on: train a new run in another --out directory")
    raise CheckpointError(f"no checkpoint to resume in {run_dir}; train without --resume first")


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly; weights of another architecture, width range or
    class count are a :class:`CheckpointError` naming the first difference, not a traceback."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".calibrated." not in k}
    have = {k: tuple(v.shape) for k, v in state.items() if ".calibrated." not in k}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    resized = [k for k in want if k in have and have[k] != want[k]]
    problems = []
    if missing:
        problems.append(f"lack {len(missing)} of its tensors (first: {missing[0]})")
    if extra:
        problems.append(f"hold {len(extra)} tensors it has not (first: {extra[0]})")
    if resized:
        key = resized[0]
        problems.append(f"hold {key} of shape {have[key]} where it needs {want[key]}")
    name = type(model).__name__
    if problems:
        raise CheckpointError(f"{source} do not fit the {name} of this run: they "
                              f"{'; they '.join(problems)}; restore the run's own files or "
                              f"retrain")
    try:
        model.load_state_dict(state)
    except (RuntimeError, MutualNetError) as exc:
        raise CheckpointError(f"{source} do not fit the {name} of this run ({_reason(exc)}); "
                              f"restore the run's own files or retrain") from None


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Weights (with calibrated BN statistics) as safetensors, ``meta`` as JSON metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(Path(path), save(tensors, metadata={"mutualnet": json.dumps(meta)}))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a safetensors file (a format that cannot hold code)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mutualnet", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"weights file {path} is corrupt ({_reason(exc)}); restore the "
                              f"file or retrain") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"weights file {path} has damaged metadata; restore the file or "
                              f"retrain")
    return tensors, meta
