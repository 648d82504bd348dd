"""Clips for action recognition: sampling, transforms and datasets of videos.

Items are float32 clips ``[C, T, S, S]`` (``T = frames``), or ``[K, C, T, S, S]`` when
evaluation takes ``K`` clips per video (``data.eval_clips``); ``mutualnet.evaluate`` averages
the predictions of a video's clips. Training takes one clip at a random temporal offset, an
evaluation clip is centred, and ``K`` clips are spaced uniformly over the video.

Formats: ``video_folder`` (``root/{train,val}/<class>/*.mp4|avi|webm|mkv``, the Kinetics and
UCF101 layout, decoded with PyAV) and ``synthetic_motion`` (see :mod:`.motion`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .folder import _FIX, _reason, folder_samples
from .transforms import ImageEvalTransform, TrainTransform

if TYPE_CHECKING:
    from ..config import DataConfig
    from .build import DataInfo

__all__ = ["VIDEO_EXTENSIONS", "ClipEvalTransform", "ClipSampler", "ClipTrainTransform",
           "MotionDataset", "VideoFolderDataset", "build_video_datasets", "check_video",
           "load_video"]

log = logging.getLogger("mutualnet")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv")


@dataclass(frozen=True)
class ClipSampler:
    """Which frames of a video make its clips: ``frames`` frames ``stride`` apart.

    A video shorter than the clip's span repeats its last frame.
    """

    frames: int
    stride: int = 1
    eval_clips: int = 1

    @property
    def span(self) -> int:
        return (self.frames - 1) * self.stride + 1

    def indices(self, num_frames: int, train: bool) -> list[list[int]]:
        """Frame indices of each clip: one random clip (train), else ``eval_clips`` clips."""
        room = max(num_frames - self.span, 0)
        if train:
            starts = [int(torch.randint(0, room + 1, ()).item())]
        elif self.eval_clips == 1:
            starts = [room // 2]
        else:
            starts = [round(i * room / (self.eval_clips - 1)) for i in range(self.eval_clips)]
        last = num_frames - 1
        return [[min(s + i * self.stride, last) for i in range(self.frames)] for s in starts]


def _check_clip(clip: torch.Tensor, channels: int) -> None:
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[1] != channels:
        raise ValueError(f"expected a uint8 [T, {channels}, H, W] clip, got {clip.dtype} of "
                         f"shape {tuple(clip.shape)}")


def _centre_square(clip: torch.Tensor) -> torch.Tensor:
    h, w = clip.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return clip[..., top:top + side, left:left + side]


def _frames_first(x: torch.Tensor) -> torch.Tensor:
    """``[T, C, H, W]`` -> ``[C, T, H, W]`` (the layout of 3D convolutions)."""
    return x.transpose(0, 1).contiguous()


class ClipTrainTransform(TrainTransform):
    """Training augmentation of a uint8 clip ``[T, C, H, W]``, one random geometry for all its
    frames; returns normalised float32 ``[C, T, S, S]``.

    ``resized_crop`` crops a random box (area ``crop_scale``, aspect 3/4..4/3) and resizes it;
    ``shift`` / ``none`` take the centred square first. See :class:`TrainTransform`.
    """

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_clip(clip, len(self.mean))
        if self.augment != "resized_crop":
            clip = _centre_square(clip)
        return _frames_first(self._finish(self.augment_uint8(clip)))

    def __repr__(self) -> str:
        return "Clip" + super().__repr__()


class ClipEvalTransform(ImageEvalTransform):
    """Evaluation transform of a uint8 clip ``[T, C, H, W]``: resize the shorter side to
    ``round(image_size / crop_ratio)``, centre crop ``image_size``, normalise; returns
    ``[C, T, S, S]``."""

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_clip(clip, len(self.mean))
        size = self.image_size
        short = max(size, int(round(size / self.crop_ratio)))
        h, w = clip.shape[-2:]
        x = clip.to(torch.float32)
        if min(h, w) != short:
            scale = short / min(h, w)
            new = (max(short, round(h * scale)), max(short, round(w * scale)))
            x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        x = x[..., top:top + size, left:left + size]
        return _frames_first(self._finish(x))

    def __repr__(self) -> str:
        return (f"ClipEvalTransform(image_size={self.image_size}, crop_ratio={self.crop_ratio}, "
                f"mean={self.mean}, std={self.std})")


def _stack(clips: list[torch.Tensor]) -> torch.Tensor:
    """One clip as it is, several (multi-clip evaluation) stacked into ``[K, C, T, S, S]``."""
    return clips[0] if len(clips) == 1 else torch.stack(clips)


class MotionDataset(Dataset):
    """In-memory videos uint8 ``[N, T, C, H, W]`` with labels; items are clips (see module)."""

    def __init__(self, videos: torch.Tensor, labels: torch.Tensor, sampler: ClipSampler,
                 transform: Callable[[torch.Tensor], torch.Tensor], train: bool, name: str = ""):
        self.videos, self.labels = videos, labels.to(torch.int64)
        self.targets: list[int] = self.labels.tolist()
        self.sampler, self.transform, self.train, self.name = sampler, transform, train, name

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        video = self.videos[index]
        indices = self.sampler.indices(video.shape[0], self.train)
        return _stack([self.transform(video[ix]) for ix in indices]), self.targets[index]

    def __repr__(self) -> str:
        n, t, c, h, w = self.videos.shape
        return (f"MotionDataset({self.name}: {n} videos of {t} frames {c}x{h}x{w}, "
                f"{self.sampler}, transform={self.transform!r})")


def _decode(container, wanted: set[int], last: int | None = None,
            ) -> tuple[dict[int, np.ndarray], int]:
    """Decode the first video stream of ``container`` up to frame ``last`` (to its end when
    None), keeping the ``wanted`` frames as uint8 RGB ``[H, W, 3]`` arrays; also the number of
    frames decoded."""
    arrays: dict[int, np.ndarray] = {}
    count = 0
    for index, frame in enumerate(container.decode(container.streams.video[0])):
        count = index + 1
        if index in wanted:
            arrays[index] = frame.to_ndarray(format="rgb24")
        if index == last:
            break
    return arrays, count


def _wanted(clips: list[list[int]]) -> set[int]:
    return {i for clip in clips for i in clip}


def _read_clips(path: str | os.PathLike, choose: Callable[[int], list[list[int]]],
                ) -> tuple[list[list[int]], dict[int, np.ndarray]]:
    """The clips' frame indices and their frames, decoding no further than the last one needed.
    Without a frame count in the container (or with one that is too high), a first pass
    counts the frames."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(f"{path} holds no video stream (it is not a video, or it was cut "
                            f"short); {_FIX}")
        stated = container.streams.video[0].frames
        if stated > 0:
            clips = choose(stated)
            wanted = _wanted(clips)
            arrays, count = _decode(container, wanted, max(wanted))
            if len(arrays) == len(wanted):
                return clips, arrays
        else:
            _, count = _decode(container, set())
    if not count:
        raise DataError(f"video {path} holds no frames; {_FIX}")
    clips = choose(count)
    wanted = _wanted(clips)
    with av.open(str(path)) as container:
        arrays, _ = _decode(container, wanted, max(wanted))
    return clips, arrays


def load_video(path: str | os.PathLike,
               choose: Callable[[int], list[list[int]]]) -> list[torch.Tensor]:
    """Decode ``path`` with PyAV; ``choose(num_frames)`` gives the frame indices of each clip.

    Returns one uint8 RGB ``[T, 3, H, W]`` tensor per clip; only the frames of the clips are
    kept, so memory does not grow with the video's length. An unreadable file is a
    :class:`DataError` naming it.
    """
    try:
        clips, arrays = _read_clips(path, choose)
    except DataError:
        raise
    except Exception as exc:  # PyAV raises many types for damaged files
        raise DataError(f"cannot read video {path} ({_reason(exc)}); {_FIX}") from None
    return [torch.from_numpy(np.stack([arrays[i] for i in ix])).permute(0, 3, 1, 2)
            for ix in clips]


def check_video(path: str) -> str | None:
    """Cheap check (open and decode the first frame): None when fine, else the reason. Damage
    further into a file shows only when it is read (decoding every video of a large set up
    front would take hours); :class:`VideoFolderDataset` then reads the next video instead."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return "no video stream (not a video, or cut short)"
            next(container.decode(container.streams.video[0]))
    except StopIteration:
        return "no frames"
    except Exception as exc:
        return _reason(exc)
    return None


class VideoFolderDataset(Dataset):
    """The videos of one split (``split_dir/<class>/...``), decoded on access.

    Files with the extensions in :data:`VIDEO_EXTENSIONS` count as videos; ``classes`` and
    ``skip_bad_files`` work as for :class:`~mutualnet.data.folder.ImageFolderDataset`, except
    that the check up front decodes only a video's first frame: with ``skip_bad_files`` a
    video found damaged further in when it is read is replaced by the next readable one (with
    a warning), the same one every time.
    """

    def __init__(self, split_dir: str | os.PathLike, sampler: ClipSampler,
                 transform: Callable[[torch.Tensor], torch.Tensor], train: bool, *,
                 classes: list[str] | None = None, skip_bad_files: bool = False):
        self.root = Path(split_dir).expanduser()
        self.classes, samples, self.skipped = folder_samples(
            self.root, classes, "videos", check_video, skip_bad_files, VIDEO_EXTENSIONS)
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.sampler, self.transform, self.train = sampler, transform, train
        self.skip_bad_files = skip_bad_files
        self._replaced: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for step in range(len(self.samples) if self.skip_bad_files else 1):
            path, label = self.samples[(index + step) % len(self.samples)]
            try:
                clips = load_video(path, lambda n: self.sampler.indices(n, self.train))
            except DataError as exc:
                if not self.skip_bad_files:
                    raise
                if path not in self._replaced:
                    self._replaced.add(path)
                    log.warning("%s: the next video takes its place (data.skip_bad_files)",
                                str(exc).removesuffix(f"; {_FIX}"))
                continue
            return _stack([self.transform(c) for c in clips]), label
        raise DataError(f"{self.root} holds no readable videos; add some or point --data "
                        f"elsewhere")

    def __repr__(self) -> str:
        return (f"VideoFolderDataset({self.root}: {len(self.samples)} videos, "
                f"{len(self.classes)} classes, {self.sampler}, transform={self.transform!r})")


def build_video_datasets(cfg: DataConfig, image_size: int, frames: int | None,
                         mean: list[float], std: list[float],
                         ) -> tuple[Dataset, Dataset, DataInfo]:
    """Train and val clip datasets of a video format (see :func:`~.build.build_datasets`)."""
    from .build import DataInfo, augmentation
    from .motion import MOTION_CLASSES, MOTION_FRAMES, MOTION_TRAIN, MOTION_VAL, make_motion_videos

    if frames is None:
        raise ConfigError(f"data.format {cfg.format} gives clips: set space.frames, e.g. [8, 4]")
    sampler = ClipSampler(frames, cfg.frame_stride, cfg.eval_clips)
    train_tf = ClipTrainTransform(image_size, mean, std, **augmentation(cfg))
    val_tf = ClipEvalTransform(image_size, mean, std, crop_ratio=cfg.eval_crop_ratio)
    if cfg.format == "synthetic_motion":
        if sampler.span > MOTION_FRAMES:
            raise ConfigError(f"a clip of {frames} frames {cfg.frame_stride} apart spans "
                              f"{sampler.span} frames but synthetic_motion videos have "
                              f"{MOTION_FRAMES}; lower space.frames or data.frame_stride")
        train = MotionDataset(*make_motion_videos("train", MOTION_TRAIN), sampler, train_tf,
                              True, name="synthetic_motion train")
        val = MotionDataset(*make_motion_videos("val", MOTION_VAL), sampler, val_tf, False,
                            name="synthetic_motion val")
        source = (f"synthetic_motion: {MOTION_TRAIN}/{MOTION_VAL} videos of Fashion-MNIST items "
                  f"in {len(MOTION_CLASSES)} motions, generated in memory")
        return train, val, DataInfo(len(MOTION_CLASSES), 3, list(MOTION_CLASSES), mean, std,
                                    source)
    if not cfg.root:
        raise DataError("data.format video_folder needs a location: point --data (data.root) "
                        "at a folder holding train/<class>/<videos> and val/<class>/<videos>")
    root = Path(cfg.root).expanduser()
    train = VideoFolderDataset(root / "train", sampler, train_tf, True,
                               skip_bad_files=cfg.skip_bad_files)
    val = VideoFolderDataset(root / "val", sampler, val_tf, False, classes=train.classes,
                             skip_bad_files=cfg.skip_bad_files)
    skipped = len(train.skipped) + len(val.skipped)
    source = f"video folder {root}" + (f" ({skipped} unreadable files skipped)" if skipped
                                       else "")
    return train, val, DataInfo(len(train.classes), 3, list(train.classes), mean, std, source)
