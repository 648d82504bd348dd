"""A synthetic action dataset whose classes are motions, made from Fashion-MNIST items.

Each video shows one Fashion-MNIST item (train videos use the training images, validation
videos the test images), tinted with a random colour, on a dark noisy canvas. The class is
what the item *does*: move right, left, down or up, turn clockwise or anticlockwise, grow or
shrink. Item, colour, start position, angle and size are drawn independently of the class and
every trajectory is symmetric in time around the middle frame, so one frame says nothing
about the direction: a network has to compare frames. The position of each frame is jittered
by a little camera shake, so the motion is estimated better from more frames.

The videos are generated deterministically in memory (``data.format: synthetic_motion``), or
written to disk as real video files in the folder layout (``mutualnet make-video-data OUT``),
which ``data.format: video_folder`` reads back.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DataError

__all__ = ["MOTION_CLASSES", "MOTION_FRAMES", "MOTION_SIZE", "make_motion_videos",
           "write_motion_videos"]

MOTION_CLASSES = ("right", "left", "down", "up", "clockwise", "anticlockwise", "zoom_in",
                  "zoom_out")
MOTION_FRAMES = 16
MOTION_SIZE = 32
#: videos per split of the in-memory dataset
MOTION_TRAIN = 2400
MOTION_VAL = 800
MOTION_FPS = 8

_TRAVEL = 0.7        # translation over the whole video, in canvas half-widths
_TURN = math.pi      # rotation over the whole video, radians
_ZOOM = math.log(2)  # log of the size ratio between the last and the first frame
_SHAKE = 0.07        # per-frame position jitter (std), in canvas half-widths


@functools.lru_cache(maxsize=2)
def _fashion_items(split: str) -> torch.Tensor:
    """Fashion-MNIST images of one split, uint8 ``[N, 28, 28]`` (found as the default format;
    kept, as calibration and evaluation rebuild the datasets)."""
    from .idx import fashion_mnist_files, find_idx_files, load_idx_split

    files = find_idx_files(fashion_mnist_files())
    part = "train" if split == "train" else "val"
    images, _ = load_idx_split(files[f"{part}_images"], files[f"{part}_labels"])
    return images


def _trajectories(labels: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
    """Affine maps from canvas to item coordinates, ``[N, T, 2, 3]`` (``affine_grid``'s theta)."""
    n = labels.shape[0]
    u = torch.linspace(-0.5, 0.5, frames).expand(n, frames)  # time, symmetric around 0
    centre = (torch.rand(n, 1, 2, generator=gen) - 0.5) * 0.5
    angle = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    log_size = math.log(0.55) + (torch.rand(n, 1, generator=gen) - 0.5) * 0.3
    directions = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    move = torch.zeros(n, 1, 2)
    translating = labels < 4
    move[translating, 0] = directions[labels[translating]]
    turn = torch.zeros(n, 1)
    turn[labels == 4], turn[labels == 5] = 1.0, -1.0
    zoom = torch.zeros(n, 1)
    zoom[labels == 6], zoom[labels == 7] = 1.0, -1.0
    position = (centre + _TRAVEL * move * u[..., None]
                + _SHAKE * torch.randn(n, frames, 2, generator=gen))
    angle = angle + _TURN * turn * u
    scale = torch.exp(log_size + _ZOOM * zoom * u)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # item = R(-angle) (canvas - position) / scale
    a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    b = -(a @ position[..., None])
    return torch.cat([a, b], -1)


def make_motion_videos(split: str, count: int, seed: int = 0, frames: int = MOTION_FRAMES,
                       size: int = MOTION_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` videos of one split, uint8 ``[N, T, 3, size, size]``, and their labels ``[N]``.

    Classes are balanced; the same arguments give the same videos.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    gen = torch.Generator().manual_seed(seed * 2 + (split == "val"))
    items = _fashion_items(split)
    k = len(MOTION_CLASSES)
    labels = (torch.arange(count) % k)[torch.randperm(count, generator=gen)]
    picks = torch.randint(0, items.shape[0], (count,), generator=gen)
    colours = 0.45 + 0.55 * torch.rand(count, 3, 1, 1, 1, generator=gen)
    background = 0.12 * torch.rand(count, 1, 1, 1, 1, generator=gen)
    theta = _trajectories(labels, frames, gen)
    videos = torch.empty(count, frames, 3, size, size, dtype=torch.uint8)
    for lo in range(0, count, 256):
        hi = min(lo + 256, count)
        m = hi - lo
        item = items[picks[lo:hi]].float().div_(255.0)[:, None]  # [m, 1, 28, 28]
        item = item.repeat_interleave(frames, 0)
        grid = F.affine_grid(theta[lo:hi].reshape(m * frames, 2, 3), [m * frames, 1, size, size],
                             align_corners=False)
        drawn = F.grid_sample(item, grid, align_corners=False).view(m, frames, 1, size, size)
        noise = 0.04 * torch.randn(m, frames, 3, size, size, generator=gen)
        pixels = background[lo:hi] + drawn * colours[lo:hi].view(m, 1, 3, 1, 1) + noise
        videos[lo:hi] = pixels.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return videos, labels


def write_motion_videos(out: str | Path, train_per_class: int = 50, val_per_class: int = 20,
                        seed: int = 0, codec: str = "libx264") -> dict[str, int]:
    """Write the dataset as ``out/{train,val}/<motion>/<n>.mp4`` (H.264, ``MOTION_FPS`` fps).

    Returns the number of files written per split. Refuses a non-empty ``out``; ``out``
    appears only once every file is written (:func:`~mutualnet.data.base.new_folder`).
    """
    from .base import new_folder

    splits = (("train", train_per_class), ("val", val_per_class))
    for split, per_class in splits:
        if per_class < 1:
            raise DataError(f"{split} needs at least one video per class, got {per_class}")
    counts = {}
    with new_folder(out, "videos") as folder:
        for split, per_class in splits:
            videos, labels = make_motion_videos(split, per_class * len(MOTION_CLASSES), seed)
            for i, (video, label) in enumerate(zip(videos, labels.tolist())):
                target = folder / split / MOTION_CLASSES[label]
                target.mkdir(parents=True, exist_ok=True)
                _write_video(target / f"{i:05d}.mp4", video, codec)
            counts[split] = len(videos)
    return counts


def _write_video(path: Path, video: torch.Tensor, codec: str) -> None:
    """uint8 ``[T, 3, H, W]`` -> a yuv420p video file."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=MOTION_FPS)
        stream.height, stream.width = video.shape[-2:]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for frame in video.permute(0, 2, 3, 1).numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
