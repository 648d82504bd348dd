"""Metrics to a JSONL file (and TensorBoard when it is installed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLog", "LOG"]

LOG = "log.jsonl"


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / LOG
        self._tb = None
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
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value,
                                        record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
