"""Metrics to a JSONL file (and TensorBoard when it is installed)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "LOG"]

LOG = "log.jsonl"

log = logging.getLogger("mutualnet")


class RunLog:
    """Appends records to the run's log. Opening it keeps only the records of steps up to
    ``keep_until`` (the step training starts from): the steps a resumed run trains again,
    a failed earlier attempt's, the done record of the leg it goes on from, and a line torn
    by a crash are dropped."""

    def __init__(self, run_dir: Path, enabled: bool = True, keep_until: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / LOG
        self._tb = None
        self._failed = False
        if enabled and self.path.exists():
            from .checkpoint import atomic_write_bytes

            # a resumed run goes on past the end of the leg it resumes: its done record goes
            kept = [r for r in read_log(run_dir)
                    if isinstance(r.get("step"), int) and r["step"] <= keep_until
                    and r.get("kind") != "done"]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard is optional
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # the log is a record, not the run: training goes on
            if not self._failed:
                log.warning("cannot append to %s (%s); training goes on, and the log takes "
                            "up again when it can be written", self.path,
                            exc.strerror or exc)
            self._failed = True
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value,
                                        record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the run's log (a line torn by a crash left out)."""
    path = Path(run_dir) / LOG
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
