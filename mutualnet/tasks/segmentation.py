"""Semantic segmentation: per-pixel cross-entropy and per-pixel distillation, mean IoU.

Targets are int64 masks ``[N, H, W]`` in the frame of the batch (the largest resolution):
0 is background, ``k + 1`` category ``k``, :data:`IGNORE` (padding, crowd regions) counts for
nothing. The full configuration learns from the masks (cross-entropy). A sub-network's
logits come at its own, smaller resolution: the teacher's per-pixel probabilities are resized
(bilinear, still a distribution at every pixel) to the student's size and the student learns
from them by per-pixel KL, *plus* cross-entropy on the mask resized (nearest) to its size —
the ground truth keeps small networks on object boundaries the blurred teacher smooths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.coco import IGNORE
from ..space import Config

__all__ = ["IGNORE", "SegmentationTask", "SegmentationMeter", "confusion_matrix", "mean_iou"]


def _resize_mask(mask: Tensor, size) -> Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """``[K, K]`` counts (rows: truth, columns: prediction), ignored pixels left out."""
    valid = target != IGNORE
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).to(torch.float64)


def mean_iou(confusion: Tensor) -> dict[str, float]:
    """Mean IoU over the classes that occur (in truth or prediction) and pixel accuracy, in %."""
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    miou = (tp[present] / union[present]).mean().item() if present.any() else 0.0
    total = confusion.sum().item()
    return {"miou": 100.0 * miou, "pixel_acc": 100.0 * tp.sum().item() / max(total, 1.0)}


class SegmentationTask:
    metric_names = ("miou", "pixel_acc")

    def __init__(self, temperature: float = 1.0, distill_weight: float = 1.0) -> None:
        self.temperature = temperature
        self.distill_weight = distill_weight

    def label_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), _resize_mask(target, output.shape[-2:]),
                               ignore_index=IGNORE)

    def teacher_signal(self, output: Tensor) -> Tensor:
        return F.softmax(output.detach().float() / self.temperature, dim=1)

    def distill_loss(self, output: Tensor, teacher: Tensor, target: Tensor, config: Config
                     ) -> Tensor:
        size = output.shape[-2:]
        if teacher.shape[-2:] != size:
            teacher = F.interpolate(teacher, size=size, mode="bilinear", align_corners=False)
        t = self.temperature
        log_p = F.log_softmax(output.float() / t, dim=1)
        kl = F.kl_div(log_p, teacher, reduction="none").sum(1).mean()
        return self.label_loss(output, target) + self.distill_weight * t * t * kl

    def meter(self) -> "SegmentationMeter":
        return SegmentationMeter()


class SegmentationMeter:
    """A confusion matrix summed over batches (and over processes by ``reduce``)."""

    def __init__(self) -> None:
        self.confusion: Tensor | None = None

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor, config: Config) -> None:
        logits = output.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                                   align_corners=False)
        counts = confusion_matrix(logits.argmax(1), target, logits.shape[1]).cpu()
        self.confusion = counts if self.confusion is None else self.confusion + counts

    def reduce(self, all_reduce) -> None:
        """Sum the matrices of all processes. Every process takes part, also one that saw no
        image (it learns the class count from the others), or the collective would hang."""
        if all_reduce is None:
            return
        seen = self.confusion is not None
        size = self.confusion.shape[0] if seen else 0
        sizes = all_reduce(torch.tensor([float(size), float(seen)], dtype=torch.float64))
        if sizes[1] == 0:
            return
        n = int(round(float(sizes[0] / sizes[1])))
        if not seen:
            self.confusion = torch.zeros(n, n, dtype=torch.long)
        self.confusion = all_reduce(self.confusion)

    def result(self) -> dict[str, float]:
        if self.confusion is None:
            return {"miou": 0.0, "pixel_acc": 0.0}
        return mean_iou(self.confusion)
