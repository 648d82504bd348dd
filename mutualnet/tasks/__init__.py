"""What differs between tasks: the losses of the full and distilled passes, and the metric."""

from .classification import ClassificationTask

__all__ = ["ClassificationTask"]
