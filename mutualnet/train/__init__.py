"""The training engine: loop, optimizer and schedule, distributed set-up, checkpoints, logs."""

from __future__ import annotations

import importlib

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "build_model", "build_space", "train"]


def __getattr__(name: str):
    # the loop is loaded on first use: the modules it uses (calibrate, evaluate) import
    # ``train.checkpoint``, which must not pull the loop in before they are defined
    if name in __all__:
        value = getattr(importlib.import_module(".loop", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
