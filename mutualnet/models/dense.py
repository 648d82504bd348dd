"""Dense-prediction networks on any registered 2D backbone: an FCOS detector and an LR-ASPP
segmenter, both slimmable end to end (backbone, pyramid and heads follow the same width).

Multi-scale features come from :class:`FeatureTaps`, which wraps a classification model's
``features`` unchanged (so a classification run's weights load into it) and returns the
outputs of the last block at each requested stride. The taps are found by probing the
backbone once, so every family — MobileNetV1/V2, ResNet, WideResNet — works without
declaring its stages. Heads use group norm (no statistics: one module serves every pyramid
level, as in FCOS) except LR-ASPP's one batch norm, which is calibrated per configuration
like the backbone's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import Dim, SlimBatchNorm2d, SlimConv2d, SlimLayer, SlimmableModel, conv_bn
from .registry import create_model

__all__ = ["HEAD_OPTIONS", "FeatureTaps", "SlimGroupNorm", "FCOSDetector",
           "LRASPPSegmenter", "create_dense_model", "find_taps"]

_PROBE = 64  # side of the probe image; every stride up to 64 divides it
#: head options (``model.head`` in a recipe) and their defaults, per task
#: the largest channel count, stride or layer count a head option takes
MAX_HEAD_VALUE = 4096
HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "detection": {"strides": [8, 16, 32], "fpn_channels": 64, "head_convs": 2},
    "segmentation": {"strides": [8, 16], "inter_channels": 64},
}


class SlimGroupNorm(SlimLayer, nn.GroupNorm):
    """Group norm with a fixed number of channels per group, so groups scale with the width."""

    def __init__(self, dim: Dim, group_channels: int = 8, max_width: float = 1.0) -> None:
        self.dim, self.group_channels, self.max_width = dim, group_channels, max_width
        channels = dim.at(max_width)
        nn.GroupNorm.__init__(self, max(1, channels // group_channels), channels)
        self.set_width(max_width)

    def set_width(self, width: float, stats_key: str | None = None) -> None:
        self.active = self.dim.at(width)
        if self.active % self.group_channels:
            raise ConfigError(f"group norm with {self.group_channels} channels per group cannot "
                              f"normalise {self.active} channels; use multiples of 8")
        self.active_groups = self.active // self.group_channels

    def forward(self, x: Tensor) -> Tensor:
        c = self.active
        return F.group_norm(x, self.active_groups, self.weight[:c], self.bias[:c], self.eps)

    def active_param_count(self) -> int:
        return 2 * self.active

    def to_static(self) -> nn.Module:
        static = nn.GroupNorm(self.active_groups, self.active, eps=self.eps,
                              device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            static.weight.copy_(self.weight[: self.active])
            static.bias.copy_(self.bias[: self.active])
        static.train(self.training)
        return static


class FeatureTaps(nn.Module):
    """A backbone's ``features`` returning ``[input, tap_1, tap_2, ...]``.

    The input comes first because per-pixel heads need its size. Blocks after the last tap
    are dropped (never computed); the kept blocks keep their names, so the state dict of a
    classification run's ``features`` loads as ``features.body``.
    """

    def __init__(self, body: nn.Sequential, taps: Sequence[int]) -> None:
        super().__init__()
        blocks = list(body.children())[: max(taps) + 1]
        self.body = nn.Sequential(*blocks)
        self.taps = [int(t) for t in taps]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [x]
        for i, block in enumerate(self.body):
            x = block(x)
            if i in self.taps:
                feats.append(x)
        return feats


def _out_dim(block: nn.Module, previous: Dim | None) -> Dim | None:
    """The channel dimension a block ends with: that of its last slimmable conv or norm."""
    dim = previous
    for m in block.modules():
        if isinstance(m, SlimConv2d):
            dim = m.out_dim
        elif isinstance(m, SlimBatchNorm2d):
            dim = m.dim
    return dim


@torch.no_grad()
def find_taps(body: nn.Sequential, in_chans: int, max_width: float,
              strides: Sequence[int], name: str) -> tuple[list[int], list[Dim]]:
    """Indices of the last block at each stride in ``strides`` and their channel dimensions."""
    training = body.training
    body.eval()
    x = torch.zeros(1, in_chans, _PROBE, _PROBE)
    seen: list[tuple[int, Dim | None]] = []
    dim: Dim | None = None
    try:
        for block in body:
            x = block(x)
            dim = _out_dim(block, dim)
            seen.append((_PROBE // x.shape[-1], dim))
    except RuntimeError:
        raise ConfigError(f"backbone {name} does not take {in_chans}-channel images (a 2D "
                          f"image model is needed for dense tasks)") from None
    finally:
        body.train(training)
    taps, dims = [], []
    for stride in strides:
        found = [i for i, (s, _) in enumerate(seen) if s == stride]
        if not found:
            reached = ", ".join(str(s) for s in sorted({s for s, _ in seen}))
            raise ConfigError(f"backbone {name} has no stage at stride {stride} (it reaches "
                              f"strides {reached}); set model.head.strides to some of those")
        taps.append(found[-1])
        dims.append(seen[found[-1]][1])
    if taps != sorted(taps) or len(set(taps)) != len(taps):
        raise ConfigError(f"model.head.strides must increase, got {list(strides)}")
    return taps, dims


class FPN(nn.Module):
    """Feature pyramid: 1x1 laterals, nearest top-down sum, 3x3 smoothing, all slimmable."""

    def __init__(self, in_dims: Sequence[Dim], dim: Dim, max_width: float) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            [SlimConv2d(d, dim, 1, bias=True, max_width=max_width) for d in in_dims])
        self.output = nn.ModuleList(
            [SlimConv2d(dim, dim, 3, bias=True, max_width=max_width) for _ in in_dims])

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals: list[Tensor] = []
        for i, conv in enumerate(self.lateral):
            laterals.append(conv(feats[i]))
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1],
                                                      size=laterals[i].shape[-2:],
                                                      mode="nearest")
        outs: list[Tensor] = []
        for i, conv in enumerate(self.output):
            outs.append(conv(laterals[i]))
        return outs


def _tower(dim: Dim, depth: int, max_width: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [SlimConv2d(dim, dim, 3, bias=True, max_width=max_width),
                   SlimGroupNorm(dim, max_width=max_width), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """FPN plus the FCOS head shared over levels: per level ``(class logits [N, K, H, W],
    box distances ltrb in units of the level's stride [N, 4, H, W], centerness logit
    [N, 1, H, W])``."""

    def __init__(self, in_dims: Sequence[Dim], num_classes: int, fpn_channels: int,
                 head_convs: int, max_width: float) -> None:
        super().__init__()
        dim = Dim(fpn_channels)
        self.fpn = FPN(in_dims, dim, max_width)
        self.cls_tower = _tower(dim, head_convs, max_width)
        self.box_tower = _tower(dim, head_convs, max_width)
        self.cls_out = SlimConv2d(dim, Dim(num_classes, slim=False), 3, bias=True,
                                  max_width=max_width)
        self.box_out = SlimConv2d(dim, Dim(4, slim=False), 3, bias=True, max_width=max_width)
        self.ctr_out = SlimConv2d(dim, Dim(1, slim=False), 3, bias=True, max_width=max_width)
        self.scales = nn.Parameter(torch.ones(len(in_dims)))
        self.output_names = [f"{kind}_{i}" for i in range(len(in_dims))
                             for kind in ("cls", "box", "ctr")]

    def init_outputs(self, prior: float = 0.01) -> None:
        """FCOS's initialisation of the output convs: small weights, so every box starts near
        one stride wide (its distances are exponentials), and every class at probability
        ``prior`` (the focal-loss start)."""
        with torch.no_grad():
            for conv in (self.cls_out, self.box_out, self.ctr_out):
                nn.init.normal_(conv.weight, 0.0, 0.01)
                nn.init.zeros_(conv.bias)
            self.cls_out.bias.fill_(-math.log((1 - prior) / prior))

    def forward(self, feats: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        outs: list[tuple[Tensor, Tensor, Tensor]] = []
        for i, p in enumerate(self.fpn(feats[1:])):
            box_feat = self.box_tower(p)
            # exp, not ReLU: a ReLU that goes to zero collapses boxes to points, where GIoU
            # has no gradient left to grow them back
            box = torch.exp((self.box_out(box_feat) * self.scales[i]).clamp(max=8.0))
            outs.append((self.cls_out(self.cls_tower(p)), box, self.ctr_out(box_feat)))
        return outs


class LRASPPHead(nn.Module):
    """Lite R-ASPP (MobileNetV3 paper): a gated 1x1 branch on the deep feature, a classifier on
    the shallow one, summed and upsampled to the input size: logits ``[N, K, H, W]``."""

    def __init__(self, low_dim: Dim, high_dim: Dim, num_classes: int, inter_channels: int,
                 max_width: float) -> None:
        super().__init__()
        inter = Dim(inter_channels)
        classes = Dim(num_classes, slim=False)
        self.cbr = conv_bn(high_dim, inter, 1, act=nn.ReLU, max_width=max_width)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                  SlimConv2d(high_dim, inter, 1, max_width=max_width),
                                  nn.Sigmoid())
        self.low_classifier = SlimConv2d(low_dim, classes, 1, bias=True, max_width=max_width)
        self.high_classifier = SlimConv2d(inter, classes, 1, bias=True, max_width=max_width)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x, low, high = feats[0], feats[1], feats[2]
        y = self.cbr(high) * self.gate(high)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _DenseModel(SlimmableModel):
    """Backbone taps as ``features``, a dense head as ``head``: extraction and MAC counting
    work as for classifiers (the static twin is ``Sequential(features, head)``)."""

    task: str

    def __init__(self, backbone: str, num_classes: int, in_chans: int,
                 width_range: tuple[float, float], backbone_options: dict[str, Any],
                 strides: Sequence[int]) -> None:
        super().__init__(width_range, num_classes, in_chans)
        net = create_model(backbone, num_classes=1, in_chans=in_chans, width_range=width_range,
                           **backbone_options)
        self.backbone_name = backbone
        self.strides = [int(s) for s in strides]
        taps, self.tap_dims = find_taps(net.features, in_chans, self.max_width, self.strides,
                                        backbone)
        self.features = FeatureTaps(net.features, taps)


class FCOSDetector(_DenseModel):
    """FCOS (Tian et al., 2019), anchor-free: per location class scores, distances to the four
    box sides and a centerness that down-weights off-centre boxes. Anchor-free because its
    outputs are plain per-pixel maps like a segmenter's, so distilling the full network into
    a sub-network is a per-location comparison after resizing — no anchor matching. FCOS
    rather than CenterNet because it predicts on the pyramid the backbone already has, where
    CenterNet needs one stride-4 map and an upsampling stack that costs more than a small
    backbone."""

    task = "detection"

    def __init__(self, backbone: str, num_classes: int, in_chans: int,
                 width_range: tuple[float, float], backbone_options: dict[str, Any],
                 strides: Sequence[int] = (8, 16, 32), fpn_channels: int = 64,
                 head_convs: int = 2) -> None:
        super().__init__(backbone, num_classes, in_chans, width_range, backbone_options, strides)
        self.head = FCOSHead(self.tap_dims, num_classes, fpn_channels, head_convs,
                             self.max_width)
        self._finish()
        self.head.init_outputs()


class LRASPPSegmenter(_DenseModel):
    """Semantic segmentation with an LR-ASPP head on a shallow (first stride) and a deep
    (second stride) backbone feature; logits at the input size."""

    task = "segmentation"

    def __init__(self, backbone: str, num_classes: int, in_chans: int,
                 width_range: tuple[float, float], backbone_options: dict[str, Any],
                 strides: Sequence[int] = (8, 16), inter_channels: int = 64) -> None:
        if len(strides) != 2:
            raise ConfigError(f"segmentation takes two model.head.strides (shallow, deep), "
                              f"got {list(strides)}")
        super().__init__(backbone, num_classes, in_chans, width_range, backbone_options, strides)
        self.head = LRASPPHead(self.tap_dims[0], self.tap_dims[1], num_classes, inter_channels,
                               self.max_width)
        self._finish()


_BUILDERS = {"detection": FCOSDetector, "segmentation": LRASPPSegmenter}


def create_dense_model(task: str, backbone: str, *, num_classes: int, in_chans: int,
                       width_range: tuple[float, float], options: dict[str, Any] | None = None,
                       head: dict[str, Any] | None = None) -> SlimmableModel:
    """A detector or segmenter on the registered ``backbone`` built with ``options``;
    ``head`` holds the head's options (see ``HEAD_OPTIONS``)."""
    defaults = HEAD_OPTIONS[task]
    head = dict(head or {})
    unknown = sorted(set(head) - set(defaults))
    if unknown:
        raise ConfigError(f"model.head has no option {', '.join(map(repr, unknown))} for "
                          f"{task}; its options are: {', '.join(defaults)}")
    values = {**defaults, **head}
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_HEAD_VALUE
                   for v in items) or not items:
            raise ConfigError(f"model.head.{key} must be positive integers up to "
                              f"{MAX_HEAD_VALUE}, got {value!r}")
    return _BUILDERS[task](backbone, num_classes, in_chans, width_range, dict(options or {}),
                           **values)
