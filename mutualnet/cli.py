"""The ``mutualnet`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import MutualNetError

log = logging.getLogger("mutualnet")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MutualNetError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parse_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    for name in list_models():
        print(name)
    return 0


def _cmd_macs(args: argparse.Namespace) -> int:
    from .macs import count_macs
    from .models import create_model

    model = create_model(
        args.model, num_classes=args.num_classes, in_chans=args.in_chans,
        width_range=(min(args.widths), max(args.widths)),
        **({"small_input": True} if args.small_input else {}),
    )
    rows = []
    for width in args.widths:
        for resolution in args.resolutions:
            macs, params = count_macs(model, resolution, width=width)
            rows.append({"model": args.model, "width": width, "resolution": resolution,
                         "mmacs": round(macs / 1e6, 3), "params_m": round(params / 1e6, 4)})
    for row in rows:
        print(json.dumps(row))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.set or [])
    for flag, key in (("data", "data.root"), ("epochs", "train.epochs"),
                      ("max_steps", "train.max_steps"), ("batch_size", "train.batch_size"),
                      ("seed", "train.seed"), ("device", "train.device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(args.config, overrides)
    run_dir = args.out or _default_run_dir(args.config)
    summary = train(cfg, run_dir, resume=args.resume)
    print(json.dumps(summary))
    return 0


def _default_run_dir(config: str) -> str:
    from pathlib import Path

    return str(Path("runs") / Path(config).stem)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mutualnet", description="One adaptive ConvNet for many compute budgets.")
    parser.add_argument("--version", action="version", version=f"mutualnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.05 (repeatable)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("macs", help="MACs and parameters of a model's configurations (JSON lines)")
    p.add_argument("model")
    p.add_argument("--widths", type=_parse_floats, default=[1.0], help="e.g. 0.25,0.5,1.0")
    p.add_argument("--resolutions", type=_parse_ints, default=[224], help="e.g. 128,160,224")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--small-input", action="store_true", help="the 28-32 px variant of the model")
    p.set_defaults(func=_cmd_macs)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message as one line (errors raised in loader workers carry a traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 else lines[0]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except MutualNetError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
