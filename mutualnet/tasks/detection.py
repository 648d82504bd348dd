"""Object detection (FCOS): ground-truth losses, in-place distillation, decoding, COCO mAP.

Targets are lists of dicts, one per image, in the frame of the batch the loader made (a
square canvas of ``size`` pixels, the largest resolution): ``boxes`` float ``[G, 4]`` (x1, y1,
x2, y2), ``labels`` int64 ``[G]`` (0..K-1), ``iscrowd`` bool ``[G]``, ``image_id``,
``scale`` (canvas pixels per original pixel) and ``size``.

The full configuration learns from the ground truth with the FCOS losses: sigmoid focal loss
on the class maps, GIoU on the boxes of positive locations weighted by their centerness
target, and BCE on centerness. A sub-network sees the image resized to its resolution ``r``,
so its maps are smaller than the teacher's: the teacher's maps are resized (bilinear) to the
student's size per pyramid level, and its box distances scaled by ``r / size``. The
sub-network then learns from the ground truth (same losses, boxes scaled to ``r``) *plus*
the teacher: a quality focal loss (BCE toward the teacher's class probabilities, focused by
their difference) on every location, BCE toward its centerness at the positive locations,
and GIoU toward its boxes at the positive locations where the teacher's box fits the ground
truth better than the student's. The ground truth stays because a detector's dense outputs
are mostly background — a small network distilled from soft maps alone under-fits the rare
positives — while the teacher's soft maps add what the hard labels lack (how likely each
location is, and better boxes). The box term is gated because teacher and student share
their weights: early on the scaled teacher box is smaller than the student's, and an
ungated pull feeds back until every box shrinks to a point (observed: mAP 0). Focal forms
are used because positives are a tiny fraction of locations.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..space import Config

__all__ = ["DetectionTask", "DetectionMeter", "batched_nms", "box_iou", "decode",
           "giou_loss", "coco_map"]

Output = list[tuple[Tensor, Tensor, Tensor]]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of ``[A, 4]`` and ``[B, 4]`` xyxy boxes: ``[A, B]``."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression within each label: indices kept, by decreasing score.

    Boxes of different labels are moved apart by an offset larger than any box, so one
    IoU matrix serves every class.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    order = scores.argsort(descending=True)
    shifted = (boxes + offset)[order]
    suppress = (box_iou(shifted, shifted) > iou_threshold).triu(1).cpu().numpy()
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep &= ~suppress[i]
    return order[torch.from_numpy(keep).to(order.device)]


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - GIoU`` of xyxy boxes, elementwise over ``[P, 4]`` pairs."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (area_p + area_t - inter).clamp(min=1e-9)
    hull = (torch.maximum(pred[:, 2:], target[:, 2:])
            - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0).prod(-1).clamp(min=1e-9)
    return 1 - (inter / union - (hull - union) / hull)


def _ltrb_boxes(ltrb: Tensor) -> Tensor:
    """Distances to the four sides as a box around the origin (GIoU is translation-free)."""
    return torch.stack([-ltrb[:, 0], -ltrb[:, 1], ltrb[:, 2], ltrb[:, 3]], dim=1)


def _locations(sizes: list[tuple[int, int]], strides: list[int], device) -> tuple[Tensor, ...]:
    """Centres (x, y) in input pixels, stride and scale range of every location, all levels."""
    points, stride_of, lower, upper = [], [], [], []
    for level, ((h, w), s) in enumerate(zip(sizes, strides)):
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1))
        n = h * w
        stride_of.append(torch.full((n,), float(s), device=device))
        # FCOS's ranges ([0, 64], [64, 128], ...) as multiples of the stride
        lower.append(torch.full((n,), 0.0 if level == 0 else 4.0 * s, device=device))
        upper.append(torch.full((n,), math.inf if level == len(sizes) - 1 else 8.0 * s,
                                device=device))
    return tuple(torch.cat(t) for t in (points, stride_of, lower, upper))


def _flatten(output: Output) -> tuple[Tensor, Tensor, Tensor]:
    """Per-level maps -> ``[N, P, K]`` class logits, ``[N, P, 4]`` distances, ``[N, P]``."""
    cls = torch.cat([c.flatten(2) for c, _, _ in output], 2).transpose(1, 2)
    box = torch.cat([b.flatten(2) for _, b, _ in output], 2).transpose(1, 2)
    ctr = torch.cat([t.flatten(1) for _, _, t in output], 1)
    return cls.float(), box.float(), ctr.float()


def _assign(points: Tensor, stride_of: Tensor, lower: Tensor, upper: Tensor, boxes: Tensor,
            labels: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """FCOS assignment with centre sampling: label (-1 background) and ltrb (in strides) per
    location; a location inside several boxes takes the smallest."""
    p = points.shape[0]
    if boxes.shape[0] == 0:
        return (torch.full((p,), -1, dtype=torch.long, device=points.device),
                torch.zeros(p, 4, device=points.device))
    x, y = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], 2)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    r = stride_of[:, None] * radius
    centre = torch.stack([x - torch.maximum(cx - r, boxes[:, 0]),
                          y - torch.maximum(cy - r, boxes[:, 1]),
                          torch.minimum(cx + r, boxes[:, 2]) - x,
                          torch.minimum(cy + r, boxes[:, 3]) - y], 2).min(2).values > 0
    reach = ltrb.max(2).values
    ok = centre & (reach >= lower[:, None]) & (reach <= upper[:, None])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(p, -1)
    area = torch.where(ok, area, torch.full_like(area, math.inf))
    best, index = area.min(1)
    assigned = labels[index].clone()
    assigned[~torch.isfinite(best)] = -1
    return assigned, ltrb[torch.arange(p, device=points.device), index] / stride_of[:, None]


def _centerness(ltrb: Tensor) -> Tensor:
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt((lr.min(1).values / lr.max(1).values.clamp(min=1e-9)).clamp(min=0)
                      * (tb.min(1).values / tb.max(1).values.clamp(min=1e-9)).clamp(min=0))


def _focal(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float | None = 0.25
           ) -> Tensor:
    """Sigmoid focal loss (summed); with soft targets and ``alpha=None`` it is the quality
    focal loss of GFL, ``|p - t|^gamma * BCE(p, t)``."""
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = bce * (p - target).abs().pow(gamma)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.sum()


class DetectionTask:
    metric_names = ("map", "ap50")

    def __init__(self, strides: list[int], distill_weight: float = 1.0,
                 center_radius: float = 1.5, score_threshold: float = 0.05,
                 nms_iou: float = 0.6, max_detections: int = 100) -> None:
        self.strides = [int(s) for s in strides]
        self.distill_weight = distill_weight
        self.center_radius = center_radius
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections

    def _targets(self, output: Output, targets: list[dict], resolution: int | None
                 ) -> tuple[Tensor, Tensor]:
        """Assigned labels ``[N, P]`` and ltrb ``[N, P, 4]`` at the output's resolution."""
        sizes = [tuple(c.shape[-2:]) for c, _, _ in output]
        points, stride_of, lower, upper = _locations(sizes, self.strides, output[0][0].device)
        labels, ltrbs = [], []
        for t in targets:
            keep = ~t["iscrowd"]
            boxes = t["boxes"][keep].float()
            if resolution is not None:
                boxes = boxes * (resolution / float(t["size"]))
            label, ltrb = _assign(points, stride_of, lower, upper, boxes, t["labels"][keep],
                                  self.center_radius)
            labels.append(label)
            ltrbs.append(ltrb)
        return torch.stack(labels), torch.stack(ltrbs)

    def _ground_truth(self, output: Output, targets: list[dict], resolution: int | None
                      ) -> tuple[Tensor, ...]:
        """(loss, positive mask, their ltrb targets, their centerness, number of positives)."""
        cls, box, ctr = _flatten(output)
        labels, ltrb = self._targets(output, targets, resolution)
        pos = labels >= 0
        num_pos = max(1.0, float(pos.sum()))
        onehot = torch.zeros_like(cls)
        onehot[pos] = F.one_hot(labels[pos], cls.shape[-1]).to(cls.dtype)
        loss = _focal(cls, onehot) / num_pos
        target_ltrb = ltrb[pos]
        weight = _centerness(target_ltrb)
        loss = loss + (giou_loss(_ltrb_boxes(box[pos]), _ltrb_boxes(target_ltrb)) * weight
                       ).sum() / weight.sum().clamp(min=1e-6)
        loss = loss + F.binary_cross_entropy_with_logits(ctr[pos], weight, reduction="sum"
                                                         ) / num_pos
        return loss, pos, target_ltrb, weight, torch.tensor(num_pos)

    def label_loss(self, output: Output, target: list[dict]) -> Tensor:
        return self._ground_truth(output, target, None)[0]

    def teacher_signal(self, output: Output) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Class and centerness probabilities and box distances of the full network, per level."""
        return [(torch.sigmoid(c.detach().float()), b.detach().float(),
                 torch.sigmoid(t.detach().float())) for c, b, t in output]

    def distill_loss(self, output: Output, teacher, target: list[dict], config: Config
                     ) -> Tensor:
        """Ground truth at the student's resolution plus the teacher's resized maps."""
        loss, pos, gt_ltrb, weight, num_pos = self._ground_truth(output, target,
                                                                 config.resolution)
        scale = config.resolution / float(target[0]["size"])
        resized = []
        for (c, b, t), (tc, tb, tt) in zip(output, teacher):
            size = c.shape[-2:]
            if tc.shape[-2:] != size:
                tc, tb, tt = (F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                              for m in (tc, tb, tt))
            resized.append((tc, tb * scale, tt))
        t_cls, t_box, t_ctr = _flatten(resized)
        cls, box, ctr = _flatten(output)
        kd = _focal(cls, t_cls, alpha=None) / num_pos
        # the teacher's box only where it fits the ground truth better than the student's:
        # everywhere, it would feed back (the teacher is the same weights, its box scaled
        # by r / size is smaller than the student's early on) and shrink every box to a point
        student, taught, truth = (_ltrb_boxes(b) for b in (box[pos], t_box[pos], gt_ltrb))
        better = (giou_loss(taught, truth) < giou_loss(student.detach(), truth)).float()
        kd = kd + (giou_loss(student, taught) * weight * better).sum() / weight.sum().clamp(
            min=1e-6)
        kd = kd + F.binary_cross_entropy_with_logits(ctr[pos], t_ctr[pos], reduction="sum"
                                                     ) / num_pos
        return loss + self.distill_weight * kd

    @torch.no_grad()
    def decode(self, output: Output) -> list[dict[str, Tensor]]:
        return decode(output, self.strides, self.score_threshold, self.nms_iou,
                      self.max_detections)

    def meter(self) -> "DetectionMeter":
        return DetectionMeter(self)


@torch.no_grad()
def decode(output: Output, strides: list[int], score_threshold: float = 0.05,
           nms_iou: float = 0.6, max_detections: int = 100, pre_nms: int = 1000
           ) -> list[dict[str, Tensor]]:
    """Detections per image in input pixels: ``boxes`` xyxy, ``scores`` (the geometric mean of
    class probability and centerness) and ``labels``, after per-class NMS."""
    results = []
    n = output[0][0].shape[0]
    for i in range(n):
        boxes, scores, labels = [], [], []
        for (c, b, t), s in zip(output, strides):
            k, h, w = c.shape[1:]
            score = torch.sqrt(torch.sigmoid(c[i].float()) * torch.sigmoid(t[i].float()))
            score = score.reshape(k, -1)
            flat = score.flatten()
            keep = (flat > score_threshold).nonzero().squeeze(1)
            if keep.numel() > pre_nms:
                keep = keep[flat[keep].topk(pre_nms).indices]
            cls_index, loc = keep // (h * w), keep % (h * w)
            cx = ((loc % w).float() + 0.5) * s
            cy = ((loc // w).float() + 0.5) * s
            ltrb = b[i].float().reshape(4, -1)[:, loc] * s
            boxes.append(torch.stack([cx - ltrb[0], cy - ltrb[1], cx + ltrb[2], cy + ltrb[3]],
                                     1))
            scores.append(flat[keep])
            labels.append(cls_index)
        boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes_t, scores_t, labels_t, nms_iou)[:max_detections]
        results.append({"boxes": boxes_t[keep], "scores": scores_t[keep],
                        "labels": labels_t[keep]})
    return results


def coco_map(images: list[int], ground_truth: list[list[float]], detections: list[list[float]],
             num_classes: int) -> dict[str, float]:
    """Box AP@[.5:.95] and AP50 in percent with pycocotools' COCOeval.

    ``ground_truth`` rows: ``[image_id, x, y, w, h, label, iscrowd]``; ``detections`` rows:
    ``[image_id, x, y, w, h, score, label]`` (original image pixels, labels 0..K-1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(not g[6] for g in ground_truth) or not detections:
        return {"map": 0.0, "ap50": 0.0}
    gt = COCO()
    gt.dataset = {
        "images": [{"id": int(i)} for i in sorted(set(images))],
        "categories": [{"id": k} for k in range(num_classes)],
        "annotations": [{"id": j + 1, "image_id": int(g[0]), "bbox": list(g[1:5]),
                         "area": float(g[3] * g[4]), "category_id": int(g[5]),
                         "iscrowd": int(g[6])} for j, g in enumerate(ground_truth)],
    }
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt.createIndex()
        dt = gt.loadRes([{"image_id": int(d[0]), "bbox": list(d[1:5]), "score": float(d[5]),
                          "category_id": int(d[6])} for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": 100.0 * max(0.0, float(ev.stats[0])),
            "ap50": 100.0 * max(0.0, float(ev.stats[1]))}


class DetectionMeter:
    """Collects detections and ground truth in original image pixels; mAP at the end."""

    def __init__(self, task: DetectionTask) -> None:
        self.task = task
        self.images: list[int] = []
        self.ground_truth: list[list[float]] = []
        self.detections: list[list[float]] = []
        self.num_classes = 0

    def update(self, output: Output, target: list[dict], config: Config) -> None:
        self.num_classes = int(output[0][0].shape[1])
        for result, t in zip(self.task.decode(output), target):
            image_id = int(t["image_id"])
            self.images.append(image_id)
            # input pixels of this configuration -> canvas -> original image
            to_original = float(t["size"]) / config.resolution / float(t["scale"])
            for box, label, crowd in zip(t["file_boxes"].tolist(), t["file_labels"].tolist(),
                                         t["file_iscrowd"].tolist()):
                self.ground_truth.append([image_id, *box, label, int(crowd)])
            boxes = (result["boxes"] * to_original).tolist()
            for box, score, label in zip(boxes, result["scores"].tolist(),
                                         result["labels"].tolist()):
                self.detections.append([image_id, box[0], box[1], box[2] - box[0],
                                        box[3] - box[1], score, label])

    def reduce(self, all_reduce) -> None:
        """Gather every process's records (``all_reduce`` given: a distributed run)."""
        import torch.distributed as dist

        if all_reduce is None or not dist.is_initialized():
            return
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.images, self.ground_truth, self.detections,
                                          self.num_classes))
        self.images = [i for g in gathered for i in g[0]]
        self.ground_truth = [r for g in gathered for r in g[1]]
        self.detections = [r for g in gathered for r in g[2]]
        self.num_classes = max(g[3] for g in gathered)

    def result(self) -> dict[str, float]:
        return coco_map(self.images, self.ground_truth, self.detections, self.num_classes)
