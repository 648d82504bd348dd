"""The ``mutualnet`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, MutualNetError

log = logging.getLogger("mutualnet")


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MutualNetError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parse_list(text: str, kind: type, what: str, unique: bool = True) -> list:
    """Comma-separated values in their order (each once when ``unique``)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return list(dict.fromkeys(values)) if unique else values


def _parse_floats(text: str) -> list[float]:
    return _parse_list(text, float, "finite numbers")


def _parse_ints(text: str) -> list[int]:
    return _parse_list(text, int, "integers")


def _parse_pair(text: str) -> list[float]:
    return _parse_list(text, float, "finite numbers", unique=False)


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type for a positive ``kind`` (int or float)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _data_seed(text: str) -> int:
    """A dataset writer's seed: a whole number of magnitude below 2**62 (each split draws
    from a seed twice as large, which torch takes as a 64-bit value)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not -2**62 <= value < 2**62:
        raise argparse.ArgumentTypeError(f"must be between -2**62 and 2**62 - 1, got {text}")
    return value


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import create_model, list_models

    for name in list_models():
        with torch.device("meta"):  # only the kind of input is read
            temporal = create_model(name).temporal
        print(f"{name:20s} {'clips  [N, C, T, H, W]' if temporal else 'images [N, C, H, W]'}")
    print("\nDetection and segmentation put a head on an image model: `task: detection` or "
          "`task: segmentation` in a recipe, the backbone in model.name (configs/detection, "
          "configs/segmentation).")
    return 0


def _cmd_macs(args: argparse.Namespace) -> int:
    import torch

    from .config import MIN_RESOLUTION
    from .macs import count_macs
    from .models import create_model

    for flag, values in (("--widths", args.widths), ("--frames", args.frames or [1]),
                         ("--num-classes", [args.num_classes]), ("--in-chans", [args.in_chans])):
        if min(values) <= 0:
            raise ConfigError(f"{flag} must be positive, got {min(values):g}")
    if min(args.resolutions) < MIN_RESOLUTION:
        raise ConfigError(f"--resolutions must be at least {MIN_RESOLUTION} pixels, got "
                          f"{min(args.resolutions)}")
    with torch.device("meta"):  # shapes only: counting a large 3D network costs no compute
        model = create_model(
            args.model, num_classes=args.num_classes, in_chans=args.in_chans,
            width_range=(min(args.widths), max(args.widths)),
            **({"small_input": True} if args.small_input else {}),
        )
    rows = []
    for width in args.widths:
        for resolution in args.resolutions:
            for frames in args.frames or [None]:
                macs, params = count_macs(model, resolution, width=width, frames=frames)
                row = {"model": args.model, "width": width, "resolution": resolution}
                if frames is not None:
                    row["frames"] = frames
                rows.append({**row, "mmacs": round(macs / 1e6, 3),
                             "params_m": round(params / 1e6, 4)})
    for row in rows:
        print(json.dumps(row))
    return 0


def _cmd_make_video_data(args: argparse.Namespace) -> int:
    from .data.motion import write_motion_videos

    counts = write_motion_videos(args.out, args.train_per_class, args.val_per_class, args.seed)
    print(json.dumps({"out": args.out, **counts}))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.set or [])
    for flag, key in (("epochs", "train.epochs"),
                      ("max_steps", "train.max_steps"), ("batch_size", "train.batch_size"),
                      ("seed", "train.seed"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    if args.data is not None:  # a path as given, never read as YAML ("my data: v2")
        cfg.data.root = args.data
    run_dir = args.out or _default_run_dir(args.config)
    summary = train(cfg, run_dir, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # one summary for a torchrun job
        print(json.dumps(summary))
    return 0


def _grid(run, args: argparse.Namespace):
    """The configurations a command works on: the run's grid, or the product of the lists."""
    from .space import Config

    space = run.space
    if args.width_step < 1e-4:
        raise ConfigError(f"--width-step must be at least 0.0001 (widths are named to 4 "
                          f"decimals), got {args.width_step:g}")
    grid = space.grid(args.width_step)
    widths = args.widths or sorted({c.width for c in grid})
    resolutions = args.resolutions or sorted(space.resolutions)
    frames = getattr(args, "frames", None) or (list(space.frames) if space.frames else [None])
    configs = [run.check_config(Config(w, r, t)) for w in widths for r in resolutions
               for t in frames]
    return list(dict.fromkeys(configs))  # widths that round to the same one count once


def _open_run(args: argparse.Namespace):
    from .run import load_run
    from .train.distributed import resolve_device

    run = load_run(args.run, resolve_device(args.device))
    if getattr(args, "data", None):
        run.use_data(args.data)
    return run


def _held(args: argparse.Namespace):
    """The run directory held for a command that writes into it, from before its weights are
    read (a training run finishing meanwhile would otherwise be rolled back)."""
    from .train.checkpoint import CONFIG_FILE, run_lock

    if not Path(args.run, CONFIG_FILE).is_file():
        return contextlib.nullcontext()  # not a run: load_run says what is wrong
    return run_lock(args.run, args.command)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_run

    with _held(args):
        run = _open_run(args)
        configs = calibrate_run(run, _grid(run, args), batches=args.batches,
                                batch_size=args.batch_size, progress=True)
    print(json.dumps({"run": str(run.path), "calibrated": len(configs),
                      **run.meta["calibration"]}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    with _held(args):
        run = _open_run(args)
        rows = evaluate_run(run, _grid(run, args), latency=args.latency,
                            batch_size=args.batch_size, latency_batch=args.latency_batch,
                            calibration_batches=args.batches)
    print((run.path / "query_table.md").read_text(), end="")
    print(json.dumps({"run": str(run.path), "configurations": len(rows),
                      "grid": str(run.path / "grid.json")}))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .select import read_grid, select

    row = select(read_grid(args.run), run=args.run, max_mmacs=args.max_mmacs,
                 max_latency_ms=args.max_latency_ms)
    print(json.dumps(row))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run
    from .space import Config

    run = _open_run(args)
    info = export_run(run, Config(args.width, args.resolution, args.frames), args.format,
                      args.output, fold_bn=not args.no_fold_bn)
    print(json.dumps(info))
    return 0


def _cmd_convert_official(args: argparse.Namespace) -> int:
    from .convert import convert_official

    width_range = None
    if args.width_range is not None:
        if len(args.width_range) != 2:
            raise MutualNetError("--width-range takes two numbers, e.g. 0.25,1.6")
        width_range = (args.width_range[0], args.width_range[1])
    print(json.dumps(convert_official(args.checkpoint, args.arch, args.output, width_range)))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    out = args.out or f"runs/reproduce-{args.preset}"
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else None
    report = reproduce(args.preset, out, data=args.data, seeds=args.seeds, epochs=args.epochs,
                       device=args.device, methods=methods, overrides=args.overrides)
    print(Path(out, "report.md").read_text(), end="")
    print(json.dumps({"report": f"{out}/report.md", "seconds": report["wall_seconds"]}))
    return 0


def _cmd_make_scenes(args: argparse.Namespace) -> int:
    from .data.scenes import write_scenes

    counts = {k: getattr(args, k) for k in ("train", "val") if getattr(args, k) is not None}
    print(json.dumps(write_scenes(args.out, size=args.size, seed=args.seed, root=args.data,
                                  **counts)))
    return 0


def _default_run_dir(config: str) -> str:
    return str(Path("runs") / Path(config).stem)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mutualnet", description="One adaptive ConvNet for many compute budgets.")
    parser.add_argument("--version", action="version", version=f"mutualnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parser.commands = sub.choices  # name -> its parser

    p = sub.add_parser("train", help="train a recipe into a run directory")
    p.add_argument("config", help="YAML recipe, e.g. configs/fashion_mnist.yaml")
    p.add_argument("--data", help="dataset location (overrides data.root)")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many steps in all")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="override config keys, e.g. --set optim.lr=0.05 train.epochs=3 "
                   "(repeatable)")
    p.set_defaults(func=_cmd_train)

    def grid_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run directory")
        p.add_argument("--widths", type=_parse_floats, help="e.g. 0.35,0.5,1.0 (default: the "
                       "trained range every --width-step)")
        p.add_argument("--resolutions", type=_parse_ints, help="default: the trained list")
        p.add_argument("--frames", type=_parse_ints, help="frame counts (video models)")
        p.add_argument("--width-step", type=positive(float), default=0.05,
                       help="spacing of the default widths: the trained range in equal steps "
                       "as near this as it divides into, both ends kept (default 0.05)")
        p.add_argument("--batches", type=positive(int), default=16,
                       help="training batches for BN calibration")
        p.add_argument("--device", default="auto")
        p.add_argument("--data", help="dataset location, if it moved since training")

    p = sub.add_parser("calibrate", help="recompute BN statistics for each configuration")
    grid_options(p)
    p.add_argument("--batch-size", type=positive(int))
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("evaluate", help="evaluate the grid; write grid.json, grid.csv, "
                       "query_table.md, pareto.png")
    grid_options(p)
    p.add_argument("--latency", action="store_true", help="measure latency on this device")
    p.add_argument("--latency-batch", type=positive(int), default=32)
    p.add_argument("--batch-size", type=positive(int), default=256)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("select", help="the most accurate configuration within a budget (JSON)")
    p.add_argument("run", help="run directory")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-mmacs", type=float)
    budget.add_argument("--max-latency-ms", type=float)
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("export", help="write one configuration as a static network")
    p.add_argument("run", help="run directory")
    p.add_argument("--width", type=float, required=True)
    p.add_argument("--resolution", type=int, required=True)
    p.add_argument("--frames", type=int)
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--no-fold-bn", action="store_true", help="keep BN layers separate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", help="dataset location, if it moved since training")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert-official",
                       help="turn an official MutualNet checkpoint into a run directory")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True, choices=["mobilenet_v1", "mobilenet_v2", "resnet50"])
    p.add_argument("--width-range", type=_parse_pair,
                   help="LO,HI the checkpoint was trained on (default: the official recipe's)")
    p.add_argument("-o", "--output", required=True, help="run directory to create")
    p.set_defaults(func=_cmd_convert_official)

    p = sub.add_parser("reproduce", help="train every mode over several seeds and report the "
                       "paper's claims on this data")
    p.add_argument("--preset", required=True,
                   help="tiny, fashion-mnist, cifar10 or imagenet")
    p.add_argument("--out", help="directory for the runs and the report "
                   "(default: runs/reproduce-PRESET); finished runs there are reused")
    p.add_argument("--data", help="dataset location (cifar10, imagenet)")
    p.add_argument("--seeds", type=int, help="how many seeds (0, 1, ...) each method runs "
                   "(default: the preset's)")
    p.add_argument("--epochs", type=int, help="epochs of every run (default: the preset's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the recipe's)")
    p.add_argument("--methods", help="comma-separated subset of mutualnet,usnet,single,"
                   "independent (default: all)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="change the shared recipe of every run, e.g. "
                   "space.smallest_at_lowest=true (repeatable)")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("make-scenes", help="write the synthetic detection/segmentation scenes "
                       "as a COCO-style dataset (annotations/*.json, train/, val/)")
    p.add_argument("out", help="folder to create (must be new or empty)")
    p.add_argument("--train", type=positive(int), help="training scenes (default 3000)")
    p.add_argument("--val", type=positive(int), help="validation scenes (default 500)")
    p.add_argument("--size", type=positive(int), default=96, help="canvas side in pixels")
    p.add_argument("--seed", type=_data_seed, default=0)
    p.add_argument("--data", help="folder of Fashion-MNIST IDX files (default: the system's)")
    p.set_defaults(func=_cmd_make_scenes)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("macs", help="MACs and parameters of a model's configurations (JSON lines)")
    p.add_argument("model")
    p.add_argument("--widths", type=_parse_floats, default=[1.0], help="e.g. 0.25,0.5,1.0")
    p.add_argument("--resolutions", type=_parse_ints, default=[224], help="e.g. 128,160,224")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--small-input", action="store_true", help="the 28-32 px variant of the model")
    p.add_argument("--frames", type=_parse_ints, help="frame counts of a video model, e.g. 16")
    p.set_defaults(func=_cmd_macs)

    p = sub.add_parser("make-video-data", help="write the synthetic motion dataset as video "
                       "files in class folders (data.format video_folder reads them)")
    p.add_argument("out", help="folder to create (must be new or empty)")
    p.add_argument("--train-per-class", type=positive(int), default=50,
                   help="training videos per class (default 50)")
    p.add_argument("--val-per-class", type=positive(int), default=20,
                   help="validation videos per class (default 20)")
    p.add_argument("--seed", type=_data_seed, default=0)
    p.set_defaults(func=_cmd_make_video_data)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message as one line (errors raised in loader workers carry a traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else lines[0]


#: what to lower when a command runs out of memory: the batch or resolution, but where a
#: command has neither
_LOWER = "lower the batch size or the resolution"
_MEMORY_ADVICE = {"make-scenes": "lower --size, --train or --val",
                  "make-video-data": "lower --train-per-class or --val-per-class",
                  "macs": "lower --resolutions or the widths"}

#: commands that train or run networks: freed memory is kept for reuse in them
_COMPUTING = {"train", "calibrate", "evaluate", "reproduce", "export"}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    given = list(sys.argv[1:] if argv is None else argv)

    def command() -> int:
        parser = build_parser()
        _check_set_items(given)
        args, extra = parser.parse_known_args(given)
        if extra:  # named by the command they were given to
            first = given.index(args.command)
            before = [a for a in extra if a in given[:first]]
            (parser if before else parser.commands[args.command]).error(
                f"unrecognized arguments: {' '.join(before or extra)}")
        if args.command in _COMPUTING:
            from .train.allocator import retain_freed_memory

            retain_freed_memory()
        return args.func(args)

    name = next((word for word in given if not word.startswith("-")), None)  # the command
    return guarded(command, _MEMORY_ADVICE.get(name, _LOWER))


def _check_set_items(given: list[str]) -> None:
    """``--set`` takes every word after it up to the next option: a word without ``=`` there
    is a recipe or run placed after it, which argparse would report as missing."""
    taking = False
    for word in given:
        if word.startswith("-"):
            taking = word == "--set"
        elif taking and "=" not in word:
            raise MutualNetError(f"--set takes KEY=VALUE words, got {word!r}; put the recipe "
                                 f"(or other arguments) before --set")


def _allocation(exc: BaseException) -> str | None:
    """What a failed allocation asked for ("memory" when unknown), or None when ``exc`` is not
    one (torch raises RuntimeError, or its OutOfMemoryError subclass on GPUs)."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or "can't allocate memory" in text
            or "out of memory" in text.lower()):
        return None
    asked = re.search(r"allocate (\d+) bytes", text) or re.search(
        r"allocate (\d+(?:\.\d+)? [KMGT]iB)", text)
    if asked is None:
        return "memory"
    size = asked.group(1)
    return f"{int(size) / 2 ** 30:.1f} GiB" if size.isdigit() else size


def _peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective operation of a multi-process run failing because
    another process went away (gloo and NCCL word it so)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world < 2 or not isinstance(exc, RuntimeError):
        return False
    import torch.distributed as dist

    lost = getattr(dist, "DistNetworkError", ())
    text = str(exc)
    return (bool(lost) and isinstance(exc, lost)) or any(
        s in text for s in ("closed by peer", "reset by peer", "remote worker crashing",
                            "Broken pipe", "NCCL communicator was aborted"))


class _Terminated(BaseException):
    """SIGTERM outside a training loop (which saves a checkpoint on it): raised so that what
    the command holds (its lock, an unstarted run's files) is released as on Ctrl-C."""


@contextlib.contextmanager
def _terminate_by_exception():
    pid = os.getpid()

    def handler(signum, frame):  # noqa: ANN001
        if os.getpid() != pid:  # a forked loader worker: end as the signal would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise _Terminated

    previous = signal.getsignal(signal.SIGTERM)
    installed = False
    if previous == signal.SIG_DFL:  # not someone else's handler, which is theirs to keep
        with contextlib.suppress(ValueError):  # not the main thread: nothing to install
            signal.signal(signal.SIGTERM, handler)
            installed = True
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


def guarded(command: Callable[[], int | None], memory_advice: str = _LOWER) -> int:
    """Run ``command`` as a program: a user's mistake (:class:`MutualNetError`) is one line on
    stderr and exit code 2, as is running out of memory (a batch or resolution too large for
    the machine; ``memory_advice`` says what to lower), or a file
    the system refused; an interrupted training run 128 + its signal, Ctrl-C 130, SIGTERM
    elsewhere 143."""
    try:
        with _terminate_by_exception():
            return command() or 0
    except _Terminated:
        print("error: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (MemoryError, RuntimeError) as exc:
        if _peer_lost(exc):  # the process that failed printed why
            rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
            print(f"error: process {rank} of {world}: another process of this run stopped "
                  f"(its error is printed above)", file=sys.stderr)
            return 2
        wanted = _allocation(exc)
        if wanted is None:
            raise
        print(f"error: out of memory: could not allocate {wanted}; {memory_advice}",
              file=sys.stderr)
        return 2
    except MutualNetError as exc:
        signum = getattr(exc, "signum", None)
        if signum is not None:  # an interrupted training run: saved, not a mistake
            print(f"stopped: {_one_line(exc)}", file=sys.stderr)
            return 128 + signum
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file the system refused that no check above foresaw
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
