"""COCO instances annotations for detection and segmentation: reader, transform, collate.

A dataset root holds ``annotations/instances_<split>.json`` and the images of that split in
``<split>/`` (``instances_train2017.json`` and ``train2017/`` in COCO's own layout), for the
two splits ``train*`` and ``val*``. Every image is letterboxed into a square canvas of the
largest resolution: resized so its longer side fits, placed at the top-left, padded with the
mean colour (zeros after normalisation). Training flips horizontally with p=0.5 (images,
boxes and masks together). Annotation mistakes are found when the file is read and reported
as one-line :class:`DataError` s, naming the annotation (a compressed RLE string that does not
decode is found when its image is read, naming the image). Boxes of zero size or wholly
outside their image give detection no target; the reader names them in one warning.

Items are ``(image float [3, S, S], target)``: for detection a dict (see
``mutualnet.tasks.detection``), for segmentation an int64 mask ``[S, S]`` with 0 background,
``k + 1`` for the ``k``-th category (in order of id, any number of them) and :data:`IGNORE`
(-1) for padding and crowd regions.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError, listed, no_folder
from .folder import to_8_bits
from .transforms import _check_size, _Normalize, pil_to_tensor

__all__ = ["CocoIndex", "CocoDataset", "collate_dense", "find_split", "parse_coco",
           "read_coco"]

#: the mask value of pixels no loss or metric counts (padding, crowd regions)
IGNORE = -1
log = logging.getLogger("mutualnet")


@dataclass
class CocoIndex:
    """The parts of an instances file a dataset needs, checked."""

    source: str
    categories: list[tuple[int, str]]
    #: per image: (id, file name, height, width)
    images: list[tuple[int, str, int, int]]
    #: per image: list of (bbox xywh, category index, iscrowd, segmentation or None)
    annotations: list[list[tuple[list[float], int, bool, Any]]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in self.categories]


def _fail(source: str, what: str) -> DataError:
    return DataError(f"{source}: {what}; fix the annotations or re-export them")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def parse_coco(data: Any, source: str, need_masks: bool = False) -> CocoIndex:
    """Check and index a decoded instances JSON (``need_masks``: every annotation must carry a
    polygon or RLE segmentation)."""
    if not isinstance(data, dict):
        raise _fail(source, "the file must hold a JSON object with images, annotations and "
                            "categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise _fail(source, f"'{key}' is missing or not a list")
    categories = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise _fail(source, f"categories[{i}] has no integer 'id'")
        categories.append((c["id"], str(c.get("name", c["id"]))))
    categories.sort()
    if not categories:
        raise _fail(source, "there are no categories")
    if len({c for c, _ in categories}) != len(categories):
        raise _fail(source, "two categories share an id")
    cat_index = {c: k for k, (c, _) in enumerate(categories)}
    images, position = [], {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise _fail(source, f"images[{i}] is not an object")
        ok = (isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
              and all(isinstance(im.get(k), int) and im[k] > 0 for k in ("width", "height")))
        if not ok:
            raise _fail(source, f"images[{i}] needs an integer id, a file_name and positive "
                                f"integer width and height")
        if im["id"] in position:
            raise _fail(source, f"image id {im['id']} appears twice")
        position[im["id"]] = len(images)
        images.append((im["id"], im["file_name"], im["height"], im["width"]))
    annotations: list[list] = [[] for _ in images]
    ids = ", ".join(str(c) for c, _ in categories[:12]) + (", ..." if len(categories) > 12
                                                           else "")
    unused: list[str] = []  # boxes that give detection no target
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            raise _fail(source, f"annotations[{i}] is not an object")
        if a.get("image_id") not in position:
            raise _fail(source, f"annotations[{i}] refers to image_id {a.get('image_id')!r}, "
                                f"which is not among the images")
        if a.get("category_id") not in cat_index:
            raise _fail(source, f"annotations[{i}] has category_id {a.get('category_id')!r}, "
                                f"which is not among the category ids ({ids})")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_number, bbox))
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise _fail(source, f"annotations[{i}] needs a bbox [x, y, width, height] with "
                                f"non-negative width and height, got {bbox!r}")
        crowd = a.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise _fail(source, f"annotations[{i}] has iscrowd {crowd!r}; it must be 0 or 1")
        segmentation = a.get("segmentation")
        _, _, height, width = images[position[a["image_id"]]]
        if need_masks:
            fault = _segmentation_fault(segmentation)
            if fault:
                raise _fail(source, f"annotations[{i}] has {fault}; segmentation needs "
                                    f"polygons or RLE")
            problem = _mask_problem(segmentation, height, width)
            if problem:
                raise _fail(source, f"annotations[{i}] has {problem}")
        x, y, w, h = bbox
        if not need_masks and (w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0
                               or y + h <= 0):
            unused.append(f"annotations[{i}]")
        annotations[position[a["image_id"]]].append(
            ([float(v) for v in bbox], cat_index[a["category_id"]], bool(crowd),
             segmentation if need_masks else None))
    if unused:
        log.warning("%s: %d box(es) of zero size or wholly outside their image are not used: "
                    "%s", source, len(unused), listed(unused, 5))
    return CocoIndex(source, categories, images, annotations)


def _segmentation_fault(seg: Any) -> str | None:
    """What makes ``seg`` no polygon list or RLE, for a message, or None."""
    if seg is None or seg == [] or seg == {}:
        return "no segmentation"
    if isinstance(seg, list):
        for j, p in enumerate(seg):
            if not (isinstance(p, list) and all(map(_number, p))):
                return f"a polygon (segmentation[{j}]) that is not a list of numbers"
            if len(p) % 2:
                return (f"a polygon (segmentation[{j}]) of {len(p)} coordinates, an odd "
                        f"number: x, y pairs are needed")
            if len(p) < 6:
                return f"a polygon (segmentation[{j}]) of fewer than 3 points"
        return None
    if isinstance(seg, dict):
        if isinstance(seg.get("size"), list) and isinstance(seg.get("counts"), (list, str)):
            return None
        return "an RLE segmentation without a size list and counts"
    return f"a segmentation that is a {type(seg).__name__}, neither polygons nor RLE"


#: polygon points at most this many image sizes outside the image (pycocotools' rasteriser
#: overflows, even crashes, on coordinates far beyond it)
_POLYGON_REACH = 16


def _mask_problem(seg: Any, height: int, width: int) -> str | None:
    """What is wrong with a well-formed segmentation of an image of ``height × width``,
    checked without decoding it, or None."""
    if isinstance(seg, list):
        reach = _POLYGON_REACH * max(height, width)
        if any(abs(v) > reach for polygon in seg for v in polygon):
            return (f"a polygon point far outside its {width}x{height} image (more than "
                    f"{_POLYGON_REACH} image sizes away)")
        return None
    size, counts = seg["size"], seg["counts"]
    if size != [height, width]:
        return (f"an RLE mask of size {size!r}, which does not match its image "
                f"(height {height}, width {width})")
    if isinstance(counts, str):
        if not counts.isascii():
            return "an RLE segmentation whose counts string is not ASCII"
    elif not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) \
            or sum(counts) > height * width:
        return ("an RLE segmentation whose counts are not non-negative integers within the "
                "image's pixel count")
    return None


def read_coco(path: Path, need_masks: bool = False) -> CocoIndex:
    """Read and check an instances JSON file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise DataError(f"cannot read annotations {path} ({reason})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f"line {exc.lineno}, column {exc.colno}: {exc.msg}" \
            if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise DataError(f"{path} is not valid JSON ({where}); fix or re-export the "
                        f"annotations") from None
    return parse_coco(data, str(path), need_masks)


def find_split(root: Path, split: str) -> tuple[Path, Path]:
    """``(annotation file, image folder)`` of the split ``train`` or ``val`` under ``root``."""
    layout = (f"point --data (data.root) at a folder holding annotations/instances_{split}*.json "
              f"and the images in {split}*/")
    if not root.is_dir():
        raise DataError(f"{no_folder(root)}; {layout}")
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise DataError(f"{root} has {what} annotations/instances_{split}*.json; {layout}")
    images = root / found[0].stem[len("instances_"):]
    if not images.is_dir():
        raise DataError(f"image folder {images} (named after {found[0].name}) does not exist; "
                        f"{layout}")
    return found[0], images


def _to_rle(seg: Any, height: int, width: int):
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return {"size": seg["size"], "counts": seg["counts"].encode("ascii")}


def rasterise(annotations: Sequence[tuple], height: int, width: int, source: str
              ) -> np.ndarray:
    """An int32 class map of one image: larger objects first, so smaller ones stay visible."""
    from pycocotools import mask as mask_utils

    out = np.zeros((height, width), dtype=np.int32)
    for _, label, crowd, seg in sorted(annotations, key=lambda a: -a[0][2] * a[0][3]):
        try:
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                m = mask_utils.decode(_to_rle(seg, height, width))
        except (ValueError, TypeError, KeyError, UnicodeEncodeError, OverflowError) as exc:
            raise DataError(f"{source}: a segmentation cannot be decoded ({exc}); fix the "
                            f"annotations") from None
        if m.shape != (height, width):
            raise DataError(f"{source}: an RLE mask of size {list(m.shape)} does not match its "
                            f"image ({height}x{width}); fix the annotations")
        out[m > 0] = IGNORE if crowd else label + 1
    return out


#: the EXIF tag saying how an image stored turned is shown (1: as stored)
_ORIENTATION = 0x0112


def _as_annotated(img, width: int, height: int):
    """The image as its annotations see it. A photo stored sideways with an EXIF orientation
    is shown turned by viewers and annotation tools (and read turned by detectron2): it is
    turned when that gives the annotation file's size and the stored pixels do not. Where
    both sizes agree (a half turn, a mirror), the stored pixels are taken, as most readers do."""
    from PIL import ImageOps

    if img.size == (width, height) or img.getexif().get(_ORIENTATION, 1) == 1:
        return img
    turned = ImageOps.exif_transpose(img)
    return turned if turned.size == (width, height) else img


def collate_dense(batch: Sequence[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
    """Images stacked; masks stacked, box targets kept as a list (their sizes differ)."""
    images = torch.stack([item[0] for item in batch])
    targets = [item[1] for item in batch]
    if isinstance(targets[0], torch.Tensor):
        return images, torch.stack(targets)
    return images, targets


class CocoDataset(Dataset):
    """One split of a COCO-style dataset for ``task`` (detection or segmentation).

    ``pixels``: the images themselves (uint8 ``[H, W, 3]`` arrays, in-memory data such as
    the synthetic scenes); otherwise files in ``image_dir``, checked to exist up front.
    """

    collate_fn = staticmethod(collate_dense)

    def __init__(self, index: CocoIndex, task: str, image_size: int, mean: Sequence[float],
                 std: Sequence[float], *, train: bool, hflip: bool = True,
                 image_dir: Path | None = None, pixels: Sequence[np.ndarray] | None = None
                 ) -> None:
        self.index, self.task, self.train, self.hflip = index, task, train, bool(hflip)
        self.image_size = _check_size(image_size)
        self.normalize = _Normalize(image_size, mean, std)
        self.image_dir, self.pixels = image_dir, pixels
        if pixels is None:
            for _, name, _, _ in index.images:
                if not (image_dir / name).is_file():
                    raise DataError(f"image file {image_dir / name} listed in {index.source} is "
                                    f"missing; restore it or remove it from the annotations")

    def __len__(self) -> int:
        return len(self.index.images)

    def _read(self, i: int) -> torch.Tensor:
        image_id, name, height, width = self.index.images[i]
        if self.pixels is not None:
            return torch.from_numpy(np.ascontiguousarray(self.pixels[i])).permute(2, 0, 1)
        from PIL import Image, UnidentifiedImageError

        path = self.image_dir / name
        try:
            with Image.open(path) as img:
                x = pil_to_tensor(to_8_bits(_as_annotated(img, width, height)).convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError):
            raise DataError(f"image file {path} is unreadable; restore it or remove it from "
                            f"{self.index.source}") from None
        if tuple(x.shape[-2:]) != (height, width):
            raise DataError(f"image file {path} is {x.shape[-1]}x{x.shape[-2]} but "
                            f"{self.index.source} says {width}x{height}; fix the annotations")
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image_id, name, height, width = self.index.images[i]
        size = self.image_size
        img = self._read(i)
        scale = size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        flip = self.train and self.hflip and bool(torch.rand(()) < 0.5)
        x = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=True)[0] if (h, w) != (height, width) else img.float()
        x = x.mul_(self.normalize._scale).sub_(self.normalize._bias)
        canvas = torch.zeros(3, size, size)
        canvas[:, :h, :w] = x.flip(-1) if flip else x
        annotations = self.index.annotations[i]
        if self.task == "segmentation":
            classes = torch.from_numpy(rasterise(annotations, height, width,
                                                 f"{self.index.source}: image {name}"))
            classes = F.interpolate(classes[None, None].float(), size=(h, w),
                                    mode="nearest")[0, 0].long()
            mask = torch.full((size, size), IGNORE, dtype=torch.long)
            mask[:h, :w] = classes.flip(-1) if flip else classes
            return canvas, mask
        boxes = torch.tensor([a[0] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes = boxes * scale
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width * scale)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height * scale)
        if flip:
            boxes = torch.stack([width * scale - boxes[:, 2], boxes[:, 1],
                                 width * scale - boxes[:, 0], boxes[:, 3]], 1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([a[1] for a in annotations], dtype=torch.long)
        crowd = torch.tensor([a[2] for a in annotations], dtype=torch.bool)
        target = {
            "boxes": boxes[keep], "labels": labels[keep], "iscrowd": crowd[keep],
            "image_id": image_id, "scale": scale, "size": size,
            # what scoring compares with: every box as the file has it (x, y, w, h, original
            # pixels), none clipped or dropped
            "file_boxes": torch.tensor([a[0] for a in annotations],
                                       dtype=torch.float64).reshape(-1, 4),
            "file_labels": labels, "file_iscrowd": crowd,
        }
        return canvas, target

    def __repr__(self) -> str:
        return (f"CocoDataset({self.index.source}: {len(self)} images, {self.task}, "
                f"{self.image_size} px canvas, train={self.train})")
