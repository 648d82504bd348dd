"""Datasets and transforms: ``build_datasets(cfg, image_size) -> (train, val, DataInfo)``.

Formats (``DataConfig.format``): ``fashion_mnist`` (found in the Debian package
``dataset-fashion-mnist``, the cache, or downloaded), ``mnist`` / ``idx`` (a folder of IDX
files), ``cifar10`` / ``cifar100`` (python-version pickles, read without running code),
``image_folder`` (``train/<class>/*``, ``val/<class>/*``) and ``synthetic`` (in memory).
Clips for action recognition (``build_datasets(cfg, size, frames=T)``): ``video_folder``
(``train/<class>/*.mp4``, ...) and ``synthetic_motion`` (in memory; see :mod:`.video`).
"""

from .build import DataInfo, build_datasets
from .idx import fashion_mnist_files
from .transforms import EvalTransform, ImageEvalTransform, ImageTrainTransform, TrainTransform

__all__ = [
    "DataInfo",
    "EvalTransform",
    "ImageEvalTransform",
    "ImageTrainTransform",
    "TrainTransform",
    "build_datasets",
    "fashion_mnist_files",
]
