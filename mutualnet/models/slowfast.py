"""Slimmable Slow and SlowFast networks (Feichtenhofer et al., 2019), ResNet-50 pathways, laid
out as in the official SlowFast code (stride on the 1x3x3 conv, no temporal pooling).

MAC convention: the SlowFast paper reports inference cost at 256² crops (its 3-crop test of
frames resized to a 256 short side), not at the 224² training crop. At 400 classes and width
1.0, ``count_macs`` (convolution and linear multiply-accumulates, the paper's "FLOPs") gives
Slow 8x8 R50 54.52 G at 8x256² (paper 54.52 G; 41.74 G at 8x224²) with 32.45 M parameters,
and SlowFast 4x16 R50 36.10 G at 32x256² (paper 36.1 G; 27.64 G at 32x224²) with 34.48 M
parameters (paper 34.5 M).

Slimming: the Slow pathway follows the width like a 2D ResNet (bottleneck widths tied to a
quarter of the stage outputs). The Fast pathway and the lateral connections keep their
channels at every width: they are already thin (beta = 1/8), and the lateral output is
concatenated into the Slow pathway. That concatenation puts the fixed lateral channels
*first*, ``cat([lateral(fast), slow])``, described by ``ConcatDim``: at width ``w`` the next
Slow layer reads ``lateral + slow.at(w)`` channels, a prefix of its full input, so its weight
is sliced like any other. (The official code concatenates ``[slow, lateral]``; converting its
weights means moving those input channels of the first conv and shortcut of each Slow stage.)
The head likewise reads ``cat([fast_pooled, slow_pooled])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..nn import ConcatDim, Dim, SlimLinear, SlimmableModel, check_dropout, classifier_head, conv_bn
from .registry import check_count, check_counts, register_variant

STAGE_PLANES = (64, 128, 256, 512)
DEFAULT_DEPTHS = (3, 4, 6, 3)


class Bottleneck3d(nn.Module):
    """tx1x1 conv (``temporal_kernel`` t), 1x3x3 conv (spatial stride), 1x1x1 conv, residual."""

    def __init__(self, in_dim: Dim, inner: Dim, out_dim: Dim, stride: int, temporal_kernel: int,
                 max_width: float) -> None:
        super().__init__()
        w, s = max_width, (1, stride, stride)
        self.body = nn.Sequential(
            conv_bn(in_dim, inner, (temporal_kernel, 1, 1), act=nn.ReLU, max_width=w,
                    spatial_dims=3),
            conv_bn(inner, inner, (1, 3, 3), s, act=nn.ReLU, max_width=w, spatial_dims=3),
            conv_bn(inner, out_dim, 1, max_width=w, spatial_dims=3),
        )
        self.shortcut = (nn.Identity() if stride == 1 and in_dim == out_dim else
                         conv_bn(in_dim, out_dim, 1, s, max_width=w, spatial_dims=3))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _stem(in_chans: int, out: Dim, temporal_kernel: int, max_width: float) -> nn.Sequential:
    """(t)x7x7 conv with spatial stride 2, then a 1x3x3 max-pool with spatial stride 2."""
    return nn.Sequential(
        *conv_bn(in_chans, out, (temporal_kernel, 7, 7), (1, 2, 2), act=nn.ReLU,
                 max_width=max_width, spatial_dims=3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    )


def _stage(in_dim: Dim, planes: int, depth: int, stride: int, temporal_kernel: int,
           max_width: float, slim: bool = True) -> tuple[nn.Sequential, Dim]:
    """One ResNet stage of bottlenecks and its output dimension (``planes * 4``)."""
    out = Dim(planes * 4, slim=slim)
    inner = Dim(planes, ratio=0.25) if slim else Dim(planes, slim=False)
    blocks = []
    for i in range(depth):
        blocks.append(Bottleneck3d(in_dim, inner, out, stride if i == 0 else 1,
                                   temporal_kernel, max_width))
        in_dim = out
    return nn.Sequential(*blocks), out


class Slow(SlimmableModel):
    """The Slow pathway alone (Slow-only, a ResNet-50 on clips): temporal kernels of 3 only in
    the bottlenecks of res4 and res5 (``temporal_kernels``), 1 elsewhere. See the module
    docstring for the MAC convention (Slow 8x8: 8 frames, 54.52 G at 256²)."""

    temporal = True

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        depths: Sequence[int] = DEFAULT_DEPTHS,
        temporal_kernels: Sequence[int] = (1, 1, 3, 3),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        depths = check_counts("depths", depths, len(STAGE_PLANES))
        temporal_kernels = check_counts("temporal_kernels", temporal_kernels, len(STAGE_PLANES))
        w = self.max_width
        dim = Dim(64, ratio=0.25)
        layers: list[nn.Module] = [_stem(in_chans, dim, 1, w)]
        for stage, (planes, n, tk) in enumerate(zip(STAGE_PLANES, depths, temporal_kernels)):
            block, dim = _stage(dim, planes, n, 1 if stage == 0 else 2, tk, w)
            layers.append(block)
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(dim, num_classes, max_width=w, dropout=dropout,
                                    spatial_dims=3)
        self._finish()


class SlowFastStage(nn.Module):
    """A lateral connection from Fast to Slow, then one stage of each pathway.

    The lateral is a (``fusion_kernel``)x1x1 conv with temporal stride ``alpha`` (BN, ReLU),
    so the Fast features meet the Slow ones at the Slow frame rate; its output goes in front of
    the Slow features (see the module docstring).
    """

    def __init__(self, lateral: nn.Module, slow: nn.Module, fast: nn.Module) -> None:
        super().__init__()
        self.lateral, self.slow, self.fast = lateral, slow, fast

    def forward(self, slow: Tensor, fast: Tensor) -> tuple[Tensor, Tensor]:
        slow = torch.cat([self.lateral(fast), slow], 1)
        return self.slow(slow), self.fast(fast)


class SlowFastBody(nn.Module):
    """Both pathways from one clip ``[N, C, T, H, W]``: Fast sees all ``T`` frames, Slow every
    ``alpha``-th (``T / alpha``, rounded up, as many as the strided laterals produce). Returns
    the pooled features ``cat([fast, slow])``, ``[N, fast + slow channels]``."""

    def __init__(self, slow_stem: nn.Module, fast_stem: nn.Module, stages: list[SlowFastStage],
                 alpha: int) -> None:
        super().__init__()
        self.slow_stem, self.fast_stem = slow_stem, fast_stem
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        slow = self.slow_stem(x[:, :, :: self.alpha])
        fast = self.fast_stem(x)
        for stage in self.stages:
            slow, fast = stage(slow, fast)
        return torch.cat([self.pool(fast).flatten(1), self.pool(slow).flatten(1)], 1)


class SlowFast(SlimmableModel):
    """SlowFast (default 4x16, R50): Fast pathway at ``alpha`` times the frame rate with
    ``1 / beta_inv`` of the channels, laterals after the stem and res2..res4 with
    ``fusion_ratio`` times the Fast channels. The configuration's frames are the Fast
    pathway's (32 for 4x16). See the module docstring for slimming and the MAC convention."""

    temporal = True

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        width_range: tuple[float, float] = (0.25, 1.0),
        depths: Sequence[int] = DEFAULT_DEPTHS,
        alpha: int = 8,
        beta_inv: int = 8,
        fusion_ratio: int = 2,
        fusion_kernel: int = 5,
        slow_temporal_kernels: Sequence[int] = (1, 1, 3, 3),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(width_range, num_classes, in_chans)
        for option, value in (("alpha", alpha), ("beta_inv", beta_inv),
                              ("fusion_ratio", fusion_ratio), ("fusion_kernel", fusion_kernel)):
            check_count(option, value)
        depths = check_counts("depths", depths, len(STAGE_PLANES))
        slow_temporal_kernels = check_counts("slow_temporal_kernels", slow_temporal_kernels,
                                             len(STAGE_PLANES))
        check_dropout(dropout)
        w = self.max_width
        slow, fast = Dim(64, ratio=0.25), Dim(64 // beta_inv, slim=False)
        slow_stem, fast_stem = _stem(in_chans, slow, 1, w), _stem(in_chans, fast, 5, w)
        stages = []
        for stage, (planes, n, tk) in enumerate(zip(STAGE_PLANES, depths, slow_temporal_kernels)):
            stride = 1 if stage == 0 else 2
            lateral = Dim(fast.base * fusion_ratio, slim=False)
            lateral_conv = conv_bn(fast, lateral, (fusion_kernel, 1, 1), (alpha, 1, 1),
                                   act=nn.ReLU, max_width=w, spatial_dims=3)
            slow_stage, slow = _stage(ConcatDim.of(lateral.base, slow), planes, n, stride, tk, w)
            fast_stage, fast = _stage(fast, planes // beta_inv, n, stride, 3, w, slim=False)
            stages.append(SlowFastStage(lateral_conv, slow_stage, fast_stage))
        self.features = SlowFastBody(slow_stem, fast_stem, stages, alpha)
        self.head = nn.Sequential(
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            SlimLinear(ConcatDim.of(fast.base, slow), num_classes, max_width=w),
        )
        self._finish()


register_variant("slow_r50", Slow)
register_variant("slowfast_r50", SlowFast)
