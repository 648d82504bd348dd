"""The one training engine: every mode and task runs through ``train``.

Per step: the sandwich of configurations (``Space.sandwich``); the full configuration learns
from the labels, the others from its detached output; gradients of all passes are summed
and one optimizer step is taken. Everything that decides the trajectory (data order,
augmentation, sampled configurations, RNG, optimizer) is restored by ``resume``, so an
interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..calibrate import calibrate, calibration_batches
from ..config import RunConfig, absolute_root, config_from_dict, config_to_dict
from ..data.base import Loader, collate_fn_of, evaluation_loader, to_device
from ..errors import CheckpointError, ConfigError, DataError, MutualNetError
from ..evaluate import evaluate
from ..nn.layers import _SlimBatchNormNd
from ..nn.model import SlimmableModel
from ..space import Space, channels_last, to_config
from ..tasks import build_task, build_task_model
from .checkpoint import (CHECKPOINT, CONFIG_FILE, WEIGHTS, config_bytes, load_model_state,
                         load_weights, resume_checkpoint, run_lock, save_checkpoint,
                         save_weights, write_config)
from .distributed import Distributed, resolve_device
from .log import LOG, RunLog
from .optim import build_optimizer, lr_at
from .order import EpochOrder, SeededItems

__all__ = ["train", "build_space", "build_model", "run_metadata", "TrainingInterrupted",
           "NonFiniteLoss", "RESUMABLE_KEYS"]

log = logging.getLogger("mutualnet")

CALIBRATION_BATCHES = 8

# Keys that may differ between a run and its resumption: they do not change the trajectory.
RESUMABLE_KEYS = {
    "train.max_steps", "train.device", "train.progress", "train.log_every",
    "train.checkpoint_every", "train.validate", "data.num_workers", "data.root",
    "data.eval_clips",  # how validation scores a video only
}
# ...and keys a resumption may raise to train a run further (the cosine schedule stretched
# over the new length); the run's config then records the new value.
EXTENDING_KEYS = {"train.epochs"}


class TrainingInterrupted(MutualNetError):
    """SIGINT or SIGTERM: a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(MutualNetError):
    """A loss became NaN or infinite; the last checkpoint is left untouched."""


@dataclass
class _Stop:
    signal: int | None = None

    def interrupted(self, step: int) -> TrainingInterrupted:
        """What stops the run, its checkpoint at ``step`` saved."""
        return TrainingInterrupted(f"{signal.Signals(self.signal).name} at step "
                                   f"{step}; checkpoint saved, continue with --resume",
                                   self.signal)


def build_space(cfg: RunConfig) -> Space:
    """The configurations a mode trains.

    ``mutualnet``: the width × resolution (× frames) sandwich with in-place distillation.
    ``usnet``: the same sandwich over widths only, at the largest resolution (US-Nets).
    ``single``: the full network alone, trained normally on the labels.
    ``independent``: one configuration as its own static network (``space.width_range``
    ``[w, w]`` and one resolution), trained alone on the labels.
    """
    s = cfg.space
    res = tuple(s.resolutions)
    frames = tuple(s.frames) if s.frames else None
    top_frames = (max(frames),) if frames else None
    mode = cfg.train.mode
    if mode == "mutualnet":
        return Space(s.width_range, res, frames, s.num_random, s.smallest_at_lowest,
                     s.antialias)
    if mode == "usnet":
        return Space(s.width_range, (max(res),), top_frames, s.num_random,
                     antialias=s.antialias)
    hi = s.width_range[1]
    if mode == "independent" and (s.width_range[0] != hi or len(res) != 1 or
                                  (frames and len(frames) != 1)):
        raise ConfigError("train.mode=independent trains one configuration: set "
                          "space.width_range to [w, w] and space.resolutions to [r]")
    return Space((hi, hi), (max(res),), top_frames, 0, antialias=s.antialias)


def build_model(cfg: RunConfig, num_classes: int, in_chans: int) -> SlimmableModel:
    return build_task_model(cfg.task, cfg.model.name, num_classes=num_classes,
                            in_chans=in_chans, width_range=tuple(cfg.space.width_range),
                            options=cfg.model.options, head=cfg.model.head)


def load_backbone_weights(model: SlimmableModel, run_dir: str) -> None:
    """Initialise a dense model's backbone from a classification run (same backbone, options
    and width range); its classifier and calibrated statistics are left out."""
    from ..run import load_run

    source = load_run(run_dir)
    body = model.features.body
    state = {k: v for k, v in source.model.features.state_dict().items()
             if ".calibrated." not in k and k.split(".")[0] in body._modules}
    want = {k: v for k, v in body.state_dict().items() if ".calibrated." not in k}
    for key in sorted(set(want) | set(state)):
        if key not in state or key not in want or state[key].shape != want[key].shape:
            found = tuple(state[key].shape) if key in state else "nothing"
            needed = tuple(want[key].shape) if key in want else "nothing"
            raise ConfigError(f"model.backbone_weights {run_dir} does not fit this backbone "
                              f"(at features.{key} it holds {found}, the backbone needs "
                              f"{needed}); use a classification run of {model.backbone_name} "
                              f"with the same model.options and space.width_range")
    body.load_state_dict(state, strict=False)


def _prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, is_main: bool) -> None:
    """Create the run directory and record the resolved config; check it on resume."""
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not config_path.is_file() and (run_dir / CHECKPOINT).is_file():
            raise ConfigError(f"cannot resume: {config_path} is missing, the recipe the "
                              f"checkpoint beside it was trained with (resume checks against "
                              f"it); restore it, or copy there the recipe the run was started "
                              f"with (overrides included)")
        if not config_path.is_file():
            raise ConfigError(f"cannot resume: {run_dir} holds no run ({CONFIG_FILE} missing); "
                              f"train without --resume first")
        from ..run import read_run_config

        saved = config_to_dict(read_run_config(run_dir))
        differ = _differing_keys(saved, config_to_dict(cfg))
        refused = differ - RESUMABLE_KEYS - EXTENDING_KEYS
        if refused:
            now = config_to_dict(cfg)

            def change(key: str) -> str:  # the run's value, then this config's
                values = []
                for config in (saved, now):
                    for part in key.split("."):
                        config = config.get(part) if isinstance(config, dict) else None
                    values.append(config)
                return f"{key}: {values[0]!r} in the run, {values[1]!r} now"

            raise ConfigError(
                f"cannot resume {run_dir} with a different config "
                f"({'; '.join(map(change, sorted(refused)))}); resume with the run's own "
                f"{CONFIG_FILE} or start a new --out directory"
            )
        if cfg.train.epochs < saved["train"]["epochs"]:
            raise ConfigError(
                f"cannot lower train.epochs from {saved['train']['epochs']} to "
                f"{cfg.train.epochs} on resume: the learning-rate schedule of the steps trained "
                f"is laid out over {saved['train']['epochs']}; stop earlier with --max-steps")
        return
    from ..run import held_run_files

    held = held_run_files(run_dir)
    if CHECKPOINT in held:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it "
                          f"or choose another --out directory")
    if held:  # weights without a training state: a converted run, or checkpoints removed
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(held)}); choose another "
                          f"--out directory")
    if not is_main:
        return
    config = config_to_dict(cfg)
    strays = _strays(run_dir, config)
    if strays:  # the user's own files (maybe the very recipe), or another attempt's config
        raise ConfigError(f"{run_dir} holds {' and '.join(strays)} but no trained run; the new "
                          f"run would write over them: move them away or choose another --out "
                          f"directory")
    _write_config(run_dir, config)


def _strays(run_dir: Path, config: dict) -> list[str]:
    """The files a new run in ``run_dir`` would write over and lose something by: a config
    other than the one it writes, a log that is not a run's (that of an attempt killed before
    its first checkpoint is replaced)."""
    import json

    strays = []
    try:
        if (run_dir / CONFIG_FILE).read_bytes() != config_bytes(config):
            strays.append(CONFIG_FILE)
    except FileNotFoundError:
        pass
    except OSError:
        strays.append(CONFIG_FILE)
    try:
        with open(run_dir / LOG, "rb") as f:
            first = f.readline()
        if first and not isinstance(json.loads(first), dict):
            strays.append(LOG)
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        strays.append(LOG)
    return strays


def _present(run_dir: Path) -> frozenset[str]:
    """The run's file names (and its tensorboard folder) already in ``run_dir``."""
    from ..run import RUN_FILES

    return frozenset(name for name in (*RUN_FILES, "tensorboard") if (run_dir / name).exists())


def _remove_unstarted(run_dir: Path, created: bool, before: frozenset[str]) -> None:
    """Remove what a new run wrote when it ends without a checkpoint (it failed before its
    first step, or early in it): its config, log and lock, and its folder when it made it;
    nothing that was there before it started."""
    from ..run import RUN_FILES

    if (run_dir / CHECKPOINT).exists() or (run_dir / WEIGHTS).exists():
        return
    for name in RUN_FILES:
        if name not in before:
            with contextlib.suppress(OSError):
                (run_dir / name).unlink()
    if "tensorboard" not in before:
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    if created:
        with contextlib.suppress(OSError):
            run_dir.rmdir()  # only when nothing else is in it


def _write_config(run_dir: Path, config: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {run_dir}: {exc.strerror}; choose a "
                          f"writable --out") from None
    write_config(run_dir, config)


def _weights_are(path: Path, state: dict[str, torch.Tensor]) -> bool:
    """Whether the weights file holds exactly the tensors of ``state`` (and maybe calibrated
    statistics besides), written by training (not by a command that read the checkpoint of
    an unfinished run: that file is marked so)."""
    if not path.is_file():
        return False
    try:
        tensors, meta = load_weights(path)
    except MutualNetError:
        return False
    if isinstance(meta, dict) and "unfinished_step" in meta:
        return False
    return all(k in tensors and torch.equal(tensors[k], v.cpu()) for k, v in state.items())


def _differing_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k != "options":
            keys |= _differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.add(f"{prefix}{k}")
    return keys


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's option not to broadcast buffers at every forward (each rank's BN statistics
    are its own until a validation calibrates them): ``forward_sync_buffers`` where torch has
    it (``broadcast_buffers`` is deprecated there), ``broadcast_buffers`` before."""
    import inspect

    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}


def _loader(dataset: Dataset, sampler, batch_size: int, cfg: RunConfig, device) -> DataLoader:
    workers = cfg.data.num_workers
    return Loader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=False, collate_fn=collate_fn_of(dataset),
        persistent_workers=False, generator=torch.Generator(),
        multiprocessing_context="fork" if workers and os.name == "posix" else None,
    )


def run_metadata(cfg: RunConfig, info, space: Space) -> dict[str, Any]:
    extra = {"category_ids": info.category_ids} if info.category_ids is not None else {}
    return {
        "version": __version__,
        "model": cfg.model.name,
        "options": cfg.model.options,
        "num_classes": info.num_classes,
        "in_chans": info.in_chans,
        "class_names": list(info.class_names),
        "width_range": list(space.width_range),
        "resolutions": list(cfg.space.resolutions),
        "frames": list(cfg.space.frames) if cfg.space.frames else None,
        "task": cfg.task,
        "head": cfg.model.head,
        "mean": list(info.mean),
        "std": list(info.std),
        "mode": cfg.train.mode,
        **extra,
    }


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; returns a summary (steps, time, last validation)."""
    from ..data import build_datasets

    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"train takes a RunConfig (mutualnet.config.load_config or "
                          f"config_from_dict), not a {type(cfg).__name__}")
    # a config built in Python is checked as a recipe file is: types, then values
    cfg = config_from_dict(config_to_dict(cfg))
    run_dir = Path(run_dir)
    if cfg.data.root is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, root=absolute_root(cfg.data.root)))
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = Distributed.from_env(device.type)
    held = contextlib.ExitStack()
    created = not run_dir.exists()
    before = frozenset() if created else _present(run_dir)
    try:
        if dist.is_main and (run_dir.is_dir() or not resume):  # no other writer meanwhile
            held.enter_context(run_lock(run_dir, "train"))
        _prepare_run_dir(run_dir, cfg, resume, dist.is_main)
        if dist.is_main and not resume:  # the folder holds no run: a failure before the
            # first checkpoint leaves nothing of it
            held.callback(_remove_unstarted, run_dir, created, before)
        dist.barrier()
        tc = cfg.train
        if tc.batch_size % (dist.world_size * tc.accumulate):
            raise ConfigError(f"train.batch_size {tc.batch_size} must divide evenly over "
                              f"{dist.world_size} process(es) x {tc.accumulate} micro-batch(es)")
        space = build_space(cfg)
        train_ds, val_ds, info = build_datasets(cfg.data, max(cfg.space.resolutions), cfg.task,
                                                max(space.frames) if space.frames else None)
        steps_per_epoch = len(train_ds) // tc.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(f"train.batch_size {tc.batch_size} is larger than the training "
                              f"set ({len(train_ds)} images); lower --batch-size")
        total_steps = steps_per_epoch * tc.epochs
        stop_step = min(total_steps, tc.max_steps) if tc.max_steps else total_steps
        warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))

        torch.manual_seed(tc.seed)
        random.seed(tc.seed)
        model = build_model(cfg, info.num_classes, info.in_chans).to(device)
        clips = getattr(model, "temporal", False)
        if clips != bool(space.frames):
            raise ConfigError(f"model {cfg.model.name} takes {'clips' if clips else 'images'} "
                              f"but data.format {cfg.data.format} gives "
                              f"{'images' if clips else 'clips'}; choose a matching model")
        if tc.channels_last:
            model = model.to(memory_format=channels_last(5 if clips else 4))
        optimizer = build_optimizer(model, cfg.optim)
        if cfg.model.backbone_weights and not resume:
            load_backbone_weights(model, cfg.model.backbone_weights)
        task = build_task(cfg)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp)
        scaler = torch.amp.GradScaler(device.type) if tc.amp == "fp16" else None
        if tc.amp == "fp16" and device.type == "cpu":
            log.warning("train.amp fp16 runs on the CPU through slow half-precision kernels "
                        "(a MobileNetV2 step over 100x slower than fp32); set train.amp=none, "
                        "or bf16 on CPUs with native bfloat16")

        step, leg = 0, None
        if resume:
            state = resume_checkpoint(run_dir, map_location=device)
            info.check_classes(state.get("meta"))
            trained_on = state.get("train_items")
            if trained_on is not None and trained_on != len(train_ds):
                raise DataError(f"the training set ({info.source}) holds {len(train_ds)} items "
                                f"but {run_dir} was trained on {trained_on}: other data would "
                                f"change the length and order of every epoch; point --data at "
                                f"the run's data, or train a new run")
            processes = state.get("processes")
            if processes is not None and processes != dist.world_size:
                log.warning("%s was trained with %d process(es) and goes on with %d: each "
                            "process normalises its own share of the batch, so the weights "
                            "will not be exactly those of a run that kept %d", run_dir,
                            processes, dist.world_size, processes)
            load_model_state(model, state["model"], f"the weights in the checkpoint of {run_dir}")
            try:
                optimizer.load_state_dict(state["optimizer"])
                if scaler is not None and state.get("scaler"):
                    scaler.load_state_dict(state["scaler"])
                _set_rng_state(state["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"the training state in the checkpoint of {run_dir} is "
                                      f"damaged ({type(exc).__name__}); restore it or "
                                      f"retrain") from None
            step = int(state["step"])
            if step >= stop_step and _weights_are(run_dir / WEIGHTS, state["model"]):
                # what stops it: --max-steps, the epochs, or both at once
                limits = [name for name, at in (("--epochs", total_steps),
                                                 ("--max-steps", tc.max_steps)) if at == stop_step]
                more = f"raise {' and '.join(limits)} to go on"
                log.info("%s is trained to step %d already, and its weights are written: "
                         "nothing to train (%s)", run_dir, step, more)
                return {"run": str(run_dir), "steps": step, "seconds": 0.0,
                        "validation": None}
            if dist.is_main:  # the run's recipe is that of its latest leg, once it trains
                leg = config_to_dict(cfg)
            log.info("resumed %s at step %d", run_dir, step)
        resumed_at = step

        ddp_model: torch.nn.Module = model
        if dist.enabled:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                **_no_buffer_sync(),
            )

        run_log = RunLog(run_dir, enabled=dist.is_main, keep_until=step)
        meta = run_metadata(cfg, info, space)

        def drop_stale_statistics() -> None:
            # a validation's calibrated statistics describe the weights of its step only
            if calibrated_at != step:
                for bn in model.modules():
                    if isinstance(bn, _SlimBatchNormNd):
                        bn.calibrated = {}

        def checkpoint() -> None:
            nonlocal leg
            drop_stale_statistics()
            if leg is not None and step > resumed_at:  # a step trained under this leg's recipe
                _write_config(run_dir, leg)
                leg = None
            if dist.is_main:
                save_checkpoint(run_dir, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": _rng_state(), "step": step, "epoch": step // steps_per_epoch,
                    "train_items": len(train_ds), "processes": dist.world_size,
                    "meta": meta,
                })
            dist.barrier()

        def validate() -> None:
            # the task's metrics at an epoch's end; its calibrated statistics are kept
            nonlocal last_validation, calibrated_at
            last_validation = _validate(model, train_ds, val_ds, space, task, cfg, device,
                                        dist, step)
            calibrated_at = step
            if dist.is_main:
                epoch = (step - 1) // steps_per_epoch
                run_log.write({"kind": "val", "step": step, "epoch": epoch, **last_validation})
                log.info("epoch %d: %s", epoch + 1, _format_validation(last_validation))

        stop = _Stop()
        handlers = _install_signal_handlers(stop)
        local_batch = tc.batch_size // dist.world_size
        started, last_validation, calibrated_at = time.time(), None, None
        try:
            while step < stop_step:
                epoch, start_batch = divmod(step, steps_per_epoch)
                order = EpochOrder(len(train_ds), tc.batch_size, tc.seed, epoch, start_batch,
                                   dist.rank, dist.world_size)
                loader = _loader(SeededItems(train_ds), order, local_batch, cfg, device)
                bar = _progress(cfg, dist, epoch, steps_per_epoch, start_batch)
                tick, tick_step = time.time(), step
                model.train()
                for images, labels in loader:
                    lr = lr_at(step, total_steps, warmup_steps, cfg.optim)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    configs = space.sandwich(tc.seed, step)
                    images = images.to(device, non_blocking=True)
                    labels = to_device(labels, device)
                    if tc.channels_last:
                        images = images.contiguous(memory_format=channels_last(images.dim()))
                    losses = _train_step(model, ddp_model, images, labels, configs, task,
                                         optimizer, scaler, amp_dtype, device, dist, step,
                                         tc.skip_nonfinite, tc.accumulate, space.antialias)
                    step += 1
                    if bar is not None or step % tc.log_every == 0 or step == stop_step:
                        now = time.time()
                        speed = (step - tick_step) * tc.batch_size / max(now - tick, 1e-9)
                        if step % tc.log_every == 0 or step == stop_step:
                            run_log.write({"kind": "train", "step": step, "epoch": epoch,
                                           "lr": lr, "images_per_s": round(speed, 1), **losses})
                        if bar is not None:
                            bar.set_postfix(loss=f"{losses['loss_full']:.3f}", lr=f"{lr:.4f}",
                                            img_s=f"{speed:.0f}", refresh=False)
                            bar.update(1)
                    if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                        checkpoint()
                    if stop.signal is not None:
                        checkpoint()
                        raise stop.interrupted(step)
                    if step >= stop_step:
                        break
                if bar is not None:
                    bar.close()
                del loader
                epoch_done = step % steps_per_epoch == 0
                checkpoint()
                if epoch_done and tc.validate:
                    validate()
                if stop.signal is not None:  # signalled while validating: saved above
                    raise stop.interrupted(step)
            if resumed_at == step > 0 and step % steps_per_epoch == 0 and tc.validate:
                # stopped during its last validation (the checkpoint is saved before it)
                validate()
                if stop.signal is not None:
                    raise stop.interrupted(step)
            elapsed = time.time() - started
            if dist.is_main:  # a signal meanwhile waits: the run is trained, its weights due
                from ..select import remove_results

                # the table and calibrated statistics of earlier weights describe them
                removed = remove_results(run_dir)
                if removed:
                    log.warning("removed %s, the results of the earlier weights of %s; run "
                                "`mutualnet evaluate %s` again", ", ".join(removed), run_dir,
                                run_dir)
                drop_stale_statistics()
                save_weights(run_dir / WEIGHTS, model.state_dict(), {**meta, "step": step})
        finally:
            _restore_signal_handlers(handlers)
            run_log.close()
        summary = {"run": str(run_dir), "steps": step, "seconds": round(elapsed, 1),
                   "validation": last_validation}
        if dist.is_main:
            run_log.enabled = True
            run_log.write({"kind": "done", "step": step, "seconds": round(elapsed, 1)})
        dist.shutdown(wait=True)  # every process is done, the weights are written
        return summary
    finally:
        dist.shutdown()
        held.close()


def _train_step(model, ddp_model, images, labels, configs, task, optimizer, scaler, amp_dtype,
                device, dist, step, skip_nonfinite, accumulate,
                antialias: bool = False) -> dict[str, float]:
    """One optimizer step over the sandwich; gradients of all passes (and of ``accumulate``
    micro-batches) are summed and synchronised across processes once."""
    optimizer.zero_grad(set_to_none=True)
    images_chunks = images.chunk(accumulate)
    if isinstance(labels, torch.Tensor):
        label_chunks = labels.chunk(accumulate)
    else:  # a list of per-image targets, split like the images
        bounds = torch.tensor([0] + [len(x) for x in images_chunks]).cumsum(0).tolist()
        label_chunks = [labels[a:b] for a, b in zip(bounds, bounds[1:])]
    chunks = list(zip(images_chunks, label_chunks))
    losses = torch.zeros(len(configs), device=images.device)
    for c, (x, y) in enumerate(chunks):
        teacher = None
        for i, config in enumerate(configs):
            model.set_config(config)
            last = c == len(chunks) - 1 and i == len(configs) - 1
            sync = contextlib.nullcontext() if (last or not dist.enabled) else ddp_model.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    output = ddp_model(to_config(x, config, antialias))
                if i == 0:
                    loss = task.label_loss(output, y)
                    if len(configs) > 1:
                        teacher = task.teacher_signal(output)
                else:
                    loss = task.distill_loss(output, teacher, y, config)
                loss = loss / len(chunks)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            losses[i] += loss.detach()
    values = losses.float().cpu()
    model.set_config(configs[0])
    if not torch.isfinite(values).all():
        bad = configs[int((~torch.isfinite(values)).nonzero()[0])]
        message = (f"non-finite loss at step {step} in configuration width={bad.width:.4g} "
                   f"resolution={bad.resolution}; lower optim.lr or set train.amp=none")
        if not skip_nonfinite:
            raise NonFiniteLoss(message + "; the last checkpoint is intact")
        log.warning("%s; step skipped (train.skip_nonfinite)", message)
        optimizer.zero_grad(set_to_none=True)
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    out = {"loss_full": float(values[0])}
    if len(values) > 1:
        out["loss_distill"] = float(values[1:].mean())
    return out


def _validate(model, train_ds, val_ds, space: Space, task, cfg: RunConfig, device, dist,
              step: int) -> dict[str, float]:
    """The task's metrics of the full and smallest configurations after calibrating their BN
    statistics. The random number generators are left as they were (a loader draws its seed
    from them): training goes on the same whether it validates or not, and whether it was
    resumed from the checkpoint saved before the validation or not (dropout draws from them)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _calibrate_and_evaluate(model, train_ds, val_ds, space, task, cfg, device, dist)


def _calibrate_and_evaluate(model, train_ds, val_ds, space: Space, task, cfg: RunConfig, device,
                            dist) -> dict[str, float]:
    configs = [space.full] if space.full == space.smallest else [space.full, space.smallest]
    batch = min(cfg.train.batch_size, 256)
    calib = calibration_batches(train_ds, CALIBRATION_BATCHES, batch, cfg.train.seed,
                                cfg.data.num_workers, device, cfg.train.channels_last)
    networks: dict = {}
    calibrate(model, calib, configs, channels_last=cfg.train.channels_last, networks=networks,
              antialias=space.antialias)
    shard = list(range(dist.rank, len(val_ds), dist.world_size))
    val_loader = evaluation_loader(torch.utils.data.Subset(val_ds, shard), batch,
                                   cfg.data.num_workers, device)
    rows = evaluate(model, val_loader, configs, task, device, cfg.train.channels_last,
                    all_reduce=dist.all_reduce_sum if dist.enabled else None,
                    networks=networks, antialias=space.antialias)
    names = ["full", "smallest"]
    out: dict[str, float] = {}
    for name, row in zip(names, rows):
        for metric in task.metric_names:
            out[f"{metric}_{name}"] = round(row[metric], 3)
    return out


def _format_validation(v: dict[str, float]) -> str:
    return ", ".join(f"{k} {val:.2f}%" for k, val in v.items())


def _progress(cfg: RunConfig, dist: Distributed, epoch: int, total: int, initial: int):
    if not (cfg.train.progress and dist.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                unit="step", dynamic_ncols=True, leave=False, mininterval=0.5,
                disable=None)  # None: no bar when the output is not a terminal


def _install_signal_handlers(stop: _Stop) -> dict:
    previous = {}

    def handler(signum, frame):  # noqa: ANN001
        stop.signal = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)

