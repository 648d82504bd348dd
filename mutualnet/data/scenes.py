"""Synthetic scenes for detection and segmentation: Fashion-MNIST items on larger canvases.

Each scene is a square RGB canvas with a noisy, tinted background and one to three
Fashion-MNIST items (train items for the train split, test items for val), each scaled to a
quarter to a half of the canvas, coloured, and placed where it overlaps the others little.
An item's mask is its pixels brighter than a threshold (later items occlude earlier ones),
its box the mask's extent. Scenes depend only on (seed, split, size): the same everywhere.
They come as a COCO instances dict (RLE masks) plus pixel arrays, so the COCO reader serves
them too, and :func:`write_scenes` writes them as COCO JSON + PNG files.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .idx import FASHION_MNIST_CLASSES, find_idx_files, fashion_mnist_files, load_idx_split

__all__ = ["SCENES_TRAIN", "SCENES_VAL", "make_scenes", "write_scenes"]

SCENES_TRAIN = 3000
SCENES_VAL = 500
_MASK_LEVEL = 0.25  # item pixels above this fraction of white belong to its mask
_MIN_AREA = 16  # items occluded below this many pixels are dropped


@functools.lru_cache(maxsize=2)
def _items(split: str, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    files = find_idx_files(Path(root) if root else fashion_mnist_files())
    part = "train" if split == "train" else "val"
    return load_idx_split(files[f"{part}_images"], files[f"{part}_labels"])


def _encode(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@functools.lru_cache(maxsize=4)
def make_scenes(count: int, size: int = 96, seed: int = 0, split: str = "train",
                root: str | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """``count`` scenes of ``size`` px: (COCO instances dict, uint8 ``[size, size, 3]`` arrays).

    ``root``: a folder of Fashion-MNIST IDX files (default: the system's or the cache's).
    """
    if size < 32:
        raise DataError(f"scenes need a canvas of at least 32 pixels, got {size}")
    images, labels = _items(split, root)
    gen = torch.Generator().manual_seed(seed * 2 + (split != "train"))
    coco: dict[str, Any] = {
        "images": [], "annotations": [],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(FASHION_MNIST_CLASSES)],
    }
    pixels = []
    for n in range(count):
        base = torch.rand(3, 1, 1, generator=gen) * 60 + 20
        texture = F.interpolate(torch.randn(1, 3, size // 8, size // 8, generator=gen),
                                size=(size, size), mode="bilinear", align_corners=False)[0]
        canvas = base + 12 * texture + 8 * torch.randn(3, size, size, generator=gen)
        owner = torch.full((size, size), -1, dtype=torch.long)
        placed: list[tuple[int, int, int]] = []
        objects = []
        for _ in range(int(torch.randint(1, 4, (), generator=gen))):
            k = int(torch.randint(0, images.shape[0], (), generator=gen))
            side = int(torch.randint(size // 4, size // 2 + 1, (), generator=gen))
            for _ in range(10):  # a spot overlapping the placed items little
                y, x = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=gen))
                if all(_overlap((y, x, side), p) < 0.25 for p in placed):
                    break
            else:
                continue
            item = F.interpolate(images[k][None, None].float() / 255, size=(side, side),
                                 mode="bilinear", align_corners=False, antialias=True)[0, 0]
            colour = torch.rand(3, 1, 1, generator=gen) * 140 + 115
            region = canvas[:, y:y + side, x:x + side]
            canvas[:, y:y + side, x:x + side] = region * (1 - item) + colour * item
            owner[y:y + side, x:x + side][item > _MASK_LEVEL] = len(objects)
            placed.append((y, x, side))
            objects.append(int(labels[k]))
        image_id = n + 1
        coco["images"].append({"id": image_id, "file_name": f"{image_id:06d}.png",
                               "width": size, "height": size})
        for j, label in enumerate(objects):
            mask = (owner == j).numpy()
            area = int(mask.sum())
            if area < _MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id,
                "category_id": label + 1, "iscrowd": 0, "area": area,
                "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "segmentation": _encode(mask),
            })
        pixels.append(np.rint(canvas.permute(1, 2, 0).numpy()).clip(0, 255).astype(np.uint8))
    return coco, pixels


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection over the smaller of two squares (y, x, side)."""
    iy = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ix = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return iy * ix / min(a[2], b[2]) ** 2


def write_scenes(out: str | Path, train: int = SCENES_TRAIN, val: int = SCENES_VAL,
                 size: int = 96, seed: int = 0, root: str | None = None) -> dict[str, Any]:
    """Write ``annotations/instances_{train,val}.json`` and ``{train,val}/*.png`` under ``out``,
    a new or empty folder, which appears only once every file is written."""
    from PIL import Image

    from .base import check_new_folder, new_folder

    check_new_folder(out)  # before the scenes are made
    scenes = {split: make_scenes(count, size, seed, split, root)  # before anything is written
              for split, count in (("train", train), ("val", val))}
    with new_folder(out, "scenes") as folder:
        (folder / "annotations").mkdir()
        for split, (coco, pixels) in scenes.items():
            (folder / split).mkdir()
            for image, array in zip(coco["images"], pixels):
                Image.fromarray(array).save(folder / split / image["file_name"])
            (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return {"out": str(out), "train": train, "val": val, "size": size, "seed": seed}
