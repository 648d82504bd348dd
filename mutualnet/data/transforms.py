"""Per-item transforms, written with torch (and Pillow for decoded image files) only.

Two families:

* :class:`TrainTransform` / :class:`EvalTransform` take a ``uint8`` tensor ``[C, H, W]``
  (the in-memory formats: IDX, CIFAR, synthetic) and never touch PIL, so a 28x28 item costs
  a few tens of microseconds.
* :class:`ImageTrainTransform` / :class:`ImageEvalTransform` take a decoded RGB
  ``PIL.Image`` (image folders), do the geometry with Pillow and finish with the tensor steps.

All randomness comes from torch's global generator, so ``torch.manual_seed`` and the per-worker
seeding of ``DataLoader`` make augmentation reproducible. Every transform is a plain picklable
object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AUGMENTS, SHIFT_PADS
from ..errors import ConfigError

__all__ = [
    "EvalTransform",
    "ImageEvalTransform",
    "ImageTrainTransform",
    "TrainTransform",
    "pil_to_tensor",
]

_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# ITU-R 601-2 luma, the weights of Pillow's convert("L")
_LUMA = (0.299, 0.587, 0.114)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size


class _Normalize:
    """uint8 ``[C, H, W]`` -> float32 ``(x / 255 - mean) / std``, optionally resized first."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size = _check_size(image_size)
        if len(mean) != len(std) or not mean:
            raise ConfigError(f"mean and std must have the same, non-zero length, "
                              f"got {list(mean)} and {list(std)}")
        if any(not s > 0 for s in std):
            raise ConfigError(f"std values must be positive, got {list(std)}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        std_t = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        # (x / 255 - mean) / std == x * scale - bias
        self._scale = 1.0 / (255.0 * std_t)
        self._bias = mean_t / std_t

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        x = img.to(torch.float32)
        size = self.image_size
        if x.shape[-2] != size or x.shape[-1] != size:
            x = _resize(x, size)
        return self._adjust(x).mul_(self._scale).sub_(self._bias)

    def _adjust(self, x: torch.Tensor) -> torch.Tensor:
        """Photometric changes of a float image in 0..255 before normalisation (none here)."""
        return x

    def _check_channels(self, img: torch.Tensor) -> None:
        if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != len(self.mean):
            raise ValueError(f"expected a uint8 [{len(self.mean)}, H, W] image, got "
                             f"{img.dtype} of shape {tuple(img.shape)}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float ``[C, H, W]`` image (or ``[T, C, H, W]`` clip)
    to ``size x size``."""
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out if x.dim() == 4 else out.squeeze(0)


def _reflected(n: int, offset: int) -> torch.Tensor:
    """Indices ``i + offset`` for ``i < n``, reflected at the borders without repeating the
    edge (as ``F.pad(mode="reflect")``, also for offsets past the border)."""
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    period = 2 * (n - 1)
    i = (torch.arange(n) + offset) % period
    return torch.where(i < n, i, period - i)


def _shift(img: torch.Tensor, dy: int, dx: int, pad: str = "zeros") -> torch.Tensor:
    """Translate by (dy, dx) pixels: ``out[y, x] = img[y + dy, x + dx]``, the pixels from
    outside filled with zeros or, for ``pad="reflect"``, the image reflected at its border.

    The same as padding by ``max|d|`` pixels and cropping back at an offset.
    """
    if dy == 0 and dx == 0:
        return img
    h, w = img.shape[-2:]
    if pad == "reflect":
        return img.index_select(-2, _reflected(h, dy)).index_select(-1, _reflected(w, dx))
    out = torch.zeros_like(img)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    sy, ty = (dy, 0) if dy >= 0 else (0, -dy)
    sx, tx = (dx, 0) if dx >= 0 else (0, -dx)
    hh, ww = h - abs(dy), w - abs(dx)
    out[..., ty:ty + hh, tx:tx + ww] = img[..., sy:sy + hh, sx:sx + ww]
    return out


def _resized_crop_box(height: int, width: int, scale: Sequence[float],
                      ratio: Sequence[float] = _RATIO) -> tuple[int, int, int, int]:
    """A random crop ``(top, left, h, w)`` covering ``scale`` of the area with aspect in ``ratio``.

    The Inception-style sampling (ten tries, then a centre crop clamped to ``ratio``), drawing
    from torch's global generator.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    draws = torch.rand(10, 4).tolist()
    for u_scale, u_ratio, u_top, u_left in draws:
        target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def _check_augment(augment: str, shift: int, crop_scale: Sequence[float], shift_pad: str,
                   color_jitter: float) -> None:
    if augment not in AUGMENTS:
        raise ConfigError(f"data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ConfigError(f"data.shift must be an integer >= 0, got {shift!r}")
    if shift_pad not in SHIFT_PADS:
        raise ConfigError(f"data.shift_pad must be one of {', '.join(SHIFT_PADS)}, "
                          f"got {shift_pad!r}")
    if isinstance(color_jitter, bool) or not isinstance(color_jitter, (int, float)) \
            or not 0 <= color_jitter < 1:
        raise ConfigError(f"data.color_jitter must be in [0, 1), got {color_jitter!r}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1]:
        raise ConfigError(f"data.crop_scale must be [lo, hi] with 0 < lo <= hi, "
                          f"got {list(crop_scale)}")


class TrainTransform(_Normalize):
    """Training augmentation for a ``uint8 [C, H, W]`` tensor; returns normalised float32.

    ``shift``: random translation by up to ``shift`` pixels (the pixels from outside zeros, or the
    image reflected at its border with ``shift_pad="reflect"``: a random crop of the
    reflect-padded image), ``resized_crop``: random resized crop (area ``crop_scale``, aspect
    3/4..4/3) to ``image_size``, ``none``: nothing; then a horizontal flip with p=0.5 when
    ``hflip``, a bilinear antialiased resize to ``image_size`` when the size still differs,
    ``color_jitter`` when it is above 0, and normalisation.

    ``color_jitter`` j: brightness, contrast and saturation, in a random order, each scaled by
    its own factor drawn uniformly from [1 - j, 1 + j]: the image blended with black, with the
    mean of its grey version, and with its grey version (ITU-R 601-2 luma; saturation leaves
    one-channel images as they are), clamped to 0..255 after each.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], *,
                 augment: str = "shift", shift: int = 2, hflip: bool = True,
                 crop_scale: Sequence[float] = (0.08, 1.0), shift_pad: str = "zeros",
                 color_jitter: float = 0.0):
        super().__init__(image_size, mean, std)
        _check_augment(augment, shift, crop_scale, shift_pad, color_jitter)
        self.augment = augment
        self.shift = shift
        self.hflip = bool(hflip)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.shift_pad = shift_pad
        self.color_jitter = float(color_jitter)

    def augment_uint8(self, img: torch.Tensor) -> torch.Tensor:
        """The random geometry alone (uint8 in, uint8 out; may share memory with ``img``)."""
        if self.augment == "resized_crop":
            top, left, h, w = _resized_crop_box(img.shape[-2], img.shape[-1], self.crop_scale)
            img = img[..., top:top + h, left:left + w]
            if self.hflip and torch.rand(()).item() < 0.5:
                img = img.flip(-1)
            return img
        s = self.shift if self.augment == "shift" else 0
        if s > 0:
            # one draw decides dy, dx and the flip coin
            n = 2 * s + 1
            r = int(torch.randint(0, n * n * 2, ()).item())
            flip, r = r & 1, r >> 1
            img = _shift(img, r // n - s, r % n - s, self.shift_pad)
            if self.hflip and flip:
                img = img.flip(-1)
            return img
        if self.hflip and torch.rand(()).item() < 0.5:
            img = img.flip(-1)
        return img

    def _adjust(self, x: torch.Tensor) -> torch.Tensor:
        j = self.color_jitter
        if j == 0:
            return x
        order = torch.randperm(3).tolist()
        factors = (1 + j * (2 * torch.rand(3) - 1)).tolist()
        channels = x.shape[-3]
        # grey: luma of RGB, the channels' mean otherwise
        weights = _LUMA if channels == 3 else (1.0 / channels,) * channels
        luma = torch.tensor(weights, dtype=x.dtype).view(channels, 1, 1)
        for op in order:
            factor = factors[op]
            if op == 0:  # brightness: toward black
                x = x.mul(factor)
            else:
                gray = (x * luma).sum(-3, keepdim=True)
                if op == 1:  # contrast: toward the mean grey level
                    target = gray.mean(dim=(-3, -2, -1), keepdim=True)
                elif channels == 3:  # saturation: toward the grey image
                    target = gray
                else:
                    continue
                x = x.mul(factor).add_(target, alpha=1 - factor)
            x = x.clamp_(0, 255)
        return x

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self._check_channels(img)
        return self._finish(self.augment_uint8(img))

    def __repr__(self) -> str:
        return (f"TrainTransform(image_size={self.image_size}, augment={self.augment!r}, "
                f"shift={self.shift}, shift_pad={self.shift_pad!r}, hflip={self.hflip}, "
                f"crop_scale={self.crop_scale}, color_jitter={self.color_jitter}, "
                f"mean={self.mean}, std={self.std})")


class EvalTransform(_Normalize):
    """Evaluation transform for a ``uint8 [C, H, W]`` tensor: resize to ``image_size`` when the
    size differs (bilinear, antialiased), then normalise."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self._check_channels(img)
        return self._finish(img)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


def pil_to_tensor(img) -> torch.Tensor:
    """A PIL image (RGB or L) as a ``uint8 [C, H, W]`` tensor."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _resized_shape(w: int, h: int, size: int) -> tuple[int, int]:
    """The size of a ``w`` x ``h`` image resized so its shorter side is ``size``."""
    if w <= h:
        return size, max(1, int(size * h / w))
    return max(1, int(size * w / h)), size


def _resize_shorter_and_crop(img, resize: int, size: int):
    """Resize a PIL image so its shorter side is ``resize`` (bilinear, antialiased), then
    centre crop ``size`` x ``size``. Where the whole resized image would be far larger than
    the crop (a long strip of a picture), only the crop's region is resized (Pillow's
    ``box``: the same sampling positions, a grey level off in some pixels by rounding), so
    memory and time stay those of the crop."""
    from PIL import Image

    w, h = img.size
    new_w, new_h = _resized_shape(w, h, resize)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if new_w * new_h > 16 * max(size, resize) ** 2:
        sx, sy = w / new_w, h / new_h
        return img.resize((size, size), Image.BILINEAR, box=(
            left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return img.crop((left, top, left + size, top + size))


class ImageTrainTransform(TrainTransform):
    """Training augmentation for a decoded ``PIL.Image`` (image folders).

    ``resized_crop``: random resized crop (area ``crop_scale``, aspect 3/4..4/3) straight to
    ``image_size`` with one Pillow resize; ``shift`` / ``none``: resize the shorter side to
    ``image_size`` and centre crop, then shift by up to ``shift`` pixels for ``shift``. Then a
    random horizontal flip when ``hflip``, and normalisation.
    """

    def __call__(self, img) -> torch.Tensor:
        from PIL import Image

        size = self.image_size
        if self.augment == "resized_crop":
            width, height = img.size
            top, left, h, w = _resized_crop_box(height, width, self.crop_scale)
            img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
            x = pil_to_tensor(img)
            if self.hflip and torch.rand(()).item() < 0.5:
                x = x.flip(-1)
        else:
            x = self.augment_uint8(pil_to_tensor(_resize_shorter_and_crop(img, size, size)))
        self._check_channels(x)
        return self._finish(x)

    def __repr__(self) -> str:
        return "Image" + super().__repr__()


class ImageEvalTransform(_Normalize):
    """Evaluation transform for a ``PIL.Image``: resize the shorter side to
    ``round(image_size / crop_ratio)``, centre crop ``image_size``, normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], *,
                 crop_ratio: float = 0.875):
        super().__init__(image_size, mean, std)
        if not 0 < crop_ratio <= 1:
            raise ConfigError(f"data.eval_crop_ratio must be in (0, 1], got {crop_ratio!r}")
        self.crop_ratio = float(crop_ratio)

    def __call__(self, img) -> torch.Tensor:
        size = self.image_size
        resize = max(size, int(round(size / self.crop_ratio)))
        x = pil_to_tensor(_resize_shorter_and_crop(img, resize, size))
        self._check_channels(x)
        return self._finish(x)

    def __repr__(self) -> str:
        return (f"ImageEvalTransform(image_size={self.image_size}, crop_ratio={self.crop_ratio}, "
                f"mean={self.mean}, std={self.std})")
