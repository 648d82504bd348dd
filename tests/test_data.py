"""The data package: formats, their failure modes, transforms, and locating Fashion-MNIST."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import tarfile
import urllib.error
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mutualnet.config import DataConfig
from mutualnet.data import DataInfo, EvalTransform, TrainTransform, build_datasets
from mutualnet.data import cifar as cifar_mod
from mutualnet.data import idx as idx_mod
from mutualnet.data.transforms import _shift
from mutualnet.errors import ConfigError, DataError, MutualNetError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------------------------------------
# helpers: tiny files written the way the real ones are


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    return (struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
            + arr.astype(np.uint8).tobytes())


def tiny_idx_arrays(n_train=6, n_val=4, h=5, w=7, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % classes).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_val) % classes).astype(np.uint8),
    }


def write_idx_folder(folder: Path, arrays=None, gz: bool = False) -> dict[str, np.ndarray]:
    arrays = arrays if arrays is not None else tiny_idx_arrays()
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def cifar_batch(n: int, num_classes: int, label_key: str, seed: int, str_keys=False) -> dict:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key.encode(): [int(v) for v in rng.integers(0, num_classes, n)],
             b"batch_label": b"training batch"}
    return {k.decode(): v for k, v in batch.items()} if str_keys else batch


def write_cifar10(folder: Path, protocol: int = 2) -> dict[str, dict]:
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(3, 10, "labels", i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(2, 10, "labels", 9, str_keys=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat",
                                                    "deer", "dog", "frog", "horse", "ship",
                                                    "truck")]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def write_png(path: Path, size=(12, 10), mode="RGB", fmt="PNG", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path, fmt)


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=2) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                if i % 2:
                    write_png(d / f"{i}.jpg", fmt="JPEG", seed=10 * c + i)
                else:
                    write_png(d / f"{i}.png", mode="L" if c else "RGB", seed=10 * c + i)
    return root


def assert_item(item, channels: int, size: int):
    x, y = item
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    assert x.shape == (channels, size, size)
    assert isinstance(y, int)


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trips_exact_pixels_and_labels(tmp_path, gz):
    arrays = write_idx_folder(tmp_path, gz=gz)
    train, val, info = build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert train.targets == arrays["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(val.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert val.targets == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert (len(train), len(val)) == (6, 4)
    assert info.num_classes == 6 and info.in_chans == 1  # max label + 1
    assert info.class_names == [str(i) for i in range(6)]
    assert (info.mean, info.std) == ([0.5], [0.5])
    assert str(tmp_path) in info.source
    assert_item(val[0], 1, 5)


def test_read_idx_gives_exact_uint8_tensor(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    out = idx_mod.read_idx(tmp_path / "x.gz", "images")
    assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(arr))


def test_mnist_has_ten_digit_classes_and_needs_a_root(tmp_path):
    write_idx_folder(tmp_path, tiny_idx_arrays(classes=3))
    _, _, info = build_datasets(DataConfig(format="mnist", root=str(tmp_path)), 5)
    assert info.num_classes == 10 and info.class_names[9] == "9"
    assert (info.mean, info.std) == ([0.1307], [0.3081])
    with pytest.raises(DataError, match="--data"):
        build_datasets(DataConfig(format="mnist", root=None), 28)


def test_idx_wrong_magic_names_the_file(tmp_path):
    write_idx_folder(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x02" + bad.read_bytes()[4:])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is not an IDX labels file.*"
                                        r"0x00000802.*0x00000801"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)


def test_idx_swapped_files_are_reported(tmp_path):
    arrays = write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["t10k-images-idx3-ubyte"]))
    with pytest.raises(DataError, match="swapped"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)


def test_idx_non_byte_type_is_refused():
    data = b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"\x00" * 8
    with pytest.raises(DataError, match=r"f\.idx .*type 0x0D.*0x08"):
        idx_mod.read_idx_bytes(data, "f.idx", "labels")


def test_idx_truncated_file_says_what_was_expected_and_found(tmp_path):
    write_idx_folder(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    expected = 16 + 4 * 5 * 7
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)
    msg = str(err.value)
    assert str(bad) in msg and "truncated" in msg
    assert f"4 images of 5x7 ({expected} bytes)" in msg and f"{expected - 10} bytes" in msg


def test_idx_header_cut_short_is_truncated():
    with pytest.raises(DataError, match="f is truncated"):
        idx_mod.read_idx_bytes(b"\x00\x00\x08\x03\x00\x00", "f", "images")


def test_idx_image_and_label_counts_must_agree(tmp_path):
    arrays = tiny_idx_arrays()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:5]
    write_idx_folder(tmp_path, arrays)
    with pytest.raises(DataError, match=r"6 images but .*train-labels-idx1-ubyte holds 5 labels"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)


def test_fashion_mnist_label_out_of_range(tmp_path):
    arrays = tiny_idx_arrays()
    arrays["t10k-labels-idx1-ubyte"][1] = 10
    write_idx_folder(tmp_path, arrays, gz=True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz holds label 10, outside 0..9"):
        build_datasets(DataConfig(format="fashion_mnist", root=str(tmp_path)), 28)


def test_corrupt_gzip_names_the_file(tmp_path):
    write_idx_folder(tmp_path, gz=True)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    data = bytearray(bad.read_bytes())
    bad.write_bytes(bytes(data[:len(data) // 2]))  # cut inside the deflate stream
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is not a valid gzip"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)
    data[12:20] = b"\xff" * 8  # garbage inside the stream
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)


def test_missing_idx_files_are_listed(tmp_path):
    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[.gz\].*--data"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path)), 5)
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path / "nope")), 5)
    # a file given for the folder is named as such, for every format that takes a folder
    for fmt in ("idx", "image_folder", "coco"):
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte is a file, not a folder"):
            build_datasets(DataConfig(format=fmt, root=str(tmp_path / "train-images-idx3-ubyte")),
                           5, "segmentation" if fmt == "coco" else "classification")


# ---------------------------------------------------------------------------------------------
# locating and downloading Fashion-MNIST


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    """No system copy, an empty cache, and a network that fails."""
    monkeypatch.setattr(idx_mod, "FASHION_MNIST_SYSTEM_DIRS", [tmp_path / "no-system-copy"])
    cache = tmp_path / "cache"
    monkeypatch.setenv("MUTUALNET_DATA", str(cache))
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(idx_mod, "_open_url", offline)
    return cache, calls


def serve_from(folder: Path, calls: list):
    def fake_open(url, timeout=None):
        calls.append(url)
        assert url.startswith(idx_mod.FASHION_MNIST_URL)
        return open(folder / url.rsplit("/", 1)[-1], "rb")

    return fake_open


def test_fashion_mnist_missing_everywhere_says_how_to_fix(no_fashion_mnist):
    cache, calls = no_fashion_mnist
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(format="fashion_mnist"), 28)
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "--data" in msg and "\n" not in msg
    assert calls and not list(cache.rglob("*.gz"))


def test_fashion_mnist_is_taken_from_the_system_package_dir(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "debian", gz=True)
    monkeypatch.setattr(idx_mod, "FASHION_MNIST_SYSTEM_DIRS", [tmp_path / "debian"])
    monkeypatch.setattr(idx_mod, "_open_url", None)  # never called
    train, val, info = build_datasets(DataConfig(format="fashion_mnist"), 28)
    assert "dataset-fashion-mnist" in info.source
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    assert (info.num_classes, info.in_chans, info.mean, info.std) == (10, 1, [0.286], [0.353])
    assert_item(train[0], 1, 28)  # 5x7 files resized to 28


def test_fashion_mnist_download_is_verified_and_cached(tmp_path, monkeypatch, no_fashion_mnist):
    cache, calls = no_fashion_mnist
    served = tmp_path / "served"
    arrays = write_idx_folder(served, gz=True)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in served.iterdir()}
    monkeypatch.setattr(idx_mod, "FASHION_MNIST_SHA256", sums)
    monkeypatch.setattr(idx_mod, "_open_url", serve_from(served, calls))
    train, _, info = build_datasets(DataConfig(format="fashion_mnist"), 5)
    assert len(calls) == 4
    assert sorted(p.name for p in (cache / "fashion-mnist").iterdir()) == sorted(sums)
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert str(cache / "fashion-mnist") in info.source
    # a second build uses the cache and does not fetch again
    build_datasets(DataConfig(format="fashion_mnist"), 5)
    assert len(calls) == 4


def test_fashion_mnist_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch,
                                                                  no_fashion_mnist):
    cache, calls = no_fashion_mnist
    served = tmp_path / "served"
    write_idx_folder(served, gz=True)
    monkeypatch.setattr(idx_mod, "_open_url", serve_from(served, calls))  # real checksums
    with pytest.raises(DataError, match=r"SHA-256 .* expected b0564c3e"):
        build_datasets(DataConfig(format="fashion_mnist"), 28)
    assert calls and [p for p in cache.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(idx_mod, "_open_url", None)  # never downloads
    train, val, info = build_datasets(DataConfig(format="fashion_mnist"), 28)
    assert (len(train), len(val), info.num_classes) == (60000, 10000, 10)
    assert train.images.shape == (60000, 1, 28, 28)
    assert sorted(set(val.targets)) == list(range(10))


# ---------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_folder_and_parent_read_correctly(tmp_path, protocol):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", protocol)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train, val, info = build_datasets(DataConfig(format="cifar10", root=str(root)), 32)
        assert (len(train), len(val)) == (15, 2)
        want = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
        assert torch.equal(train.images, torch.from_numpy(want.reshape(-1, 3, 32, 32)))
        assert train.targets == sum((batches[f"data_batch_{i}"][b"labels"]
                                     for i in range(1, 6)), [])
        assert val.targets == batches["test_batch"]["labels"]  # str keys work too
        assert info.class_names[0] == "airplane" and info.num_classes == 10
        assert info.in_chans == 3 and info.mean == [0.4914, 0.4822, 0.4465]
        assert_item(train[0], 3, 32)


def test_cifar10_archive_is_read_in_memory(tmp_path):
    write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train, val, info = build_datasets(DataConfig(format="cifar10", root=str(archive)), 32)
    assert (len(train), len(val)) == (15, 2) and str(archive) in info.source
    # the parent folder of the archive works too
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").unlink()
    train2, _, _ = build_datasets(DataConfig(format="cifar10", root=str(tmp_path)), 32)
    assert torch.equal(train.images, train2.images)


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = cifar_batch(4, 100, "fine_labels", 1)
    train[b"fine_labels"] = [0, 99, 42, 7]
    train[b"coarse_labels"] = [0, 19, 3, 1]
    (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(cifar_batch(2, 100, "fine_labels", 2)))
    names = [f"class{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names}))
    tr, va, info = build_datasets(DataConfig(format="cifar100", root=str(tmp_path)), 24)
    assert tr.targets == [0, 99, 42, 7] and len(va) == 2
    assert info.num_classes == 100 and info.class_names[99] == "class99"
    assert info.std == [0.2673, 0.2564, 0.2762]
    assert_item(va[1], 3, 24)  # resized from 32


def test_cifar_wrong_shape_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = cifar_batch(3, 10, "labels", 0)
    batch[b"data"] = batch[b"data"].reshape(3, 3, 32, 32)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"data_batch_3: 'data' must be a uint8 array of shape "
                                        r"\(N, 3072\).*\(3, 3, 32, 32\)"):
        build_datasets(DataConfig(format="cifar10", root=str(folder)), 32)


def test_cifar_label_out_of_range_and_count_mismatch(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = cifar_batch(3, 10, "labels", 0)
    batch[b"labels"] = [0, 10, 1]
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"data_batch_2: label 10 is outside 0..9"):
        build_datasets(DataConfig(format="cifar10", root=str(folder)), 32)
    batch[b"labels"] = [0, 1]
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"data_batch_2 holds 3 images but 2 labels"):
        build_datasets(DataConfig(format="cifar10", root=str(folder)), 32)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused_without_running_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    batch = cifar_batch(3, 10, "labels", 0)
    batch[b"labels"] = _Evil(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1 refuses to load: the file asks to run "
                                        r"code \('(posix|nt)\.system'\)"):
        build_datasets(DataConfig(format="cifar10", root=str(folder)), 32)
    assert not marker.exists()


def test_safe_unpickler_refuses_any_other_global():
    for obj in (Path("x"), {"a": io.BytesIO}, logging.getLogger):
        with pytest.raises(DataError, match="refuses to load"):
            cifar_mod.safe_unpickle(pickle.dumps(obj), "f")


def test_cifar_missing_folder_says_where_to_point(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 not found.*--data.*cifar-100-python"):
        build_datasets(DataConfig(format="cifar100", root=str(tmp_path)), 32)


# ---------------------------------------------------------------------------------------------
# image folders


def test_image_folder_reads_png_and_jpeg(tmp_path):
    root = make_image_folder(tmp_path, classes=("zebra", "ant", "cat"))
    cfg = DataConfig(format="image_folder", root=str(root), augment="resized_crop")
    train, val, info = build_datasets(cfg, 16)
    assert info.class_names == ["ant", "cat", "zebra"] and info.num_classes == 3
    assert info.in_chans == 3 and info.mean == [0.485, 0.456, 0.406]
    assert (len(train), len(val)) == (6, 6)
    assert sorted(set(train.targets)) == [0, 1, 2]
    for ds in (train, val):
        for i in range(len(ds)):
            assert_item(ds[i], 3, 16)  # grayscale PNGs become RGB


@pytest.mark.parametrize("augment", ["shift", "none"])
def test_image_folder_shift_and_none_augment(tmp_path, augment):
    root = make_image_folder(tmp_path)
    cfg = DataConfig(format="image_folder", root=str(root), augment=augment, hflip=False,
                     eval_crop_ratio=1.0)
    train, val, _ = build_datasets(cfg, 8)
    assert_item(train[0], 3, 8)
    if augment == "none":  # resize shorter side + centre crop: what eval does at ratio 1
        assert torch.equal(train[0][0], val[0][0])


def test_image_folder_bad_file_raises_naming_it(tmp_path):
    root = make_image_folder(tmp_path)
    bad = root / "train" / "dog" / "notes.jpg"
    bad.write_text("not an image")
    train, _, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    index = next(i for i, (p, _) in enumerate(train.samples) if p == str(bad))
    with pytest.raises(DataError, match=rf"cannot read image {bad}.*skip_bad_files"):
        train[index]


def test_image_folder_ignores_files_that_are_not_images_by_name(tmp_path, caplog):
    root = make_image_folder(tmp_path)
    stray = [root / "train" / "dog" / "README.txt", root / "train" / "cat" / "labels.csv",
             root / "train" / "cat" / "NOTES"]
    for f in stray:
        f.write_text("not an image")
    (root / "train" / "cat" / "UPPER.PNG").write_bytes(
        (root / "train" / "cat" / "0.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        train, val, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    paths = [p for p, _ in train.samples]
    assert not set(map(str, stray)) & set(paths)
    assert str(root / "train" / "cat" / "UPPER.PNG") in paths
    assert len(train) == 5 and len(val) == 4
    assert "ignored 3 file(s) in " + str(root / "train") + " that are not images" in caplog.text
    assert "README.txt" in caplog.text and str(root / "val") not in caplog.text


def test_image_folder_warns_of_files_beside_the_class_folders(tmp_path, caplog):
    root = make_image_folder(tmp_path)
    (root / "train" / "stray.png").write_bytes((root / "train" / "cat" / "0.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        train, _, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    assert len(train) == 4
    assert f"ignored 1 file(s) in {root / 'train'} outside any class folder: stray.png" \
        in caplog.text


def test_image_folder_does_not_follow_links_back_up_the_tree(tmp_path, caplog):
    """A link to the split folder (which holds every class) or to the folder itself would
    list images again, under the wrong class; such links are named and not followed, while a
    link to a folder elsewhere is followed."""
    root = make_image_folder(tmp_path)
    (root / "train" / "cat" / "up").symlink_to("..")
    (root / "train" / "dog" / "self").symlink_to(".")
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    write_png(elsewhere / "extra.png")
    (root / "train" / "dog" / "more").symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        train, _, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    labels = [label for _, label in train.samples]
    assert (labels.count(0), labels.count(1)) == (2, 3)
    assert "did not follow 2 folder link(s)" in caplog.text and "cat/up" in caplog.text


def test_image_folder_class_names_in_either_unicode_form_are_one_class(tmp_path):
    """A folder name copied through a system that decomposes accents (macOS) names the same
    class, in the same place of the order, as the composed one."""
    import unicodedata

    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    root = make_image_folder(tmp_path, classes=("cafe", composed, "cafeteria"))
    (root / "val" / composed).rename(root / "val" / decomposed)
    train, val, info = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    assert info.class_names == train.classes == val.classes == sorted(
        ["cafe", composed, "cafeteria"])
    assert sorted(label for _, label in val.samples) == [0, 0, 1, 1, 2, 2]
    info.check_classes({"class_names": [unicodedata.normalize("NFD", n)
                                        for n in info.class_names]})
    (root / "train" / decomposed).mkdir()
    with pytest.raises(DataError, match="one name in two Unicode forms"):
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)


def test_image_folder_skip_bad_files_drops_and_reports(tmp_path, caplog):
    root = make_image_folder(tmp_path)
    bad = root / "val" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cfg = DataConfig(format="image_folder", root=str(root), skip_bad_files=True)
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        train, val, info = build_datasets(cfg, 8)
    assert val.skipped == [str(bad)] and train.skipped == []
    assert len(val) == 4 and all(p != str(bad) for p, _ in val.samples)
    assert "skipped 1 unreadable" in caplog.text and str(bad) in caplog.text
    assert "1 unreadable files skipped" in info.source


def test_skip_bad_files_refuses_to_leave_a_training_class_empty(tmp_path):
    root = make_image_folder(tmp_path)
    for image in (root / "train" / "dog").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    cfg = DataConfig(format="image_folder", root=str(root), skip_bad_files=True)
    with pytest.raises(DataError, match=r"class folder .*train/dog holds no readable images "
                                        r"\(all were skipped as unreadable"):
        build_datasets(cfg, 8)
    # a validation split may lack a class
    for image in (root / "val" / "dog").iterdir():
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    for image in (root / "train" / "dog").iterdir():
        write_png(image, fmt="JPEG" if image.suffix == ".jpg" else "PNG")
    train, val, _ = build_datasets(cfg, 8)
    assert {label for _, label in val.samples} == {0} and len(val.skipped) == 2


def test_image_folder_val_must_have_the_same_classes(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "val" / "dog").rename(root / "val" / "dogs")
    with pytest.raises(DataError, match=r"val must hold the same class folders as train.*dog"):
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)


def test_image_folder_empty_class_or_no_split(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    with pytest.raises(DataError, match=r"train does not exist"):
        build_datasets(DataConfig(format="image_folder", root=str(tmp_path / "x")), 8)


def _png_rgb16(arr: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of ``uint16 [H, W, 3]`` (Pillow writes none)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


_LEVELS = np.arange(0, 256, 17).reshape(2, 8)  # 8-bit grey levels of a 8x2 gradient


@pytest.mark.parametrize("mode,fmt,pixels", [
    ("I;16", "PNG", (_LEVELS * 257).astype(np.uint16)),
    ("I;16B", "TIFF", (_LEVELS * 257).astype(">u2")),
    ("I", "TIFF", (_LEVELS * 257).astype(np.int32)),  # 16-bit content in 32 bits
    ("I", "TIFF", (_LEVELS * 4112).astype(np.int32)),  # beyond 16 bits: scaled by the maximum
    ("F", "TIFF", (_LEVELS / 255).astype(np.float32)),  # 0..1
])
def test_16_bit_and_float_grey_images_are_scaled_to_8_bits(tmp_path, mode, fmt, pixels):
    from PIL import Image

    from mutualnet.data.folder import load_image

    path = tmp_path / f"gradient.{fmt.lower()}"
    Image.frombytes(mode, pixels.shape[::-1], pixels.tobytes()).save(path, fmt)
    with Image.open(path) as img:
        assert img.mode == mode
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), np.repeat(_LEVELS[..., None], 3, -1))


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    from mutualnet.data.folder import load_image

    levels = np.stack([_LEVELS, 255 - _LEVELS, np.full_like(_LEVELS, 100)], -1)
    (tmp_path / "rgb16.png").write_bytes(_png_rgb16((levels * 257).astype(np.uint16)))
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgb16.png")), levels)


def test_exif_orientation_turns_a_phone_photo_upright(tmp_path):
    from PIL import Image

    from mutualnet.data.folder import load_image

    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95, exif=exif)
    upright = load_image(tmp_path / "phone.jpg")
    assert upright.size == (8, 16)
    grey = np.asarray(upright).astype(float)
    assert grey[:8].mean() > 200 and grey[8:].mean() < 50  # the left half is now on top


def test_skip_bad_files_skips_a_jpeg_cut_half_way(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path)
    cut = root / "train" / "cat" / "cut.jpg"
    write_png(cut, size=(64, 64), fmt="JPEG")
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with Image.open(cut) as img:
        img.verify()  # the damage is beyond what the file's structure shows
    train, _, info = build_datasets(DataConfig(format="image_folder", root=str(root),
                                               skip_bad_files=True), 8)
    assert train.skipped == [str(cut)] and len(train) == 4
    assert "1 unreadable files skipped" in info.source
    train, _, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    index = next(i for i, (p, _) in enumerate(train.samples) if p == str(cut))
    with pytest.raises(DataError, match=rf"cannot read image {cut} \(.*truncated.*skip_bad_files"):
        train[index]


def test_image_folder_val_may_have_no_images_of_a_class(tmp_path):
    root = make_image_folder(tmp_path, classes=("cat", "dog", "zz"))
    for f in (root / "val" / "zz").iterdir():
        f.unlink()
    train, val, info = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    assert info.class_names == ["cat", "dog", "zz"] and len(train) == 6
    assert len(val) == 4 and sorted(set(val.targets)) == [0, 1]
    (root / "val" / "zz").rmdir()
    with pytest.raises(DataError, match=r"val must hold the same class folders as train: it "
                                        r"lacks zz; add .*empty"):
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)


def test_image_folder_empty_train_class_says_to_remove_it_from_every_split(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "train" / "zz").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/zz holds no images \(\.jpg, "
                                        r"\.jpeg, \.png and \d+ other endings Pillow reads\); "
                                        r"add some, or remove the class from every split"):
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)


def test_class_names_in_messages_show_unicode_as_is_on_one_line(tmp_path):
    root = make_image_folder(tmp_path, classes=("ñandú", "猫_cat"))
    (root / "val" / "猫_cat").rename(root / "val" / "new\nline")
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    message = str(err.value)
    assert "lacks 猫_cat" in message and "extra new\\nline" in message
    assert "\n" not in message
    info = DataInfo(2, 3, ["ñandú", "猫_cat"], source="here")
    with pytest.raises(DataError) as err:
        info.check_classes({"class_names": ["ñandú", "tab\there"]})
    message = str(err.value)
    assert "the classes ñandú, 猫_cat but the run was trained on ñandú, tab\\there" in message
    assert "\n" not in message and "\t" not in message


# ---------------------------------------------------------------------------------------------
# transforms


def test_eval_transform_normalises_exactly():
    img = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = EvalTransform(6, mean, std)(img)
    want = (img.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert out.dtype == torch.float32 and torch.allclose(out, want, atol=1e-6)
    assert img.dtype == torch.uint8  # input untouched
    resized = EvalTransform(10, mean, std)(img)
    assert resized.shape == (3, 10, 10)


def _shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    s = max(abs(dy), abs(dx))
    padded = torch.nn.functional.pad(img, (s, s, s, s))
    h, w = img.shape[-2:]
    return padded[..., s + dy:s + dy + h, s + dx:s + dx + w]


def test_shift_is_a_zero_filled_translation_of_at_most_shift_pixels():
    img = torch.randint(1, 256, (1, 9, 9), dtype=torch.uint8)
    tf = TrainTransform(9, [0.0], [1.0], augment="shift", shift=2, hflip=True)
    seen = set()
    torch.manual_seed(0)
    for _ in range(300):
        out = (tf(img) * 255).round().to(torch.uint8)
        matches = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (0, 1)
                   if torch.equal(out, _shifted(img.flip(-1) if f else img, dy, dx))]
        assert matches, "output is not a shifted (and maybe flipped) copy"
        seen.add(matches[0])
    assert len(seen) == 50  # every shift, flipped and not


def _reflect_shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    s = max(abs(dy), abs(dx), 1)
    padded = torch.nn.functional.pad(img.float()[None], (s, s, s, s), mode="reflect")[0]
    h, w = img.shape[-2:]
    return padded[..., s + dy:s + dy + h, s + dx:s + dx + w].to(img.dtype)


def test_reflect_shift_is_a_crop_of_the_reflect_padded_image():
    """shift_pad: reflect is the CIFAR recipe's augmentation: reflect-pad by ``shift`` pixels,
    then a random crop back to the image size."""
    img = torch.randint(0, 256, (3, 9, 9), dtype=torch.uint8)
    tf = TrainTransform(9, [0.0] * 3, [1.0] * 3, augment="shift", shift=2, hflip=True,
                        shift_pad="reflect")
    seen = set()
    torch.manual_seed(0)
    for _ in range(300):
        out = (tf(img) * 255).round().to(torch.uint8)
        matches = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (0, 1)
                   if torch.equal(out, _reflect_shifted(img, dy, dx).flip(-1) if f
                                  else _reflect_shifted(img, dy, dx))]
        assert matches, "output is not a crop of the reflect-padded (and maybe flipped) image"
        seen.add(matches[0])
    assert len(seen) == 50
    with pytest.raises(ConfigError, match="data.shift_pad must be one of zeros, reflect"):
        TrainTransform(9, [0.0], [1.0], shift_pad="edge")
    # a shift past the border reflects again (F.pad refuses a pad as large as the image)
    line = torch.arange(4, dtype=torch.uint8).view(1, 1, 4)
    assert _shift(line, 0, 5, "reflect").tolist() == [[[1, 0, 1, 2]]]


def _blend(a: torch.Tensor, b, factor: float) -> torch.Tensor:
    return (factor * a + (1 - factor) * b).clamp(0, 255)


def test_color_jitter_scales_brightness_contrast_and_saturation_in_a_random_order():
    img = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    tf = TrainTransform(6, [0.0] * 3, [1.0] * 3, augment="none", hflip=False, color_jitter=0.4)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    outs = []
    torch.manual_seed(5)
    for _ in range(20):
        state = torch.get_rng_state()
        out = tf(img) * 255
        torch.set_rng_state(state)
        order, factors = torch.randperm(3).tolist(), (1 + 0.4 * (2 * torch.rand(3) - 1)).tolist()
        x = img.float()
        for op in order:
            gray = (x * luma).sum(0, keepdim=True)
            x = (_blend(x, 0.0, factors[0]) if op == 0 else
                 _blend(x, gray.mean(), factors[1]) if op == 1 else _blend(x, gray, factors[2]))
        assert torch.allclose(out, x, atol=1e-3)
        torch.set_rng_state(state)
        tf(img)  # the generator moves on exactly as it did
        outs.append(out)
    assert len({o.sum().item() for o in outs}) == 20
    gray_img = torch.randint(0, 256, (1, 6, 6), dtype=torch.uint8)
    gray_tf = TrainTransform(6, [0.0], [1.0], augment="none", hflip=False, color_jitter=0.4)
    torch.manual_seed(1)
    assert not torch.equal(gray_tf(gray_img), EvalTransform(6, [0.0], [1.0])(gray_img))
    plain = TrainTransform(6, [0.0] * 3, [1.0] * 3, augment="none", hflip=False)
    assert torch.equal(plain(img), EvalTransform(6, [0.0] * 3, [1.0] * 3)(img))
    with pytest.raises(ConfigError, match=r"data.color_jitter must be in \[0, 1\)"):
        TrainTransform(6, [0.0], [1.0], color_jitter=1.5)


@pytest.mark.parametrize("augment", ["shift", "resized_crop", "none"])
def test_train_transform_shape_dtype_and_determinism(augment):
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    tf = TrainTransform(32, [0.3], [0.4], augment=augment, shift=3, crop_scale=(0.2, 1.0))
    torch.manual_seed(123)
    a = [tf(img) for _ in range(5)]
    torch.manual_seed(123)
    b = [tf(img) for _ in range(5)]
    assert all(x.shape == (1, 32, 32) and x.dtype == torch.float32 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if augment != "none":
        assert any(not torch.equal(a[0], x) for x in a[1:])


def test_no_augment_without_flip_equals_eval():
    img = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    train = TrainTransform(12, [0.5] * 3, [0.25] * 3, augment="none", hflip=False)
    assert torch.equal(train(img), EvalTransform(12, [0.5] * 3, [0.25] * 3)(img))


def test_bad_mean_std_length_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"data.mean has 2 value\(s\) but synthetic images "
                                        r"have 3 channel"):
        build_datasets(DataConfig(format="synthetic", mean=[0.5] * 2), 8)
    with pytest.raises(DataError, match=r"data.std has 1 value\(s\).*3 channel"):
        build_datasets(DataConfig(format="synthetic", std=[0.2]), 8)
    write_idx_folder(tmp_path)
    with pytest.raises(DataError, match=r"data.mean has 3 value\(s\).*1 channel"):
        build_datasets(DataConfig(format="idx", root=str(tmp_path), mean=[0.1, 0.2, 0.3]), 8)
    _, _, info = build_datasets(DataConfig(format="idx", root=str(tmp_path), mean=[0.25],
                                           std=[0.5]), 8)
    assert (info.mean, info.std) == ([0.25], [0.5])


def test_transform_speed_for_a_28px_item_is_far_under_100us():
    import time

    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    tf = TrainTransform(28, [0.286], [0.353], augment="shift", shift=2, hflip=True)
    for _ in range(200):
        tf(img)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        tf(img)
    per_item = (time.perf_counter() - start) / n
    assert per_item < 100e-6, f"{per_item * 1e6:.1f} us per item"


# ---------------------------------------------------------------------------------------------
# synthetic, pickling, DataLoader workers


def test_synthetic_is_deterministic_balanced_and_sized():
    cfg = DataConfig(format="synthetic")
    a_train, a_val, info = build_datasets(cfg, 20)
    b_train, b_val, _ = build_datasets(cfg, 20)
    assert isinstance(info, DataInfo)
    assert (len(a_train), len(a_val)) == (640, 320)
    assert torch.equal(a_train.images, b_train.images) and a_train.targets == b_train.targets
    assert torch.equal(a_val.images, b_val.images)
    assert a_train.images.shape == (640, 3, 20, 20)
    assert np.bincount(a_train.targets).tolist() == [64] * 10
    assert (info.num_classes, info.in_chans, info.mean, info.std) == (10, 3, [0.5] * 3,
                                                                      [0.25] * 3)
    assert not torch.equal(a_train.images[:320], a_val.images)
    assert_item(a_val[0], 3, 20)


def test_synthetic_classes_differ_more_than_items_within_a_class():
    train, _, _ = build_datasets(DataConfig(format="synthetic"), 16)
    x = train.images.float().flatten(1)
    y = torch.tensor(train.targets)
    centroids = torch.stack([x[y == k].mean(0) for k in range(10)])
    nearest = torch.cdist(x, centroids).argmin(1)
    assert (nearest == y).float().mean() > 0.9


def test_datasets_pickle_and_load_in_worker_processes(tmp_path):
    write_idx_folder(tmp_path)
    cfg = DataConfig(format="idx", root=str(tmp_path), augment="shift")
    train, val, _ = build_datasets(cfg, 8)
    for ds in (train, val):
        clone = pickle.loads(pickle.dumps(ds))
        torch.manual_seed(5)
        a = clone[1]
        torch.manual_seed(5)
        b = ds[1]
        assert torch.equal(a[0], b[0]) and a[1] == b[1]
    root = make_image_folder(tmp_path / "folder")
    ftrain, _, _ = build_datasets(DataConfig(format="image_folder", root=str(root)), 8)
    assert len(pickle.loads(pickle.dumps(ftrain))) == len(ftrain)

    def batches(seed):
        loader = torch.utils.data.DataLoader(
            train, batch_size=3, num_workers=2, multiprocessing_context="fork",
            generator=torch.Generator().manual_seed(seed))
        return [b for b in loader]

    first, second = batches(7), batches(7)
    assert [x.shape for x, _ in first] == [(3, 1, 8, 8), (3, 1, 8, 8)]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, second))


def test_datasets_load_in_spawned_workers(tmp_path):
    write_idx_folder(tmp_path)
    _, val, _ = build_datasets(DataConfig(format="idx", root=str(tmp_path)), 8)
    loader = torch.utils.data.DataLoader(val, batch_size=4, num_workers=1,
                                         multiprocessing_context="spawn")
    (x, y), = list(loader)
    assert torch.equal(x, torch.stack([val[i][0] for i in range(4)]))
    assert y.tolist() == val.targets


def test_data_error_is_a_mutualnet_error():
    assert issubclass(DataError, MutualNetError)
    cfg = replace(DataConfig(), format="cifar10", root=None)
    with pytest.raises(MutualNetError, match="--data"):
        build_datasets(cfg, 32)


# ---------------------------------------------------------------------------------------------
# fuzzing: random bytes give DataError and nothing else


_IDX_HEADERS = st.sampled_from([b"", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x1f\x8b",
                                b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00\x00\x02"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_IDX_HEADERS, data=st.binary(max_size=64), kind=st.sampled_from(["images",
                                                                                "labels"]))
def test_idx_reader_fuzz_only_raises_data_error(prefix, data, kind):
    try:
        out = idx_mod.read_idx_bytes(prefix + data, "fuzz", kind)
    except DataError:
        return
    assert out.dtype == torch.uint8 and out.dim() == (3 if kind == "images" else 1)


_PICKLE_PREFIXES = st.sampled_from([b"", b"\x80\x02", b"\x80\x04", b"\x80\x02}q\x00(",
                                    pickle.dumps(cifar_batch(1, 10, "labels", 0))[:40]])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PICKLE_PREFIXES, data=st.binary(max_size=96))
def test_cifar_reader_fuzz_only_raises_data_error(prefix, data):
    try:
        images, labels = cifar_mod.read_cifar_batch_bytes(prefix + data, "fuzz", "labels", 10)
    except DataError:
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)


def test_a_long_strip_is_resized_only_where_it_is_cropped():
    """A 1-pixel-high strip would be resized to a shorter side of R/0.875 whole (gigabytes
    for 60000 px); only the crop's region is resized, at the same sampling positions as
    resizing it whole, so the pixels agree to a grey level."""
    from PIL import Image

    from mutualnet.data.transforms import ImageEvalTransform, ImageTrainTransform

    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (3, 2000, 3), dtype=np.uint8))
    size, resize = 24, 27
    whole = strip.resize((18000, 27), Image.BILINEAR)  # shorter side 27: 2000 * 27 / 3 wide
    left, top = int(round((18000 - size) / 2.0)), int(round((27 - size) / 2.0))
    want = torch.from_numpy(np.asarray(whole.crop((left, top, left + size, top + size))).copy())
    got = ImageEvalTransform(size, [0.0] * 3, [1 / 255] * 3)(strip)  # x * 255: grey levels
    assert got.shape == (3, size, size)
    assert (got - want.permute(2, 0, 1).float()).abs().max() <= 1.0 + 1e-3
    huge = Image.fromarray(np.full((1, 60000, 3), 100, np.uint8))
    for transform in (ImageEvalTransform(224, [0.5] * 3, [0.25] * 3),
                      ImageTrainTransform(224, [0.5] * 3, [0.25] * 3, augment="shift", shift=0)):
        x = transform(huge)
        assert x.shape == (3, 224, 224)
        torch.testing.assert_close(x, torch.full_like(x, (100 / 255 - 0.5) / 0.25))
