"""A deterministic, learnable toy dataset generated in memory (tests and quick demos)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic"]

SYNTHETIC_CLASSES = 10
SYNTHETIC_CHANNELS = 3
SYNTHETIC_TRAIN = 640
SYNTHETIC_VAL = 320


def _class_patterns(size: int, seed: int) -> torch.Tensor:
    """One smooth random RGB pattern per class, float ``[K, 3, size, size]`` with unit std."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(SYNTHETIC_CLASSES, SYNTHETIC_CHANNELS, 4, 4, generator=gen)
    fine = torch.randn(SYNTHETIC_CLASSES, SYNTHETIC_CHANNELS, 8, 8, generator=gen)
    pattern = (F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
               + 0.5 * F.interpolate(fine, size=(size, size), mode="bicubic",
                                     align_corners=False))
    pattern = pattern - pattern.mean(dim=(1, 2, 3), keepdim=True)
    return pattern / pattern.std(dim=(1, 2, 3), keepdim=True)


def _items(patterns: torch.Tensor, count: int, size: int, margin: int,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % SYNTHETIC_CLASSES
    labels = labels[torch.randperm(count, generator=gen)]
    offsets = torch.randint(0, 2 * margin + 1, (count, 2), generator=gen).tolist()
    images = torch.empty(count, SYNTHETIC_CHANNELS, size, size, dtype=torch.uint8)
    for i, (label, (oy, ox)) in enumerate(zip(labels.tolist(), offsets)):
        crop = patterns[label, :, oy:oy + size, ox:ox + size]
        noise = torch.randn(SYNTHETIC_CHANNELS, size, size, generator=gen)
        pixel = 128.0 + 48.0 * crop + 40.0 * noise
        images[i] = pixel.round_().clamp_(0, 255).to(torch.uint8)
    return images, labels


def make_synthetic(image_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """640 train / 320 val uint8 ``[N, 3, S, S]`` images of 10 classes, the same for a seed.

    Each class is a fixed smooth random pattern; an item is that pattern shifted by up to
    ``S / 8`` pixels plus Gaussian pixel noise, so a small ConvNet learns it in a few hundred
    steps but not in a handful.
    """
    margin = max(1, image_size // 8)
    patterns = _class_patterns(image_size + 2 * margin, seed)
    train_images, train_labels = _items(patterns, SYNTHETIC_TRAIN, image_size, margin, seed + 1)
    val_images, val_labels = _items(patterns, SYNTHETIC_VAL, image_size, margin, seed + 2)
    return {"train_images": train_images, "train_labels": train_labels,
            "val_images": val_images, "val_labels": val_labels}
