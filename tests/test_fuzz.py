"""Property-based fuzzing of every reader of untrusted input: IDX, CIFAR pickles, recipes,
checkpoints, weights, exports and run directories. Whatever the bytes, the outcome is a valid
result or a MutualNetError subclass with a one-line message, never another exception.

tests/test_data.py fuzzes the IDX and CIFAR readers with random tails after fixed prefixes;
here the inputs are structured (headers with random dimensions, pickles of random objects,
mutations of valid files), so the checks behind the first bytes are reached too.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mutualnet.config import (DataConfig, ModelConfig, OptimConfig, RunConfig, SpaceConfig,
                              TrainConfig, config_from_dict, config_to_dict, load_config)
from mutualnet.data import build_datasets
from mutualnet.data import cifar as cifar_mod
from mutualnet.data import idx as idx_mod
from mutualnet.errors import (CheckpointError, ConfigError, DataError, MutualNetError,
                              UnsafeCheckpointError)
from mutualnet.export import load_exported
from mutualnet.run import load_run
from mutualnet.train.checkpoint import (load_checkpoint, load_weights, resume_checkpoint,
                                        save_checkpoint, save_weights)

from test_data import cifar_batch, idx_bytes, tiny_idx_arrays
from test_train import tiny

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)


@pytest.fixture(scope="module")
def scratch():
    """One directory for the whole module (hypothesis reruns a test body many times)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def mutate(data: bytes, edits) -> bytes:
    """Apply (kind, position, value) edits: overwrite a byte, cut the tail, insert a byte."""
    buf = bytearray(data)
    for kind, pos, value in edits:
        if not buf:
            break
        at = pos % len(buf)
        if kind == "set":
            buf[at] = value
        elif kind == "cut":
            del buf[at:]
        else:
            buf[at:at] = bytes([value])
    return bytes(buf)


EDITS = st.lists(st.tuples(st.sampled_from(["set", "set", "set", "cut", "insert"]),
                           st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8)


# ---------------------------------------------------------------------------------------------
# IDX


@FUZZ
@given(magic=st.one_of(st.sampled_from([0x0801, 0x0803, 0x0802, 0x0803 | 0x0D00, 0x0800,
                                        0x0804, 0x0C03]), st.integers(0, 2**32 - 1)),
       dims=st.lists(st.one_of(st.integers(0, 6), st.sampled_from([2**31, 2**32 - 1])),
                     max_size=4),
       delta=st.integers(-3, 3), gz=st.booleans(), kind=st.sampled_from(["images", "labels"]))
def test_idx_headers_with_random_dimensions(magic, dims, delta, gz, kind):
    count = math.prod(dims) if dims else 0
    payload = bytes(range(256)) * 8
    size = max(0, min(count + delta, len(payload)))
    data = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload[:size]
    if gz:
        data = gzip.compress(data)
    try:
        out = idx_mod.read_idx_bytes(data, "fuzz", kind)
    except DataError as exc:
        one_line(exc)
        return
    assert out.dtype == torch.uint8 and tuple(out.shape) == tuple(dims)
    assert out.flatten().tolist() == list(payload[:count])


@FUZZ
@given(part=st.sampled_from(sorted(idx_mod.IDX_FILES.values())), edits=EDITS,
       gz=st.booleans())
def test_idx_folder_with_a_damaged_file_builds_or_says_why(scratch, part, edits, gz):
    folder = Path(tempfile.mkdtemp(dir=scratch))
    arrays = tiny_idx_arrays(n_train=4, n_val=3, h=4, w=5, classes=3)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if name == part:
            data = mutate(gzip.compress(data) if gz else data, edits)
        (folder / name).write_bytes(data)
    try:
        train, val, info = build_datasets(DataConfig(format="idx", root=str(folder),
                                                     augment="none"), 8)
    except DataError as exc:
        one_line(exc)
        return
    assert info.num_classes >= 1 and info.in_chans == 1
    for ds in (train, val):
        x, y = ds[len(ds) - 1]
        assert x.shape == (1, 8, 8) and 0 <= y < info.num_classes


# ---------------------------------------------------------------------------------------------
# CIFAR python batches


_DTYPES = st.sampled_from([np.uint8, np.int64, np.float32, np.int8, np.bool_])
_ARRAYS = st.builds(
    lambda dtype, shape: np.zeros(shape, dtype=dtype), _DTYPES,
    st.sampled_from([(), (0,), (2,), (2, 3), (0, 3072), (1, 3072), (2, 3072), (3, 1000),
                     (2, 3, 32, 32)]))
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8),
                    _ARRAYS)
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), inner, max_size=3)),
    max_leaves=12)
_KEYS = st.sampled_from([b"data", "data", b"labels", "labels", b"fine_labels", b"batch_label",
                         b"filenames", 7])


@FUZZ
@given(batch=st.dictionaries(_KEYS, _VALUES, max_size=4), protocol=st.integers(0, 5),
       good_data=st.booleans())
def test_cifar_batches_of_random_structure(batch, protocol, good_data):
    if good_data:
        batch[b"data"] = np.zeros((2, 3072), dtype=np.uint8)
    data = pickle.dumps(batch, protocol=protocol)
    try:
        images, labels = cifar_mod.read_cifar_batch_bytes(data, "fuzz", "labels", 10)
    except DataError as exc:
        one_line(exc)
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.dtype == np.int64 and labels.shape == (images.shape[0],)
    assert labels.size == 0 or (labels.min() >= 0 and labels.max() < 10)


@FUZZ
@given(protocol=st.integers(0, 5), edits=EDITS)
@example(protocol=4, edits=[("set", 23, 10)])  # a newline inside the module name it asks for
def test_cifar_batches_with_damaged_bytes(protocol, edits):
    data = mutate(pickle.dumps(cifar_batch(2, 10, "labels", 3), protocol=protocol), edits)
    try:
        images, labels = cifar_mod.read_cifar_batch_bytes(data, "fuzz", "labels", 10)
    except DataError as exc:
        one_line(exc)
        return
    assert images.shape[1:] == (3, 32, 32) and labels.shape == (images.shape[0],)


@FUZZ
@given(obj=_VALUES, protocol=st.integers(0, 5))
def test_cifar_meta_files_of_random_structure(scratch, obj, protocol):
    folder = Path(tempfile.mkdtemp(dir=scratch)) / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(cifar_batch(1, 10, "labels", 0)))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": obj}, protocol=protocol))
    try:
        loaded = cifar_mod.load_cifar(folder, "cifar10")
    except DataError as exc:
        one_line(exc)
        return
    assert len(loaded["class_names"]) == 10
    assert all(isinstance(n, str) for n in loaded["class_names"])


# ---------------------------------------------------------------------------------------------
# recipes


_SECTIONS = {"model": ModelConfig, "space": SpaceConfig, "data": DataConfig,
             "optim": OptimConfig, "train": TrainConfig}
_FIELDS = sorted({f for cls in _SECTIONS.values() for f in cls.__dataclass_fields__})
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                     st.sampled_from(["synthetic", "mutualnet", "none", "shift", "bf16",
                                      "mobilenet_v2", "image_folder"]))
_CONFIG_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(_FIELDS), st.integers(0, 3), st.text(max_size=4)),
                    inner, max_size=3)), max_leaves=8)
_SECTION_DATA = st.dictionaries(st.one_of(st.sampled_from(_FIELDS), st.text(max_size=6)),
                                _CONFIG_VALUES, max_size=4)
_RECIPES = st.dictionaries(st.one_of(st.sampled_from(sorted(_SECTIONS)), st.text(max_size=6)),
                           st.one_of(_SECTION_DATA, _CONFIG_VALUES), max_size=5)


def _valid_config_round_trips(cfg: RunConfig) -> None:
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.train.log_every >= 1 and cfg.optim.lr > 0 and math.isfinite(cfg.optim.lr)
    assert min(cfg.space.resolutions) >= 8


@FUZZ
@given(data=_RECIPES)
def test_random_nested_dicts_give_a_config_or_a_config_error(data):
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        one_line(exc)
        return
    _valid_config_round_trips(cfg)


def _load_recipe_or_config_error(path) -> None:
    """A recipe file either loads into a valid config or fails with one clean line."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        one_line(exc)
        return
    _valid_config_round_trips(cfg)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), _RECIPES.map(yaml.safe_dump)))
def test_random_yaml_text_gives_a_config_or_a_config_error(scratch, text):
    path = scratch / "recipe.yaml"
    path.write_text(text)
    _load_recipe_or_config_error(path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_give_a_config_or_a_config_error(scratch, data):
    path = scratch / "recipe.yaml"
    path.write_bytes(data)
    _load_recipe_or_config_error(path)


_OVERRIDE_KEYS = st.one_of(
    st.sampled_from([f"{s}.{f}" for s, cls in _SECTIONS.items()
                     for f in cls.__dataclass_fields__] + ["model.options.dropout", "optim",
                                                           "a.b.c", ""]),
    st.text(max_size=10))


@FUZZ
@given(items=st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", _OVERRIDE_KEYS, st.text(max_size=20)),
    st.text(max_size=20)), max_size=4))
def test_random_overrides_give_a_config_or_a_config_error(items):
    try:
        cfg = load_config(None, items)
    except ConfigError as exc:
        one_line(exc)
        return
    _valid_config_round_trips(cfg)


# ---------------------------------------------------------------------------------------------
# checkpoints, weights, exports, run directories


def _tiny_checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                "rng": {"torch": torch.get_rng_state(), "python": [3, [1, 2], None]},
                "step": 4, "meta": {"model": "mobilenet_v2"}}, buffer)
    return buffer.getvalue()


CHECKPOINT_BYTES = _tiny_checkpoint_bytes()
_CHECKPOINT_PREFIXES = st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95",
                                        CHECKPOINT_BYTES[:64], CHECKPOINT_BYTES[:-40]])


def _check_checkpoint(path: Path) -> None:
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        one_line(exc)
        return
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())


@FUZZ
@given(prefix=_CHECKPOINT_PREFIXES, data=st.binary(max_size=256))
def test_load_checkpoint_on_random_bytes(scratch, prefix, data):
    path = scratch / "checkpoint.pt"
    path.write_bytes(prefix + data)
    _check_checkpoint(path)


@FUZZ
@given(edits=EDITS)
def test_load_checkpoint_on_damaged_checkpoints(scratch, edits):
    path = scratch / "checkpoint.pt"
    path.write_bytes(mutate(CHECKPOINT_BYTES, edits))
    _check_checkpoint(path)


@FUZZ
@given(newest=st.one_of(st.binary(max_size=64), EDITS.map(lambda e: mutate(CHECKPOINT_BYTES, e))),
       keep_previous=st.booleans())
def test_resume_takes_a_whole_checkpoint_or_says_why(scratch, newest, keep_previous):
    run = Path(tempfile.mkdtemp(dir=scratch))
    (run / "checkpoint.pt").write_bytes(newest)
    if keep_previous:
        (run / "checkpoint.prev.pt").write_bytes(CHECKPOINT_BYTES)
    try:
        state = resume_checkpoint(run)
    except CheckpointError as exc:
        assert not keep_previous or isinstance(exc, UnsafeCheckpointError)
        one_line(exc)
        return
    assert isinstance(state["step"], int) and "optimizer" in state and "rng" in state


def _weights_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)},
                metadata={"mutualnet": json.dumps({"model": "mobilenet_v2", "num_classes": 2})})


WEIGHTS_BYTES = _weights_bytes()


@FUZZ
@given(data=st.one_of(st.binary(max_size=256),
                      st.builds(lambda n, tail: struct.pack("<Q", n) + tail,
                                st.integers(0, 2**64 - 1), st.binary(max_size=128)),
                      EDITS.map(lambda e: mutate(WEIGHTS_BYTES, e))))
def test_load_weights_on_random_and_damaged_files(scratch, data):
    path = scratch / "model.safetensors"
    path.write_bytes(data)
    try:
        tensors, meta = load_weights(path)
    except CheckpointError as exc:
        one_line(exc)
        return
    assert isinstance(meta, dict) and all(isinstance(v, torch.Tensor) for v in tensors.values())


@FUZZ
@given(data=st.binary(max_size=200))
def test_load_exported_on_random_bytes(scratch, data):
    path = scratch / "export.safetensors"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_exported(path)
    one_line(err.value)


@pytest.fixture(scope="module")
def tiny_run(scratch) -> Path:
    """A run directory made without training: config.yaml, model.safetensors, checkpoint.pt."""
    from mutualnet.train.loop import build_model, build_space, run_metadata
    from mutualnet.data import DataInfo

    cfg = tiny()
    info = DataInfo(10, 3, [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3, "fuzz")
    model = build_model(cfg, info.num_classes, info.in_chans)
    meta = run_metadata(cfg, info, build_space(cfg))
    run = scratch / "tiny-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    save_weights(run / "model.safetensors", model.state_dict(), meta)
    save_checkpoint(run, {"model": model.state_dict(), "meta": meta})
    return run


@FUZZ
@given(name=st.sampled_from(["model.safetensors", "config.yaml", "checkpoint.pt"]),
       edits=EDITS)
def test_load_run_on_a_damaged_run_directory(scratch, tiny_run, name, edits):
    run = Path(tempfile.mkdtemp(dir=scratch))
    for f in ("config.yaml", "model.safetensors", "checkpoint.pt"):
        data = (tiny_run / f).read_bytes()
        (run / f).write_bytes(mutate(data, edits) if f == name else data)
    if name == "checkpoint.pt":
        (run / "model.safetensors").unlink()
    try:
        loaded = load_run(run)
    except MutualNetError as exc:
        one_line(exc)
        return
    assert loaded.meta["model"] == loaded.config.model.name
