"""Export one configuration as a static network: ONNX, TorchScript or safetensors."""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, MutualNetError
from .nn.extract import fold_batchnorm
from .space import Config
from .tasks import build_task_model
from .train.checkpoint import atomic_write_bytes

__all__ = ["FORMATS", "export_run", "fold_batchnorm", "load_exported", "verify_onnx"]

FORMATS = ("onnx", "torchscript", "safetensors")
log = logging.getLogger("mutualnet")
#: how far ONNX Runtime may differ from torch: absolute for outputs within ±1, relative to the
#: largest magnitude of an output beyond (a detector's boxes are in pixels)
ONNX_TOLERANCE = 1e-4


def _flat_outputs(output) -> list[torch.Tensor]:
    """A network's output as the flat list of tensors ONNX sees (dense heads return nested
    tuples and lists, one entry per pyramid level)."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in _flat_outputs(item)]


def verify_onnx(model: Path | bytes, module: nn.Module, example: torch.Tensor) -> float:
    """Max abs difference between onnxruntime running ``model`` (a file or its bytes) and torch
    on ``example`` over every output; raises past :data:`ONNX_TOLERANCE` (scaled by an
    output's largest magnitude where that is beyond 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = [torch.from_numpy(a) for a in session.run(None, {name: example.cpu().numpy()})]
    with torch.no_grad():
        want = [t.cpu() for t in _flat_outputs(module(example))]
    return onnx_difference(got, want)


def onnx_difference(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Max abs difference of ONNX Runtime's outputs ``got`` from torch's ``want``; raises when
    an output differs by more than :data:`ONNX_TOLERANCE` × max(1, its largest magnitude)."""
    if len(got) != len(want):
        raise MutualNetError(f"ONNX export has {len(got)} outputs where torch has {len(want)}")
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            raise MutualNetError(f"ONNX export's output {i} has shape {tuple(g.shape)} where "
                                 f"torch's has {tuple(w.shape)}")
        diff = float((g - w).abs().max()) if w.numel() else 0.0
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        if not diff <= ONNX_TOLERANCE * scale:
            bound = (f"{ONNX_TOLERANCE * scale:.2e}, {ONNX_TOLERANCE} of its largest magnitude "
                     f"{scale:.3g}" if scale > 1 else f"{ONNX_TOLERANCE}")
            raise MutualNetError(f"ONNX export differs from torch by {diff:.2e} in output {i} "
                                 f"(> {bound})")
        worst = max(worst, diff)
    return worst


def export_run(run, config: Config, fmt: str, out: str | Path, fold_bn: bool = True) -> dict:
    """Write the static sub-network of ``config`` (with its calibrated statistics) to ``out``."""
    from .calibrate import calibrate_run
    from .train.checkpoint import run_lock

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    config = run.check_config(config)
    out = Path(out)
    if run.owns(out):
        raise ConfigError(f"cannot write {out}: {out.name} is a file of the run {run.path}; "
                          f"choose another -o")
    _check_writable(out, fmt)
    run.check_trusted()
    _warn_untrained(run, config)
    if not run.is_calibrated(config):
        with run_lock(run.path, "export"):  # refused before it says it calibrates
            log.info("calibrating %s (its statistics are saved with the run)", config.name)
            calibrate_run(run, [config], progress=False)
    model = run.model
    static = model.subnet(config.width, config.resolution, config.frames).cpu().eval()
    frames = (config.frames,) if config.frames else ()
    # the same example every time: whether an export passes its check is not left to chance
    example = torch.randn(2, model.in_chans, *frames, config.resolution, config.resolution,
                          generator=torch.Generator().manual_seed(0))
    info: dict[str, Any] = {
        "format": fmt, "file": str(out), "width": config.width, "resolution": config.resolution,
        "model": run.meta["model"], "num_classes": run.meta["num_classes"],
    }
    if config.frames is not None:
        info["frames"] = config.frames
    # what the network takes: images normalised with the run's statistics, at this size
    info.update(input_shape=["batch", model.in_chans, *frames, config.resolution,
                             config.resolution],
                mean=run.meta["mean"], std=run.meta["std"],
                preprocess=preprocessing(run.config, config, model.in_chans),
                bn_folded=fold_bn and fmt != "safetensors")
    described = {**info, "task": run.meta.get("task", "classification"),
                 "class_names": run.meta.get("class_names"),
                 **({"category_ids": run.meta["category_ids"]} if "category_ids" in run.meta
                    else {}),
                 "input": "float images, (x / 255 - mean) / std per channel, resized to "
                          "resolution x resolution (the steps: preprocess)"}
    described.pop("file")
    if fmt == "safetensors":
        from safetensors.torch import save

        kept = ("model", "options", "num_classes", "in_chans", "mean", "std", "class_names",
                "category_ids", "task", "head")
        meta = {**{k: run.meta[k] for k in kept if k in run.meta},
                "width": config.width, "resolution": config.resolution, "frames": config.frames,
                "preprocess": info["preprocess"]}
        tensors = {k: v.contiguous() for k, v in static.state_dict().items()}
        atomic_write_bytes(out, save(tensors, metadata={"mutualnet_static": json.dumps(meta)}))
        return info
    if fold_bn:
        static = fold_batchnorm(static)
    if fmt == "torchscript":
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(static), buffer,
                       _extra_files={"mutualnet.json": json.dumps(described)})
        atomic_write_bytes(out, buffer.getvalue())
        return info
    # written in memory: nothing is left beside -o however the export ends
    buffer = io.BytesIO()
    # dense heads name their outputs (cls_0, box_0, ctr_0, ...); classifiers: logits
    names = list(getattr(getattr(static, "head", None), "output_names", ["logits"]))
    torch.onnx.export(static, (example,), buffer, input_names=["images"], output_names=names,
                      dynamic_axes={n: {0: "batch"} for n in ["images", *names]}, dynamo=False,
                      do_constant_folding=fold_bn)  # the exporter's folding merges BN too
    exported = buffer.getvalue()
    info["max_abs_diff_vs_torch"] = verify_onnx(exported, static, example)
    atomic_write_bytes(out, _with_metadata(exported, {"mutualnet": json.dumps(described)}))
    return info


def _with_metadata(model: bytes, metadata: dict[str, str]) -> bytes:
    """The ONNX ``model`` with ``metadata`` added to its metadata_props."""
    import onnx

    proto = onnx.load_from_string(model)
    for key, value in metadata.items():
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            key: value})
    return proto.SerializeToString()


def preprocessing(cfg, config: Config, channels: int) -> list[str]:
    """How evaluation turned a stored image into the network's input at ``config``, step by
    step, for whoever feeds an export: the accuracy of the query table holds for input made
    this way (another resize filter costs tenths of a point at small resolutions)."""
    top = max(cfg.space.resolutions)
    steps = []
    data = cfg.data
    shorter = max(top, int(round(top / data.eval_crop_ratio)))
    if data.format == "image_folder" and cfg.task == "classification":
        mode = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels} channels")
        steps += [f"decode as {mode}",
                  f"resize the shorter side to {shorter} px (Pillow bilinear, antialiased)",
                  f"centre-crop {top} x {top}"]
    elif data.format == "coco":
        steps += ["decode as RGB",
                  f"scale = {top} / max(height, width); resize to round(height x scale) x "
                  f"round(width x scale) (bilinear, align_corners=False, antialias=True; "
                  f"torch.nn.functional.interpolate)",
                  f"place it at the top-left of a {top} x {top} canvas of the mean colour "
                  f"(zeros after normalisation)"]
    elif data.format == "video_folder":
        most = max(cfg.space.frames)
        span = (most - 1) * data.frame_stride + 1
        where = ("centred: first frame (n - span) // 2" if data.eval_clips == 1 else
                 f"{data.eval_clips} clips, first frames round(i x (n - span) / "
                 f"{data.eval_clips - 1}) for i = 0..{data.eval_clips - 1}, their softmax "
                 f"averaged (the table's accuracy; one clip scores lower)")
        steps += ["decode the video's n frames as RGB",
                  f"take a clip of {most} frames {data.frame_stride} apart (span {span}), "
                  f"{where}; past the last frame, repeat it",
                  f"resize each frame's shorter side to {shorter} px (bilinear, "
                  f"align_corners=False, antialias=True; torch.nn.functional.interpolate)",
                  f"centre-crop {top} x {top}"]
    else:
        steps.append(f"the data pipeline's {top} x {top} px images (data.format "
                     f"{cfg.data.format})")
    if config.frames is not None and cfg.space.frames and config.frames != max(cfg.space.frames):
        most = max(cfg.space.frames)
        steps.append(f"take {config.frames} of the clip's {most} frames, evenly spaced (indices "
                     f"round(linspace(0, {most - 1}, {config.frames})))")
    if config.resolution != top:
        how = ("bilinear, align_corners=False, antialias=True" if cfg.space.antialias else
               "bilinear, align_corners=True, no antialiasing")
        steps.append(f"resize {top} x {top} to {config.resolution} x {config.resolution}: "
                     f"{how} (torch.nn.functional.interpolate)")
    steps.append("x / 255, then (x - mean) / std per channel")
    return steps


def _warn_untrained(run, config: Config) -> None:
    """Warn when a configuration lies outside the resolutions or frame counts trained."""
    space = run.config.space
    trained = tuple(space.resolutions)
    if config.resolution not in trained:
        log.warning("resolution %d is not among the resolutions the run was trained at (%s); "
                    "`mutualnet evaluate %s --widths %g --resolutions %d` measures how it "
                    "does", config.resolution, ", ".join(map(str, trained)), run.path,
                    config.width, config.resolution)
    if config.frames is not None and space.frames and config.frames not in space.frames:
        log.warning("%d frames is not among the frame counts the run was trained at (%s)",
                    config.frames, ", ".join(map(str, space.frames)))


def _check_writable(out: Path, fmt: str) -> None:
    """Refuse an output path that cannot become a file before any work is done."""
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory; give a file name, e.g. "
                          f"{out / ('model.' + fmt)}")
    if not out.parent.exists():
        raise ConfigError(f"cannot write {out}: directory {out.parent} does not exist; create "
                          f"it or choose another -o")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: {out.parent} is a file, not a directory; "
                          f"choose another -o")
    try:
        with tempfile.TemporaryFile(dir=out.parent):  # unnamed where the system allows
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}; choose a writable "
                          f"-o") from None


def load_exported(path: str | Path) -> nn.Module:
    """Rebuild a static network from a safetensors export (no code is loaded).

    The module's ``export_meta`` holds what the export recorded: model, width, resolution
    (frames), mean, std, class names and the preprocessing steps."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder: give the .safetensors file that `mutualnet "
                          f"export --format safetensors` wrote (a run directory loads with "
                          f"AdaptiveModel.load)")
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
            if "mutualnet_static" not in stored:
                raise ConfigError(f"{path} is a safetensors file but not a mutualnet export "
                                  f"(a run's own weights load with AdaptiveModel.load on its "
                                  f"directory)")
            meta = json.loads(stored["mutualnet_static"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except ConfigError:
        raise
    except Exception:
        raise ConfigError(f"{path} cannot be read as a safetensors export: it is damaged or "
                          f"of another format (TorchScript exports load with torch.jit.load, "
                          f"ONNX ones with onnxruntime)") from None
    try:
        width = meta["width"]
        model = build_task_model(meta.get("task", "classification"), meta["model"],
                                 num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                                 width_range=(width, width), options=meta.get("options", {}),
                                 head=meta.get("head"))
        static = model.subnet(width).eval()
        static.load_state_dict(tensors)
        static.export_meta = meta
    except (KeyError, TypeError, ValueError, RuntimeError, MutualNetError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ConfigError(f"{path} is a damaged mutualnet export ({type(exc).__name__}"
                          f"{': ' + reason if reason else ''}); export it again") from None
    return static
