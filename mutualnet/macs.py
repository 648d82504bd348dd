"""MAC and parameter counts of a configuration, through ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .nn.model import SlimmableModel
from .space import whole

__all__ = ["count_macs"]


def count_macs(
    model: nn.Module,
    resolution: int,
    *,
    width: float | None = None,
    frames: int | None = None,
    in_chans: int | None = None,
) -> tuple[int, int]:
    """(MACs, parameters) of one image (or clip) through the active configuration.

    MACs are multiply-accumulates of convolution and linear layers (the unit papers call
    FLOPs): the counter's FLOPs halved. ``width`` (``frames``) evaluates another width (frame
    count) of a slimmable model without changing its active configuration. A plain module is
    counted as it is: its input channels are those of its first convolution unless
    ``in_chans=`` says otherwise, and a clip network needs ``frames=``.
    """
    resolution = whole("resolution", resolution, "a positive whole number of pixels")
    if resolution is None:
        raise ConfigError("count_macs needs a resolution")
    if in_chans is None:
        in_chans = getattr(model, "in_chans", None)
        if in_chans is None:
            first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)),
                         None)
            if first is None:
                raise ConfigError("in_chans= is needed to count a model that has no "
                                  "convolution and does not declare it")
            in_chans = first.in_channels
    temporal = getattr(model, "temporal", None)
    if temporal and frames is None and isinstance(model, SlimmableModel):
        frames = model.config.frames  # the active configuration's, as for the width
    if temporal is not None and temporal != bool(frames):
        raise ConfigError(f"{type(model).__name__} takes {'clips' if temporal else 'images'}: "
                          f"{'give' if temporal else 'drop'} the frame count (frames=, "
                          f"--frames on the command line)")
    shape = (1, in_chans) + ((frames,) if frames else ()) + (resolution, resolution)
    param = next(model.parameters(), None)
    x = torch.zeros(shape, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    modes = {m: m.training for m in model.modules()}
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        if isinstance(model, SlimmableModel):
            with model.using(width if width is not None else model.config.width):
                with torch.no_grad(), counter:
                    model(x)
                params = model.active_param_count()
        else:
            if width is not None:
                raise ConfigError("width can only be given for a slimmable model")
            with torch.no_grad(), counter:
                model(x)
            params = sum(p.numel() for p in model.parameters())
    finally:
        for m, mode in modes.items():
            m.training = mode
    return counter.get_total_flops() // 2, params
