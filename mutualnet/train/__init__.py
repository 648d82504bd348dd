"""The training engine: loop, optimizer and schedule, distributed set-up, checkpoints, logs."""

from .loop import NonFiniteLoss, TrainingInterrupted, build_model, build_space, train

__all__ = ["NonFiniteLoss", "TrainingInterrupted", "build_model", "build_space", "train"]
