"""The query table: Pareto front of accuracy against cost, budget selection, table and plot."""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, MutualNetError, listed
from .space import Config, is_count
from .train.checkpoint import atomic_write_bytes, deferred_signals, no_run_directory

__all__ = ["RESULT_FILES", "metric_of", "pareto_front", "select", "read_grid", "remove_results",
           "remove_results_of", "update_results", "write_results"]

METRICS = ("top1", "map", "miou")
GRID_JSON, GRID_CSV, QUERY_TABLE, PARETO_PNG = ("grid.json", "grid.csv", "query_table.md",
                                                "pareto.png")
#: what an evaluation writes into a run directory
RESULT_FILES = (GRID_JSON, GRID_CSV, QUERY_TABLE, PARETO_PNG)


def metric_of(rows: list[dict[str, Any]]) -> str:
    """The task's main metric present in the grid rows."""
    for name in METRICS:
        if rows and name in rows[0]:
            return name
    raise MutualNetError("the grid has no accuracy column (top1, map or miou)")


def pareto_front(rows: list[dict[str, Any]], cost: str = "mmacs",
                 metric: str | None = None) -> list[dict[str, Any]]:
    """Rows that no cheaper row matches or beats, cheapest first."""
    metric = metric or metric_of(rows)
    front, best = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r[cost], -r[metric])):
        if row[metric] > best:
            front.append(row)
            best = row[metric]
    return front


def mmacs_text(mmacs: float) -> str:
    """Millions of MACs to the MAC (at least 3 decimals): a budget copied from a table that
    prints them so selects that row and no row above it."""
    text = f"{mmacs:.6f}".rstrip("0")
    return text + "0" * (3 - len(text.split(".")[1]))


def select(rows: list[dict[str, Any]], max_mmacs: float | None = None,
           max_latency_ms: float | None = None, run: str | Path = "RUN") -> dict[str, Any]:
    """The most accurate configuration within the budget (the cheaper one on a tie); ``run``
    is the run directory the rows come from, named in the messages."""
    if (max_mmacs is None) == (max_latency_ms is None):
        raise ConfigError("give exactly one budget: max_mmacs or max_latency_ms")
    cost, budget = ("mmacs", max_mmacs) if max_mmacs is not None else (
        "latency_ms", max_latency_ms)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not budget > 0:
        shown = f"{budget:g}" if isinstance(budget, float) else repr(budget)
        raise ConfigError(f"the budget must be a positive number, got {shown}")
    metric = metric_of(rows)
    if cost == "latency_ms":
        untimed = [r for r in rows if "latency_ms" not in r]
        if len(untimed) == len(rows):
            raise ConfigError(f"the grid has no latency; run `mutualnet evaluate {run} "
                              f"--latency` first")
        if untimed:  # configurations evaluated without --latency: chosen from the others
            logging.getLogger("mutualnet").warning(
                "%d of the %d configurations have no measured latency and are not considered "
                "(%s); evaluate them with --latency to include them", len(untimed), len(rows),
                listed([_label(r) for r in untimed], 5))
            rows = [r for r in rows if "latency_ms" in r]
    fits = [r for r in rows if r[cost] <= budget]
    if not fits:
        cheapest = min(r[cost] for r in rows)
        unit = "MMACs" if cost == "mmacs" else "ms"
        shown = mmacs_text if cost == "mmacs" else "{:g}".format
        raise ConfigError(f"no configuration fits {budget:g} {unit}; the cheapest needs "
                          f"{shown(cheapest)} {unit}")
    return max(fits, key=lambda r: (r[metric], -r[cost]))


def read_grid(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / GRID_JSON
    if not Path(run_dir).is_dir():
        raise ConfigError(no_run_directory(run_dir))
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no grid.json; run `mutualnet evaluate {run_dir}` first")
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is corrupt; run `mutualnet evaluate {run_dir}` again") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ConfigError(f"{path} holds no configurations; run `mutualnet evaluate` again")
    problem = _grid_problem(rows)
    if problem:
        raise ConfigError(f"{path} is damaged: {problem}; run `mutualnet evaluate {run_dir}` "
                          f"again")
    return rows


def _grid_problem(rows: list[dict[str, Any]]) -> str | None:
    """What makes grid rows unusable (a missing or non-numeric field), or None."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    metric = next((m for m in METRICS if m in rows[0]), None)
    for n, row in enumerate(rows, 1):
        if metric is None or metric not in row:
            return f"row {n} has no metric ({', '.join(METRICS)})"
        for key in ("width", "resolution", "mmacs", metric):
            if key not in row:
                return f"row {n} lacks {key}"
        for key, value in row.items():
            numeric = key in ("width", "resolution", "mmacs", "params_m", metric) \
                or key.startswith("latency_ms") or (key == "frames" and value is not None)
            if numeric and not number(value):
                return f"row {n} has {key} {value!r}, not a number"
        for key in ("resolution", "frames"):
            if row.get(key) is not None and not is_count(row[key]):
                return f"row {n} has {key} {row[key]!r}, not a whole number"
    return None


def _label(row: dict[str, Any]) -> str:
    """The configuration's name (:attr:`~mutualnet.space.Config.name`), e.g. 0.75-160."""
    return Config(row["width"], row["resolution"], row.get("frames") or None).name


def _query_table(rows: list[dict[str, Any]], device: str) -> str:
    """The query table; ``device`` is where latencies were measured for rows that do not
    say (grids written before rows recorded it)."""
    metric = metric_of(rows)
    device = ", ".join(dict.fromkeys(str(r.get("latency_device", device)) for r in rows
                                     if "latency_ms" in r)) or device
    has_frames = any(r.get("frames") for r in rows)
    notation = "width-resolution-frames" if has_frames else "width-resolution"
    lines = [
        "# Query table",
        "",
        f"The most accurate configuration ({notation}) for each budget: the Pareto front "
        f"of {len(rows)} evaluated configuration{'s' * (len(rows) != 1)} by {metric} against "
        f"MACs.",
        "",
    ]
    timed = [r for r in rows if "latency_ms" in r]
    has_latency = bool(timed)
    head = (["MMACs", "config"] + (["frames"] if has_frames else []) + [metric]
            + (["latency ms (batch 1)"] if has_latency else []))
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(pareto_front(rows, "mmacs", metric), key=lambda r: -r["mmacs"]):
        cells = ([mmacs_text(row["mmacs"]), _label(row)] + ([str(row["frames"])] if has_frames
                                                          else []) + [f"{row[metric]:.2f}"])
        if has_latency:
            cells.append(f"{row['latency_ms']:.3f}" if "latency_ms" in row else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if has_latency:
        lines += ["", f"## By measured latency ({device})", ""]
        untimed = len(rows) - len(timed)
        if untimed:
            lines += [f"The {untimed} configuration{'s' * (untimed != 1)} evaluated without "
                      f"`--latency` {'are' if untimed != 1 else 'is'} not in it.", ""]
        lines += [f"| latency ms (batch 1) | config | {metric} | MMACs |", "|---|---|---|---|"]
        for row in sorted(pareto_front(timed, "latency_ms", metric),
                          key=lambda r: -r["latency_ms"]):
            lines.append(f"| {row['latency_ms']:.3f} | {_label(row)} | {row[metric]:.2f} | "
                         f"{mmacs_text(row['mmacs'])} |")
    return "\n".join(lines) + "\n"


def mmacs_figure():
    """A matplotlib figure for accuracy against MMACs (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=120)


def save_mmacs_figure(fig, ax, ylabel: str, title: str, path: Path) -> None:
    """:func:`render_mmacs_figure` written atomically to ``path``."""
    atomic_write_bytes(path, render_mmacs_figure(fig, ax, ylabel, title))


def render_mmacs_figure(fig, ax, ylabel: str, title: str) -> bytes:
    """The PNG of a figure with a log-scale MMACs axis, plain tick labels, legend and grid."""
    import io

    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("MMACs (log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _plot(rows: list[dict[str, Any]]) -> bytes:
    metric = metric_of(rows)
    fig, ax = mmacs_figure()
    for res, frames in sorted({(r["resolution"], r.get("frames") or 0) for r in rows},
                              reverse=True):
        pts = [r for r in rows if r["resolution"] == res and (r.get("frames") or 0) == frames]
        ax.scatter([r["mmacs"] for r in pts], [r[metric] for r in pts], s=14, alpha=0.6,
                   label=f"{res} px" + (f" × {frames} frames" if frames else ""))
    front = pareto_front(rows, "mmacs", metric)
    ax.plot([r["mmacs"] for r in front], [r[metric] for r in front], "k-", lw=1.5,
            marker="o", ms=4, label="query table (Pareto front)")
    return render_mmacs_figure(fig, ax, f"{metric} (%)",
                               "Accuracy against compute of every configuration")


def write_results(run_dir: Path, rows: list[dict[str, Any]], device: str = "cpu") -> None:
    """grid.json, grid.csv, query_table.md and pareto.png of a run (all four made before
    any is written, each written atomically)."""
    import io

    run_dir = Path(run_dir)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    files = {GRID_JSON: (json.dumps(rows, indent=1) + "\n").encode(),
             GRID_CSV: text.getvalue().encode(),
             QUERY_TABLE: _query_table(rows, device).encode(), PARETO_PNG: _plot(rows)}
    with deferred_signals():  # the four agree: Ctrl-C waits until all are written
        for name, data in files.items():
            atomic_write_bytes(run_dir / name, data)


def _configuration(row: dict[str, Any]) -> tuple:
    """The configuration a grid row measured, as a sortable tuple."""
    return row["width"], row["resolution"], row.get("frames") or 0


def _rows_kept(run_dir: Path, replacing: bool = False) -> list[dict[str, Any]]:
    """The rows of the run's grid, or none when there is none or it is damaged (with a
    warning when the caller is ``replacing`` it)."""
    try:
        rows = read_grid(run_dir) if (Path(run_dir) / GRID_JSON).is_file() else []
    except ConfigError as exc:
        if replacing:
            logging.getLogger("mutualnet").warning(
                "%s; it is replaced by this evaluation's rows", str(exc).split("; run")[0])
        return []
    unrecorded = [r for r in rows if "latency_ms" in r and "latency_device" not in r]
    if unrecorded:  # rows written before they recorded it: the device of the table heading
        device = _latency_device(run_dir)
        for row in unrecorded:
            row["latency_device"] = device
    return rows


def update_results(run_dir: Path, rows: list[dict[str, Any]], device: str = "cpu"
                   ) -> list[dict[str, Any]]:
    """Add ``rows`` to the run's grid and write the results (:func:`write_results`): a row of
    a configuration measured before replaces the earlier one (keeping its latency when this
    evaluation measured none), rows of other configurations stay. Returns the whole grid."""
    new = {_configuration(r): r for r in rows}
    kept = []
    for row in _rows_kept(run_dir, replacing=True):
        same = new.get(_configuration(row))
        if same is None:
            kept.append(row)
            continue
        if "latency_ms" not in same:  # every latency column of the earlier row, its device
            same.update((k, v) for k, v in row.items() if k.startswith("latency"))
    data = {r["data"] for r in rows if "data" in r}
    other = sorted({r["data"] for r in kept if "data" in r} - data)
    if other and data:
        logging.getLogger("mutualnet").warning(
            "%s now holds rows measured on different data: %d configuration(s) on %s, these "
            "on %s; their accuracies do not compare (evaluate them all with the same --data)",
            run_dir, sum(r.get("data") in other for r in kept), " and ".join(other),
            " and ".join(sorted(data)))
    merged = sorted(kept + list(new.values()), key=_configuration)
    write_results(run_dir, merged, device)
    return merged


def remove_results_of(run_dir: Path, keys: set[str]) -> list[str]:
    """Drop the rows of the run's grid that measured a configuration in ``keys`` (whose
    calibrated statistics were replaced) and rewrite the results from the others, or remove
    the results when no row is left; returns the configurations dropped."""
    rows = _rows_kept(run_dir)
    measured = [Config(r["width"], r["resolution"], r.get("frames")) for r in rows]
    dropped = [config.name for config in measured if config.key in keys]
    if not dropped:
        return []
    kept = [row for row, config in zip(rows, measured) if config.key not in keys]
    if kept:
        write_results(run_dir, kept)
    else:
        remove_results(run_dir)
    return dropped


def _latency_device(run_dir: Path) -> str:
    """The device the run's query table says its latencies were measured on (rows record
    it since; see :func:`_rows_kept`)."""
    try:
        found = re.search(r"^## By measured latency \((.+)\)$",
                          (Path(run_dir) / QUERY_TABLE).read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        found = None
    return found[1] if found else "cpu"


def remove_results(run_dir: Path) -> list[str]:
    """Remove the results of an evaluation from a run directory (the grid first, which
    ``select`` reads); returns the names removed."""
    removed = []
    with deferred_signals():
        for name in RESULT_FILES:
            path = Path(run_dir) / name
            if path.exists():
                path.unlink()
                removed.append(name)
    return removed
