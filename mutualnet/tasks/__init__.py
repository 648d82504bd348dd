"""What differs between tasks: the losses of the full and distilled passes, and the metric.

A task object has ``label_loss(output, target)`` (the full configuration),
``teacher_signal(output)`` and ``distill_loss(output, teacher, target, config)`` (the other
configurations of the sandwich), ``metric_names`` (the first is the primary metric, ranked by
``select``) and ``meter()``: an accumulator with ``update(output, target, config)``,
``reduce(all_reduce)`` (merge over processes) and ``result()`` (metrics in percent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import TASKS
from .classification import ClassificationMeter, ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..nn.model import SlimmableModel

__all__ = ["TASKS", "ClassificationMeter", "ClassificationTask", "DetectionTask",
           "SegmentationTask", "build_task", "build_task_model"]



def build_task(cfg: RunConfig):
    """The task object of a run's recipe."""
    tc = cfg.train
    if cfg.task == "detection":
        from ..models.dense import HEAD_OPTIONS

        strides = cfg.model.head.get("strides", HEAD_OPTIONS["detection"]["strides"])
        return DetectionTask(strides, tc.distill_weight)
    if cfg.task == "segmentation":
        return SegmentationTask(tc.distill_temperature, tc.distill_weight)
    return ClassificationTask(cfg.optim.label_smoothing, tc.distill_temperature,
                              tc.distill_weight)


def build_task_model(task: str, name: str, *, num_classes: int, in_chans: int,
                     width_range: tuple[float, float], options: dict[str, Any],
                     head: dict[str, Any] | None = None) -> SlimmableModel:
    """The network of a task: a registered model, or a dense head on it as backbone."""
    from ..errors import ConfigError
    from ..models import create_model
    from ..models.dense import create_dense_model

    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    for key, source in (("num_classes", "the data"), ("in_chans", "the data"),
                        ("width_range", "space.width_range")):
        if key in options:
            raise ConfigError(f"model.options.{key} is set by {source}; remove it from "
                              f"model.options")
    if task == "classification":
        if head:
            raise ConfigError("model.head configures detection and segmentation heads; "
                              "remove it or set task: detection / segmentation")
        return create_model(name, num_classes=num_classes, in_chans=in_chans,
                            width_range=width_range, **options)
    return create_dense_model(task, name, num_classes=num_classes, in_chans=in_chans,
                              width_range=width_range, options=options, head=head)
