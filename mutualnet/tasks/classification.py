"""Image classification: cross-entropy for the full network, KL to it for the others."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClassificationTask"]


class ClassificationTask:
    metric_names = ("top1", "top5")

    def __init__(
        self, label_smoothing: float = 0.0, temperature: float = 1.0, distill_weight: float = 1.0
    ) -> None:
        self.label_smoothing = label_smoothing
        self.temperature = temperature
        self.distill_weight = distill_weight

    def label_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def teacher_signal(self, output: Tensor) -> Tensor:
        """What the sub-networks learn from: the full network's softened, detached output."""
        return F.softmax(output.detach().float() / self.temperature, dim=1)

    def distill_loss(self, output: Tensor, teacher: Tensor, target: Tensor | None = None,
                     config=None) -> Tensor:
        """KL to the teacher alone: the labels and configuration (used by dense tasks) are
        left out, as the paper's sub-networks learn from the full network only."""
        t = self.temperature
        log_p = F.log_softmax(output.float() / t, dim=1)
        return self.distill_weight * (t * t) * F.kl_div(log_p, teacher, reduction="batchmean")

    @torch.no_grad()
    def correct(self, output: Tensor, target: Tensor) -> dict[str, int]:
        """Counts of correct predictions (summable across batches and processes)."""
        k = min(5, output.shape[1])
        top = output.topk(k, dim=1).indices
        hits = top.eq(target[:, None])
        return {"top1": int(hits[:, 0].sum()), "top5": int(hits[:, :k].any(1).sum())}

    def meter(self) -> "ClassificationMeter":
        return ClassificationMeter(self)


class ClassificationMeter:
    """Top-1/top-5 hits and the image count, summed over batches (and processes)."""

    def __init__(self, task: ClassificationTask) -> None:
        self.task = task
        self.counts = torch.zeros(len(task.metric_names) + 1, dtype=torch.float64)

    def update(self, output: Tensor, target: Tensor, config=None) -> None:
        hits = self.task.correct(output, target)
        self.counts[:-1] += torch.tensor([hits[n] for n in self.task.metric_names],
                                         dtype=torch.float64)
        self.counts[-1] += target.shape[0]

    def reduce(self, all_reduce) -> None:
        if all_reduce is not None:
            self.counts = all_reduce(self.counts)

    def result(self) -> dict[str, float]:
        total = max(float(self.counts[-1]), 1.0)
        return {n: 100.0 * float(v) / total
                for n, v in zip(self.task.metric_names, self.counts[:-1])}
