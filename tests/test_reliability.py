"""Reliability and security, driven through the command line as a user would.

* Bad input of every kind (damaged data, bad options, recipes with typos, configurations
  outside the trained range, damaged or foreign checkpoints, unwritable outputs, missing run
  directories) ends with exit code 2 and exactly one line on stderr naming the problem and the
  fix, and leaves every file of an existing run byte-identical.
* Training killed at random points resumes to the same weights as an uninterrupted run; a
  crash while a checkpoint is written leaves a whole one; SIGINT saves a checkpoint.
* Checkpoints that would run code when loaded are refused, and the code never runs.
* A non-finite loss stops the run naming the step and configuration, with the last checkpoint
  untouched, or is skipped with ``train.skip_nonfinite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mutualnet.config import load_config
from mutualnet.errors import ConfigError
from mutualnet.select import write_results
from mutualnet.train import train
from mutualnet.train.checkpoint import (load_checkpoint, load_weights, resume_checkpoint,
                                        save_checkpoint, save_weights)

from test_data import (cifar_batch, make_image_folder, tiny_idx_arrays, write_cifar10,
                       write_idx_folder, write_png)
from test_train import tiny, tiny_yaml


# ---------------------------------------------------------------------------------------------
# helpers


# One thread per process: the tiny models gain nothing from more, a busy machine makes more
# much slower, and every process then computes bit for bit alike.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


@contextlib.contextmanager
def one_thread():
    """In-process work with one thread, as the CLI processes have."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (but the lock, which names its holder)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2 and exactly one line on stderr, containing every needle."""
    assert proc.returncode == 2, f"exit code {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fails_without_damage(run: Path, *args, needles: tuple[str, ...]) -> str:
    """Run a command that must fail cleanly and leave ``run`` byte-identical."""
    before = snapshot(run)
    line = one_line_error(cli(*args), *needles)
    assert snapshot(run) == before, "the failing command changed files of the run"
    return line


def stray_files(run: Path) -> list[str]:
    """Temporary files of interrupted writes (.lock is the run's lock: it stays)."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock")


def command_id(value) -> str | None:
    """Test ids that read like the command line."""
    return re.sub(r"\{(\w+)\}", r"\1", " ".join(value)) if isinstance(value, list) else None


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert sa["step"] == sb["step"]
    assert sa["model"].keys() == sb["model"].keys()
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key


class Evil:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------
# a tiny trained and evaluated run on IDX files (3 classes, 12x12 grey images)


@pytest.fixture(scope="module")
def idx_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx") / "data"
    write_idx_folder(root, tiny_idx_arrays(n_train=48, n_val=16, h=12, w=12, classes=3))
    return root


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, idx_data) -> str:
    return tiny_yaml(tmp_path_factory.mktemp("recipe"), "data.format=idx",
                     f"data.root={idx_data}", "train.batch_size=8", "train.validate=false",
                     "train.checkpoint_every=1", "train.max_steps=2")


@pytest.fixture(scope="module")
def run(tmp_path_factory, recipe) -> Path:
    """config.yaml, checkpoint.pt (step 2), checkpoint.prev.pt (step 1), model.safetensors
    with calibrated statistics, log.jsonl, and the grid of 2 widths x 2 resolutions."""
    from mutualnet.evaluate import evaluate_run
    from mutualnet.run import load_run
    from mutualnet.space import Config

    path = tmp_path_factory.mktemp("run") / "run"
    configs = [Config(w, r) for w in (0.5, 1.0) for r in (12, 16)]
    with one_thread():
        train(load_config(recipe), path)
        evaluate_run(load_run(path), configs, batch_size=16, calibration_batches=1,
                     progress=False)
    return path


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A directory this process cannot create files in: read-only for a normal user; root
    writes anywhere but in sysfs."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without sysfs: no directory is read-only")
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    """A copy of the run to damage."""
    return Path(shutil.copytree(run, tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# 1. bad input: damaged datasets


def _damaged_data(kind: str, root: Path) -> tuple[list[str], str]:
    """A dataset on disk with one defect; the overrides that select it and the message part."""
    idx = tiny_idx_arrays(n_train=48, n_val=16, h=12, w=12, classes=3)
    if kind.startswith("idx"):
        write_idx_folder(root, idx)
        images, labels = root / "train-images-idx3-ubyte", root / "t10k-labels-idx1-ubyte"
        if kind == "idx-wrong-magic":
            images.write_bytes(b"\x00\x00\x08\x07" + images.read_bytes()[4:])
            needle = "is not an IDX images file: magic number 0x00000807"
        elif kind == "idx-truncated":
            images.write_bytes(images.read_bytes()[:-5])
            needle = "is truncated"
        elif kind == "idx-too-long":
            labels.write_bytes(labels.read_bytes() + b"\x00\x01")
            needle = "is longer than its header declares"
        else:
            labels.unlink()
            needle = "lacks t10k-labels-idx1-ubyte"
        return ["data.format=idx"], needle
    if kind == "fashion-mnist-label-out-of-range":
        idx["train-labels-idx1-ubyte"][5] = 12
        write_idx_folder(root, idx, gz=True)
        return ["data.format=fashion_mnist"], "holds label 12, outside 0..9"
    if kind.startswith("cifar"):
        if kind == "cifar-missing":
            root.mkdir()
            return ["data.format=cifar10"], "CIFAR-10 not found"
        write_cifar10(root)
        if kind == "cifar-not-a-pickle":
            (root / "test_batch").write_bytes(b"\x80\x02this is not a pickle")
            return ["data.format=cifar10"], "test_batch is not a valid pickle"
        batch = cifar_batch(3, 10, "labels", 0)
        if kind == "cifar-wrong-shape":
            batch[b"data"] = batch[b"data"][:, :1000]
            needle = "'data' must be a uint8 array of shape (N, 3072)"
        else:
            batch[b"labels"] = [0, 10, 1]
            needle = "label 10 is outside 0..9"
        (root / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
        return ["data.format=cifar10"], needle
    # image folders: every train image lands in the one batch, loaded by two worker processes
    make_image_folder(root, classes=("a", "b", "c"), per_class=4)
    bad = root / "train" / "b" / "bad.png"
    if kind == "folder-not-an-image":
        bad.write_text("just text")
    else:
        bad.symlink_to(root / "nowhere.png")  # unreadable, whoever runs the test
    return (["data.format=image_folder", "data.num_workers=2", "train.batch_size=13"],
            f"cannot read image {bad}")


@pytest.mark.parametrize("kind", [
    "idx-wrong-magic", "idx-truncated", "idx-too-long", "idx-missing-file",
    "fashion-mnist-label-out-of-range", "cifar-wrong-shape", "cifar-label-out-of-range",
    "cifar-not-a-pickle", "cifar-missing", "folder-not-an-image", "folder-unreadable-file",
])
def test_a_damaged_dataset_is_one_line(tmp_path, recipe, kind):
    keys, needle = _damaged_data(kind, tmp_path / "data")
    out = tmp_path / "out"
    sets = [a for key in keys for a in ("--set", key)]
    line = one_line_error(cli("train", recipe, "--out", out, "--data", tmp_path / "data", *sets),
                          needle)
    assert any(fix in line for fix in ("--data", "fetch it again", "get a clean copy",
                                       "skip_bad_files", "data.format", "CIFAR variant"))
    if kind.startswith("folder"):  # raised in a loader worker: its traceback is cut away
        assert line.startswith(f"error: {needle}")
    assert not out.exists()  # a run that failed before its first checkpoint leaves nothing


def test_a_folder_holding_a_recipe_or_a_log_but_no_run_is_refused_and_kept(tmp_path, recipe):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.yaml").write_text(Path(recipe).read_text() + "# my notes\n")
    (out / "log.jsonl").write_text("my log\n")
    before = snapshot(out)
    # the recipe trained is the folder's own config.yaml, and the run fails after its checks
    one_line_error(cli("train", out / "config.yaml", "--out", out, "--batch-size", "100000"),
                   f"{out} holds config.yaml and log.jsonl but no trained run")
    assert snapshot(out) == before
    (out / "log.jsonl").unlink()
    one_line_error(cli("train", out / "config.yaml", "--out", out),
                   f"{out} holds config.yaml but no trained run; the new run would write over")
    assert (out / "config.yaml").read_text().endswith("# my notes\n")


def test_a_failed_run_removes_only_what_it_wrote(tmp_path, recipe):
    out = tmp_path / "out"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "mine").write_text("kept")
    (out / "notes.txt").write_text("kept")
    one_line_error(cli("train", recipe, "--out", out, "--batch-size", "100000"),
                   "larger than the training set")
    assert sorted(p.name for p in out.rglob("*")) == ["mine", "notes.txt", "tensorboard"]


def test_sigterm_before_the_first_step_leaves_no_run_behind(tmp_path, monkeypatch, capsys):
    import mutualnet.train.loop as loop
    from mutualnet.cli import main

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the signal arrives first
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(loop, "build_model", terminated)
    out = tmp_path / "out"
    assert main(["train", tiny_yaml(tmp_path), "--out", str(out)]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: terminated"
    assert not out.exists()  # neither config.yaml nor the lock is left
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_skip_bad_files_trains_and_reports_what_it_skipped(tmp_path, recipe):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=4)
    bad = [root / "train" / "a" / "notes.jpg", root / "train" / "b" / "cut.png",
           root / "val" / "c" / "gone.jpg"]
    bad[0].write_text("not an image")
    write_png(bad[1])
    bad[1].write_bytes(bad[1].read_bytes()[:40])
    bad[2].symlink_to(root / "nowhere.jpg")
    out = tmp_path / "out"
    proc = cli("train", recipe, "--out", out, "--data", root, "--set", "data.format=image_folder",
               "--set", "data.skip_bad_files=true", "--set", "data.num_workers=2",
               "--set", "train.batch_size=6", "--set", "train.validate=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 2 unreadable file(s)" in proc.stderr and "skipped 1 unreadable" in proc.stderr
    for path in bad:
        assert str(path) in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["validation"] is not None
    assert (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------
# 1. bad input: options and recipes


@pytest.mark.parametrize("args,needle", [
    (["--set", "model.name=nope"], "unknown model 'nope'; available models: "),
    (["--set", "model.options={foo: 1}"], "model 'mobilenet_v2' has no option 'foo'"),
    (["--set", "optim.lrr=1"], "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["--set", "optim.lr=.nan"], "optim.lr must be a finite number"),
    (["--set", "space.resolutions=[4]"], "sizes from 8 to 4096 pixels, got [4]"),
    (["--set", "space.width_range=[0.5, 1e30]"], "space.width_range must satisfy 0 < lo <= hi"),
    (["--set", "model.options.last_channels=99999999999999999999999"],
     "model 'mobilenet_v2' refuses its options (empty(): argument"),
    (["--set", "model.options={1: 2}"], "model.options must have names as keys"),
    (["--device", "tpu9"], "unknown device 'tpu9'"),
    (["--device", "mps"], "device 'mps' is not supported; use auto, cpu, cuda or cuda:N"),
    (["--device", "meta"], "device 'meta' is not supported; use auto, cpu, cuda or cuda:N"),
    (["--set", "model.options.dropout=2"], "dropout"),
    (["--set", "model.options.num_classes=5"], "model.options.num_classes is set by the data"),
    (["--set", "model.options.in_chans=1"], "model.options.in_chans is set by the data"),
    (["--set", "model.options.width_range=[0.5, 1]"],
     "model.options.width_range is set by space.width_range"),
    (["--set", "model.options.block_setting=[[1, 8, 1, 0]]"],
     "block_setting row [1, 8, 1, 0] needs"),
    (["--set", "model.options.block_setting=[[1, 8, 0, 1]]"],
     "block_setting row [1, 8, 0, 1] needs"),
], ids=command_id)
def test_a_bad_option_is_one_line(tmp_path, recipe, args, needle):
    out = tmp_path / "out"
    one_line_error(cli("train", recipe, "--out", out, *args), needle)
    assert not out.exists()


def test_a_recipe_placed_after_set_is_named(tmp_path, recipe):
    one_line_error(cli("train", "--set", "train.seed=1", recipe, "--out", tmp_path / "out"),
                   f"--set takes KEY=VALUE words, got '{recipe}'; put the recipe (or other "
                   f"arguments) before --set")


@pytest.mark.parametrize("text,needle", [
    ("trian:\n  epochs: 2\n", "unknown config key 'trian'; did you mean 'train'?"),
    ("train:\n  epoch: 2\n", "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("epochs: 2\n", "unknown config key 'epochs'; did you mean 'train.epochs'?"),
    ("name: resnet50\n", "unknown config key 'name'; did you mean 'model.name'?"),
    ("train:\n  epochs: two\n", "train.epochs must be int, got 'two'"),
    ("space:\n  width_range: 0.5\n", "space.width_range must be a list, got 0.5"),
    ("optim:\n  lr: [0.1\n", "is not valid YAML (line"),
    ("- just\n- a list\n", "must hold a mapping of sections"),
    ("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.5\n",
     "(line 4, column 3: key 'lr' appears twice in this section)"),
])
def test_a_recipe_with_a_typo_is_one_line(tmp_path, text, needle):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    one_line_error(cli("train", path, "--out", tmp_path / "out"), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,needle", [
    ("train.log_every=0", "train.log_every must be at least 1"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be 0 or more"),
    ("train.distill_temperature=0", "train.distill_temperature must be positive"),
    ("train.seed=99999999999999999999", "train.seed must fit in 64 bits"),
    ("optim.momentum=-0.9", "optim.momentum must be at least 0 and below 1, got -0.9"),
    ("optim.momentum=1", "optim.momentum must be at least 0 and below 1, got 1.0"),
    ("optim.weight_decay=-1", "optim.weight_decay must be 0 or more"),
    ("optim.label_smoothing=1", "optim.label_smoothing must be at least 0 and below 1"),
    ("optim.warmup_start_factor=2", "optim.warmup_start_factor must be between 0 and 1, got 2"),
    ("optim.lr=1e999", "optim.lr must be a finite number"),
    ("data.shift=-2", "data.shift must be 0 or more, got -2"),
    ("data.crop_scale=[0.5, 0.1]", "data.crop_scale must satisfy 0 < lo <= hi <= 1"),
    ("data.crop_scale=[5, 10]", "data.crop_scale must satisfy 0 < lo <= hi <= 1 (shares of the "
                                "image's area), got [5.0, 10.0]"),
    ("data.eval_crop_ratio=1.5", "data.eval_crop_ratio must be from 0.1 to 1"),
    ("data.eval_crop_ratio=1e-9", "data.eval_crop_ratio must be from 0.1 to 1 (the evaluation "
                                  "crop's share of the resized image's side), got 1e-09"),
    ("data.shift=9", "data.shift must be at most half the largest resolution (8 pixels), got 9"),
    ("data.shift=99999999999999999999999", "data.shift must be at most half the largest"),
    ("space.resolutions=[99999999999999999999999]",
     "space.resolutions must be a non-empty list of sizes from 8 to 4096 pixels"),
    ("space.resolutions=[16, 16, 12]", "space.resolutions lists 16 more than once, "
                                       "got [16, 16, 12]"),
    ("space.width_range=[0.5, 1e30]", "space.width_range must satisfy 0 < lo <= hi <= 4, "
                                      "got [0.5, 1e+30]"),
    ("space.num_random=99999999999999999999999", "space.num_random must be from 0 to 32"),
    ("optim.min_lr=1.5", "optim.min_lr (1.5) must not exceed optim.lr (0.1)"),
    ("train.epochs=0", "train.epochs must be at least 1, got 0"),
    ("optim.lr=0", "optim.lr must be positive, got 0.0"),
    ("data.skip_bad_files=true", "data.skip_bad_files applies to image_folder and video_folder"),
])
def test_values_that_would_fail_deep_inside_training_are_refused_up_front(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        tiny(override)


def test_an_empty_recipe_section_means_the_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["optim.lr=0.2"])
    assert cfg.optim.lr == 0.2 and cfg.optim.momentum == 0.9 and cfg.train.epochs == 3


# ---------------------------------------------------------------------------------------------
# 1. bad input: configurations outside the trained range, budgets, data that moved


@pytest.mark.parametrize("args,needle", [
    (["calibrate", "{run}", "--widths", "5"], "width 5 is outside the trained range [0.5, 1]"),
    (["evaluate", "{run}", "--widths", "5"], "width 5 is outside the trained range"),
    (["export", "{run}", "--width", "5", "--resolution", "16", "--format", "onnx", "-o",
      "{tmp}/m.onnx"], "width 5 is outside the trained range"),
    (["calibrate", "{run}", "--resolutions", "0"], "resolution 0 is too small: give at least 8"),
    (["evaluate", "{run}", "--resolutions", "-4"], "resolution -4 is too small"),
    (["export", "{run}", "--width", "1", "--resolution", "0", "--format", "safetensors", "-o",
      "{tmp}/m.safetensors"], "trained at 12, 16"),
    (["select", "{run}", "--max-mmacs", "-1"], "the budget must be a positive number"),
    (["select", "{run}", "--max-mmacs", "0.000001"], "no configuration fits"),
    (["select", "{run}", "--max-latency-ms", "5"], "run `mutualnet evaluate {run} --latency`"),
    (["evaluate", "{run}", "--data", "{more_classes}"], "does not fit the model (3 classes"),
    (["calibrate", "{run}", "--data", "{tmp}/moved"], "does not exist"),
    (["evaluate", "{run}", "--widths", "1", "--data", "{truncated}"], "is truncated"),
    (["evaluate", "{run}", "--width-step", "0"], "--width-step"),
    (["evaluate", "{run}", "--width-step", "1e-9"],
     "--width-step must be at least 0.0001 (widths are named to 4 decimals)"),
    (["evaluate", "{run}", "--widths", "1", "--batch-size", "-5"], "--batch-size"),
    (["evaluate", "{run}", "--widths", ","], "expected comma-separated finite numbers"),
    (["evaluate", "{run}", "--widths", "0.5", "--resolutions", "100000"],
     "out of memory: could not allocate 298.0 GiB"),
], ids=command_id)
def test_out_of_range_requests_are_one_line_and_change_nothing(tmp_path, run, args, needle):
    more_classes, truncated = tmp_path / "more-classes", tmp_path / "truncated"
    write_idx_folder(more_classes, tiny_idx_arrays(n_train=8, n_val=8, h=12, w=12, classes=8))
    write_idx_folder(truncated, tiny_idx_arrays(n_train=8, n_val=8, h=12, w=12, classes=3))
    cut = truncated / "t10k-images-idx3-ubyte"
    cut.write_bytes(cut.read_bytes()[:-3])
    values = {"run": run, "tmp": tmp_path, "more_classes": more_classes, "truncated": truncated}
    fails_without_damage(run, *[a.format(**values) for a in args],
                         needles=(needle.format(**values),))


def folder_run(tmp_path: Path) -> tuple[Path, Path]:
    """An image folder of the classes ant, bee and cat, and a run trained on it one step."""
    data = make_image_folder(tmp_path / "data", classes=("ant", "bee", "cat"))
    run = tmp_path / "run"
    with one_thread():
        train(tiny("data.format=image_folder", f"data.root={data}", "data.augment=none",
                   "train.batch_size=2", "train.max_steps=1", "train.validate=false",
                   "space.resolutions=[16, 12]"), run)
    return data, run


def test_a_moved_folder_whose_classes_differ_from_the_runs_is_refused(tmp_path):
    """Labels are indices into the sorted class folders: with a class missing (or renamed)
    the same index means another class, which would score the model against wrong labels."""
    data, run = folder_run(tmp_path)
    moved = make_image_folder(tmp_path / "moved", classes=("ant", "cat"))
    fails_without_damage(run, "calibrate", run, "--data", moved, "--widths", "1",
                         "--resolutions", "16", needles=("ant, cat", "ant, bee, cat"))
    same = make_image_folder(tmp_path / "same", classes=("ant", "bee", "cat"))
    proc = cli("calibrate", run, "--data", same, "--widths", "1", "--resolutions", "16",
               "--batches", "1")
    assert proc.returncode == 0, proc.stderr


def test_a_run_that_records_no_folder_records_the_first_that_fits(tmp_path):
    """A converted run records no dataset: the folder given to its first command that reads
    data (and fits) is recorded, so later commands need no --data; a run that records one
    keeps it."""
    import yaml

    data, run = folder_run(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = None  # as convert-official writes it
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate = ["evaluate", run, "--widths", "1", "--resolutions", "16", "--batches", "1"]
    one_line_error(cli(*evaluate))
    other = make_image_folder(tmp_path / "other", classes=("ant", "bee", "cat", "dog"))
    one_line_error(cli(*evaluate, "--data", other), "does not fit the model")
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] is None
    proc = cli(*evaluate, "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(data)
    proc = cli(*evaluate)
    assert proc.returncode == 0, proc.stderr
    same = make_image_folder(tmp_path / "same", classes=("ant", "bee", "cat"))
    assert cli(*evaluate, "--data", same).returncode == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(data)


def test_resuming_on_moved_data_whose_classes_differ_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=("ant", "bee", "cat"))
    recipe = tiny_yaml(tmp_path, "data.format=image_folder", f"data.root={data}",
                       "data.augment=none", "train.batch_size=2", "train.max_steps=1",
                       "train.validate=false", "space.resolutions=[16, 12]")
    run = tmp_path / "run"
    proc = cli("train", recipe, "--out", run)
    assert proc.returncode == 0, proc.stderr
    renamed = make_image_folder(tmp_path / "renamed", classes=("ant", "bee", "dog"))
    fails_without_damage(run, "train", recipe, "--out", run, "--resume", "--data", renamed,
                         "--max-steps", "2", needles=("ant, bee, dog", "ant, bee, cat"))


@pytest.mark.parametrize("command", [
    ["evaluate", "{missing}"], ["calibrate", "{missing}"], ["select", "{missing}", "--max-mmacs",
                                                            "5"],
    ["export", "{missing}", "--width", "1", "--resolution", "16", "--format", "onnx", "-o",
     "{tmp}/m.onnx"],
    ["evaluate", "{empty}"],
    ["train", "{recipe}", "--out", "{missing}", "--resume"],
], ids=command_id)
def test_a_run_directory_that_does_not_exist_is_one_line(tmp_path, recipe, command):
    (tmp_path / "empty").mkdir()
    values = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "tmp": tmp_path,
              "recipe": recipe}
    line = one_line_error(cli(*[a.format(**values) for a in command]))
    assert any(s in line for s in ("does not exist", "not a run directory", "holds no run"))
    assert not (tmp_path / "nope").exists() and not any((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("extra,needle", [
    ([], "already holds a run; pass --resume"),
    (["--resume", "--set", "optim.lr=0.3"],
     "with a different config (optim.lr: 0.1 in the run, 0.3 now)"),
])
def test_an_existing_run_is_never_overwritten_or_resumed_differently(run, extra, needle):
    fails_without_damage(run, "train", run / "config.yaml", "--out", run, *extra,
                         needles=(needle,))


@pytest.mark.parametrize("damage", [b"x: [", b"\xff\xfe\x00", b"train: {epochs: many}"])
def test_resuming_a_run_whose_config_is_damaged_is_one_line(run_copy, recipe, damage):
    (run_copy / "config.yaml").write_bytes(damage)
    fails_without_damage(run_copy, "train", recipe, "--out", run_copy, "--resume",
                         needles=(str(run_copy / "config.yaml"),))


def test_a_folder_holding_weights_or_results_is_a_run_too(run_copy):
    """A converted run, or one whose checkpoints were removed, still holds weights and a
    table that a new training must not replace."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_copy / name).unlink()
    fails_without_damage(run_copy, "train", run_copy / "config.yaml", "--out", run_copy,
                         needles=("already holds a run", "model.safetensors"))


def test_resuming_a_finished_run_changes_nothing(run_copy):
    """Nothing is left to train: the calibrated weights and the table stay as they are."""
    before = snapshot(run_copy)
    proc = cli("train", run_copy / "config.yaml", "--out", run_copy, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to train" in proc.stderr
    assert snapshot(run_copy) == before


def test_training_an_evaluated_run_further_removes_its_stale_table(run_copy):
    """New weights make the calibrated statistics and the table of the old ones wrong: the
    table goes (with a warning) rather than select and serve configurations it no longer
    describes."""
    assert (run_copy / "grid.json").is_file()
    proc = cli("train", run_copy / "config.yaml", "--out", run_copy, "--resume",
               "--max-steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "removed grid.json" in proc.stderr and "`mutualnet evaluate" in proc.stderr
    for name in ("grid.json", "grid.csv", "query_table.md", "pareto.png"):
        assert not (run_copy / name).exists(), name
    one_line_error(cli("select", run_copy, "--max-mmacs", "1"), "run `mutualnet evaluate")


@pytest.mark.parametrize("rows, needle", [
    ([{"width": 1, "resolution": 16, "top1": 5}], "row 1 lacks mmacs"),
    ([{"width": 1, "resolution": 16, "top1": 5, "mmacs": "0.1"}], "row 1 has mmacs '0.1'"),
    ([{"width": 1, "resolution": 16, "top1": "x", "mmacs": 0.1}], "row 1 has top1 'x'"),
    ([{"width": 1, "resolution": 16, "mmacs": 0.1}], "row 1 has no metric"),
    ([{"width": 1, "resolution": 16.0, "top1": 5, "mmacs": 0.1}],
     "row 1 has resolution 16.0, not a whole number"),
    ([{"width": 1, "resolution": 16, "top1": 5, "mmacs": 0.1, "params_m": "x"}],
     "row 1 has params_m 'x', not a number"),
])
def test_select_on_a_damaged_grid_is_one_line(run_copy, rows, needle):
    (run_copy / "grid.json").write_text(json.dumps(rows))
    one_line_error(cli("select", run_copy, "--max-mmacs", "1"), "grid.json", needle,
                   "run `mutualnet evaluate")


def test_evaluate_over_a_damaged_grid_says_it_replaces_it(run_copy):
    rows = json.loads((run_copy / "grid.json").read_text())
    rows[0]["resolution"] = float(rows[0]["resolution"])
    (run_copy / "grid.json").write_text(json.dumps(rows))
    proc = cli("evaluate", run_copy, "--widths", "1", "--resolutions", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grid.json is damaged" in proc.stderr and "replaced" in proc.stderr


def _grid_keys(run: Path) -> list[tuple]:
    return [(r["width"], r["resolution"]) for r in json.loads((run / "grid.json").read_text())]


def test_evaluating_some_configurations_keeps_the_other_rows_of_the_grid(run_copy):
    """A second evaluation adds its rows to the table (replacing those of the same
    configurations, each once) instead of replacing the table."""
    before = {(r["width"], r["resolution"]): r
              for r in json.loads((run_copy / "grid.json").read_text())}
    proc = cli("evaluate", run_copy, "--widths", "0.75,0.75", "--resolutions", "16,16",
               "--batch-size", "16", "--batches", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((run_copy / "grid.json").read_text())
    assert sorted(_grid_keys(run_copy)) == sorted([*before, (0.75, 16)])
    assert all(r == before[(r["width"], r["resolution"])] for r in after
               if r["width"] != 0.75)
    assert "of 5 evaluated configurations" in (run_copy / "query_table.md").read_text()
    assert (run_copy / "grid.csv").read_text().count("\n") == len(after) + 1


def test_recalibrating_configurations_of_the_table_drops_their_rows(run_copy):
    """Rows measured with statistics that calibration replaced no longer hold; the others
    do, and stay (with the latency heading of the table they came from)."""
    before = json.loads((run_copy / "grid.json").read_text())
    for i, row in enumerate(before):  # as if measured on a GPU
        row["latency_ms"] = 1.0 + i
    write_results(run_copy, before, "cuda:3")
    proc = cli("calibrate", run_copy, "--widths", "0.5", "--resolutions", "12", "--batches", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["batches"] == 1
    assert "dropped 0.5-12 from the results" in proc.stderr
    assert json.loads((run_copy / "grid.json").read_text()) == [  # the device now in the rows
        {**r, "latency_device": "cuda:3"} for r in before if (r["width"], r["resolution"])
        != (0.5, 12)]
    assert (run_copy / "grid.csv").read_text().count("\n") == len(before)
    assert "## By measured latency (cuda:3)" in (run_copy / "query_table.md").read_text()
    proc = cli("calibrate", run_copy, "--widths", "0.5,1", "--resolutions", "12,16",
               "--batches", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any((run_copy / name).exists() for name in
                   ("grid.json", "grid.csv", "query_table.md", "pareto.png"))


def test_calibration_stopped_while_saving_leaves_no_row_its_statistics_do_not_back(
        run_copy, monkeypatch):
    from mutualnet.calibrate import calibrate_run
    from mutualnet.run import Run, load_run
    from mutualnet.space import Config

    weights = (run_copy / "model.safetensors").read_bytes()
    rows = json.loads((run_copy / "grid.json").read_text())

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Run, "save", stopped)
    with pytest.raises(KeyboardInterrupt), one_thread():
        calibrate_run(load_run(run_copy), [Config(0.5, 12)], batches=1, progress=False)
    assert (run_copy / "model.safetensors").read_bytes() == weights  # the statistics kept
    assert json.loads((run_copy / "grid.json").read_text()) == [  # their row gone
        r for r in rows if (r["width"], r["resolution"]) != (0.5, 12)]


def test_ctrl_c_while_the_results_are_written_waits_until_all_four_agree(tmp_path,
                                                                         monkeypatch):
    import mutualnet.select as select_module
    from mutualnet.train.checkpoint import atomic_write_bytes

    def row(width):
        return {"width": width, "resolution": 28, "mmacs": 2.4 * width, "top1": 90.0 * width}

    write_results(tmp_path, [row(1.0)])
    written = []

    def write_then_interrupt(path, data):
        atomic_write_bytes(path, data)
        written.append(path.name)
        if len(written) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the first and the second

    monkeypatch.setattr(select_module, "atomic_write_bytes", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_results(tmp_path, [row(1.0), row(0.5)])
    assert written == ["grid.json", "grid.csv", "query_table.md", "pareto.png"]
    assert (tmp_path / "grid.csv").read_text().count("\n") == 3
    assert "0.5-28" in (tmp_path / "query_table.md").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    from mutualnet.train.checkpoint import atomic_write_bytes

    (tmp_path / "grid.json").write_text("old")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "grid.json", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"]
    assert (tmp_path / "grid.json").read_text() == "old"


def test_calibration_reports_the_batches_it_had(run_copy):
    """48 training images make 6 batches of 8, whatever --batches asks for."""
    proc = cli("calibrate", run_copy, "--widths", "0.6", "--resolutions", "12", "--batches",
               "50", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1])["batches"] == 6
    assert (run_copy / "grid.json").exists()  # 0.6-12 has no row: the table holds


def test_the_log_holds_each_step_once_after_a_crash_and_a_resume(run_copy, recipe, tmp_path):
    """Lines written after the checkpoint a run resumes from (the steps it will train again),
    the done record of the leg it goes on from, and a line torn by a crash are dropped; a new training in a folder of a failed attempt
    starts a new log."""
    with open(run_copy / "log.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 3, "loss_full": 99.0}) + "\n")
        f.write('{"kind": "tra')
    proc = cli("train", run_copy / "config.yaml", "--out", run_copy, "--resume",
               "--max-steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_lines = [r for r in read_log(run_copy) if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [2, 3]
    assert train_lines[-1]["loss_full"] != 99.0
    # the first leg's end is not the run's: one done record, as an uninterrupted run has
    assert [r["step"] for r in read_log(run_copy) if r["kind"] == "done"] == [3]
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1}) + "\n")
    proc = cli("train", recipe, "--out", failed, "--max-steps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["kind"] for r in read_log(failed)] == ["train", "done"]


def test_an_export_over_a_file_of_the_run_is_refused(run):
    for name in ("model.safetensors", "checkpoint.pt", "grid.json"):
        fails_without_damage(run, "export", run, "--width", "0.5", "--resolution", "12",
                             "--format", "safetensors", "-o", run / name,
                             needles=(f"{name} is a file of the run",))


@pytest.mark.parametrize("name", ["grid.json", "log.jsonl", "model.safetensors"])
def test_a_folder_where_the_run_keeps_a_file_is_one_line(run_copy, recipe, name):
    """Found before any work (training would otherwise end in a traceback when it writes
    its results, after all its steps)."""
    (run_copy / name).unlink()
    (run_copy / name).mkdir()
    for command in (["train", recipe, "--out", run_copy, "--resume", "--max-steps", "3"],
                    ["calibrate", run_copy, "--widths", "0.5", "--resolutions", "12"],
                    ["evaluate", run_copy, "--widths", "0.5", "--resolutions", "12"]):
        fails_without_damage(run_copy, *command, needles=(f"{name} is a folder",))


def test_a_full_disk_under_the_log_loses_no_training(tmp_path, monkeypatch, caplog):
    """The log is a record, not the run: a write that fails is reported once and training
    goes on to its checkpoint and weights; the log takes up again when writes succeed."""
    import builtins

    from mutualnet.train import log as log_module

    full = {"on": True}

    def open_unless_full(path, *args, **kwargs):
        if full["on"] and Path(path).name == "log.jsonl":
            raise OSError(28, "No space left on device", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(log_module, "open", open_unless_full, raising=False)
    run = tmp_path / "run"
    with one_thread():
        summary = train(tiny("train.max_steps=3", "train.log_every=1", "train.validate=false"),
                        run)
    assert summary["steps"] == 3 and (run / "model.safetensors").is_file()
    warnings = [r.message for r in caplog.records if "log.jsonl" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in caplog.text
    full["on"] = False
    writer = log_module.RunLog(run, keep_until=3)
    writer.write({"kind": "train", "step": 3})
    assert [r["step"] for r in read_log(run)] == [3]


def test_a_full_disk_under_a_checkpoint_leaves_the_last_one_and_says_so(tmp_path,
                                                                      monkeypatch):
    import builtins

    from mutualnet.errors import CheckpointError
    from mutualnet.train import checkpoint as checkpoint_module

    path = tmp_path / "checkpoint.pt"
    checkpoint_module.atomic_write_bytes(path, b"last")

    def full(file, *args, **kwargs):
        handle = builtins.open(file, *args, **kwargs)
        handle.write = lambda data: (_ for _ in ()).throw(
            OSError(28, "No space left on device"))
        return handle

    monkeypatch.setattr(checkpoint_module, "open", full, raising=False)
    for target, kept in ((path, True), (tmp_path / "model.safetensors", False)):
        with pytest.raises(CheckpointError) as caught:
            checkpoint_module.atomic_write_bytes(target, b"next")
        message = str(caught.value)
        assert "No space left on device" in message and "free space" in message
        assert ("the one there is left as it was" in message) == kept, message
    assert path.read_bytes() == b"last" and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt"]


@contextlib.contextmanager
def held_by(run: Path, command: str, pid: int = 4242):
    """``run`` held as a running ``mutualnet command`` holds it (an flock on its .lock)."""
    import fcntl

    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"pid": pid, "command": command}))
        f.flush()
        yield


@pytest.mark.skipif(os.name != "posix", reason="run directories are locked with flock")
def test_a_run_in_use_by_another_command_is_refused_and_left_alone(run_copy, recipe, tmp_path):
    """Two commands writing into one run directory would leave a config, weights and table
    that disagree, or roll back the weights of a run trained meanwhile: the second is
    refused, naming the first, whichever commands they are."""
    needles = ("is in use by `mutualnet train` (process 4242)", "wait for it")
    with held_by(run_copy, "train"):
        fails_without_damage(run_copy, "calibrate", run_copy, "--widths", "0.5",
                             "--resolutions", "12", needles=needles)
        fails_without_damage(run_copy, "evaluate", run_copy, "--widths", "0.5",
                             "--resolutions", "12", needles=needles)
        fails_without_damage(run_copy, "train", recipe, "--out", run_copy, "--resume",
                             "--max-steps", "3", needles=needles)
        # export calibrates a configuration without statistics first, as calibrate does
        fails_without_damage(run_copy, "export", run_copy, "--width", "0.6", "--resolution",
                             "12", "--format", "safetensors", "-o", tmp_path / "m.safetensors",
                             needles=needles)
        # reading commands go on: every file they read is replaced atomically
        proc = cli("select", run_copy, "--max-mmacs", "1000")
        assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = tmp_path / "fresh"
    with held_by(fresh, "evaluate", pid=7):
        one_line_error(cli("train", recipe, "--out", fresh), "`mutualnet evaluate` (process 7)")
    assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
    # released when the holder ends, however it ends
    proc = cli("train", recipe, "--out", fresh, "--max-steps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli("calibrate", run_copy, "--widths", "0.5", "--resolutions", "12", "--batches", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# 1. bad input: damaged checkpoints and weights of another model


def _other_model_state():
    from mutualnet import create_model

    other = create_model("resnet18", num_classes=3, in_chans=1, width_range=(0.5, 1.0),
                         small_input=True)
    return other.state_dict()


def _damage(run: Path, kind: str) -> None:
    weights, checkpoint = run / "model.safetensors", run / "checkpoint.pt"
    if kind == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif kind == "weights-garbled":
        data = bytearray(weights.read_bytes())
        data[8:40] = b"#" * 32  # inside the JSON header
        weights.write_bytes(bytes(data))
    elif kind == "weights-of-another-model":
        _, meta = load_weights(weights)
        save_weights(weights, _other_model_state(), meta)
    elif kind == "weights-of-another-run":
        _, meta = load_weights(weights)
        save_weights(weights, _other_model_state(),
                     {**meta, "model": "resnet18", "options": {"small_input": True}})
    elif kind == "checkpoint-truncated":
        weights.unlink()
        checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    elif kind == "checkpoint-garbled":  # inside the pickle, the zip's first member
        weights.unlink()
        data = bytearray(checkpoint.read_bytes())
        data[300:364] = random.Random(0).randbytes(64)
        checkpoint.write_bytes(bytes(data))
    elif kind == "checkpoints-truncated":
        for path in (checkpoint, run / "checkpoint.prev.pt"):
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif kind == "checkpoint-without-training-state":
        (run / "checkpoint.prev.pt").unlink()
        state = load_checkpoint(checkpoint)
        torch.save({"model": state["model"]}, checkpoint)
    elif kind == "checkpoint-of-another-model":
        for path in (checkpoint, run / "checkpoint.prev.pt"):
            state = load_checkpoint(path)
            state["model"] = _other_model_state()
            state["meta"] = {**state["meta"], "model": "resnet18"}
            torch.save(state, path)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind,command,needle", [
    ("weights-truncated", "evaluate", "model.safetensors is corrupt"),
    ("weights-garbled", "evaluate", "model.safetensors is corrupt"),
    ("weights-of-another-model", "evaluate", "do not fit the MobileNetV2 of this run"),
    ("weights-of-another-run", "export", "holds a resnet18 but config.yaml beside it describes "
                                         "mobilenet_v2"),
    ("checkpoint-truncated", "evaluate", "checkpoint.pt is corrupt or truncated"),
    ("checkpoint-garbled", "evaluate", "checkpoint.pt is corrupt"),
    ("checkpoints-truncated", "resume", "cannot resume"),
    ("checkpoint-without-training-state", "resume", "lacks optimizer, rng, step"),
    ("checkpoint-of-another-model", "resume", "do not fit"),
])
def test_a_damaged_or_foreign_checkpoint_is_one_line_and_changes_nothing(
        tmp_path, run_copy, kind, command, needle):
    _damage(run_copy, kind)
    args = {
        "evaluate": ["evaluate", run_copy, "--widths", "1", "--resolutions", "16"],
        "export": ["export", run_copy, "--width", "1", "--resolution", "16", "--format",
                   "safetensors", "-o", tmp_path / "m.safetensors"],
        "resume": ["train", run_copy / "config.yaml", "--out", run_copy, "--resume",
                   "--max-steps", "4"],
    }[command]
    line = fails_without_damage(run_copy, *args, needles=(needle,))
    assert any(fix in line for fix in ("restore", "retrain"))


# ---------------------------------------------------------------------------------------------
# 1. bad input: outputs that cannot be written


@pytest.mark.parametrize("where", ["{file}/run", "{file}", "{unwritable}/mutualnet-run"])
def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path, recipe, unwritable,
                                                            where):
    (tmp_path / "a-file").write_text("x")
    out = Path(where.format(file=tmp_path / "a-file", unwritable=unwritable))
    one_line_error(cli("train", recipe, "--out", out), "cannot create run directory",
                   "choose a writable --out")
    assert (tmp_path / "a-file").read_text() == "x" and not out.is_dir()


@pytest.mark.parametrize("output,needle", [
    ("{tmp}/missing/m.onnx", "does not exist; create it or choose another -o"),
    ("{tmp}/a-file/m.onnx", "is a file, not a directory"),
    ("{tmp}", "it is a directory; give a file name"),
    ("{unwritable}/m.onnx", "choose a writable -o"),
])
def test_an_export_that_cannot_be_written_is_one_line_and_changes_nothing(tmp_path, run,
                                                                          unwritable, output,
                                                                          needle):
    (tmp_path / "a-file").write_text("x")
    out = output.format(tmp=tmp_path, unwritable=unwritable)
    fails_without_damage(run, "export", run, "--width", "0.5", "--resolution", "12", "--format",
                         "onnx", "-o", out, needles=(needle,))
    assert not Path(out).is_file()


def test_an_export_cut_short_leaves_nothing_beside_its_output(tmp_path, run, monkeypatch):
    from mutualnet import export
    from mutualnet.run import load_run
    from mutualnet.space import Config

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "verify_onnx", interrupted)
    out = tmp_path / "exports"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export.export_run(load_run(run), Config(0.5, 12), "onnx", out / "m.onnx")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command, bad, needle", [
    (["make-scenes", "--train", "2", "--val", "2", "--size", "32"], ["--size", "8"],
     "at least 32 pixels"),
    (["make-video-data", "--train", "1", "--val", "1"], ["--seed", "99999999999999999999"],
     "--seed: must be between -2**62 and 2**62 - 1, got 99999999999999999999"),
])
def test_dataset_writers_refuse_a_folder_with_files_and_leave_nothing_when_refused(
        tmp_path, unwritable, command, bad, needle):
    name, *options = command
    held = tmp_path / "held"
    held.mkdir()
    (held / "mine.txt").write_text("x")
    one_line_error(cli(name, held, *options), "not an empty folder")
    assert [p.name for p in held.iterdir()] == ["mine.txt"]
    one_line_error(cli(name, unwritable / "data", *options), "choose a writable folder")
    if bad:
        fresh = tmp_path / "fresh"
        one_line_error(cli(name, fresh, *options, *bad), needle)
        assert not fresh.exists()


@pytest.mark.parametrize("writer", ["videos", "scenes"])
def test_an_interrupted_dataset_writer_leaves_no_partial_dataset(tmp_path, monkeypatch, writer):
    """A dataset cut short would train without a word on what it holds: the folder appears
    only when every file is written, and the next writer starts clean."""
    from mutualnet.data import motion, scenes

    written = []

    def interrupt_at_the_third(real):
        def write(*args, **kwargs):
            if len(written) == 2:
                raise KeyboardInterrupt
            written.append(args)
            return real(*args, **kwargs)
        return write

    out = tmp_path / "data"
    if writer == "videos":
        monkeypatch.setattr(motion, "_write_video", interrupt_at_the_third(motion._write_video))
        run = lambda: motion.write_motion_videos(out, 1, 1)  # noqa: E731
    else:
        from PIL import Image

        monkeypatch.setattr(Image.Image, "save", interrupt_at_the_third(Image.Image.save))
        run = lambda: scenes.write_scenes(out, train=3, val=2, size=32)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        run()
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert {p.name for p in out.iterdir()} >= {"train", "val"}


def test_a_dataset_writer_stages_apart_from_other_writers_and_the_users_folders(tmp_path):
    from mutualnet.data.base import new_folder
    from mutualnet.errors import DataError

    mine = tmp_path / ".data.partial"  # a folder of the user's, named as staging once was
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    out = tmp_path / "data"
    # the first to finish has the folder; the other finds it taken and leaves it whole
    with pytest.raises(DataError, match="cannot write scenes to .*data: Directory not empty"):
        with new_folder(out, "scenes") as first:
            (first / "a").write_text("first")
            with new_folder(out, "scenes") as second:
                assert first != second and first.parent == second.parent == tmp_path
                (second / "b").write_text("second")
    assert [p.name for p in out.iterdir()] == ["b"]
    assert (mine / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.partial", "data"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "link").symlink_to(empty)
    with new_folder(tmp_path / "link", "scenes") as stage:
        (stage / "c").write_text("c")
    assert (tmp_path / "link").is_symlink() and [p.name for p in empty.iterdir()] == ["c"]


# ---------------------------------------------------------------------------------------------
# 2. interruptions


STEPS = 24
KILL_RECIPE = ("train.validate=false", "train.checkpoint_every=1", "train.log_every=1",
               "train.batch_size=16", f"train.max_steps={STEPS}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[str, Path]:
    """The recipe of the interruption tests and the run it gives without interruption (both
    through the CLI, so every process computes with the same threads)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    recipe = tiny_yaml(folder, *KILL_RECIPE)
    proc = cli("train", recipe, "--out", folder / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return recipe, folder / "run"


def logged_lines(run: Path) -> int:
    path = run / "log.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def step_seconds(run: Path) -> float:
    """The mean time of one training step of a finished run, from its log."""
    times = [r["time"] for r in read_log(run) if r["kind"] == "train"]
    return (times[-1] - times[0]) / (len(times) - 1)


def _train_until_killed(recipe: str, run: Path, resume: bool, lines: int, delay: float) -> bool:
    """Start training, SIGKILL it once log.jsonl holds ``lines`` lines and ``delay`` seconds
    more have passed; False if it finished first."""
    cmd = [sys.executable, "-m", "mutualnet", "train", recipe, "--out", str(run)]
    proc = subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 180
    while proc.poll() is None and logged_lines(run) < lines and time.time() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    if proc.poll() is not None:
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    return True


def test_sigkill_at_random_points_then_resume_gives_the_same_weights(tmp_path, uninterrupted):
    recipe, reference = uninterrupted
    run = tmp_path / "run"
    rng = random.Random(1234)
    step = step_seconds(reference)
    kills = 0
    for trial in range(3):
        # the first kill waits for step 2's log line: step 1's checkpoint is then on disk;
        # the delay puts the kill anywhere in a step (a checkpoint is written at every step)
        lines = logged_lines(run) + (rng.randint(1, 3) if trial else rng.randint(2, 4))
        kills += _train_until_killed(recipe, run, resume=trial > 0, lines=lines,
                                     delay=rng.uniform(0.0, 1.5) * step)
    assert kills == 3, "training finished before it could be killed three times"
    assert load_checkpoint(run / "checkpoint.pt")["step"] < STEPS
    proc = cli("train", recipe, "--out", run, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(reference, run)
    assert not stray_files(run)
    tensors, _ = load_weights(run / "model.safetensors")
    expected, _ = load_weights(reference / "model.safetensors")
    assert all(torch.equal(expected[k], v) for k, v in tensors.items())


def test_a_checkpoint_torn_by_a_crash_is_replaced_by_the_previous_one(tmp_path, uninterrupted):
    recipe, reference = uninterrupted
    run = tmp_path / "run"
    assert cli("train", recipe, "--out", run, "--max-steps", "2").returncode == 0
    previous = load_checkpoint(run / "checkpoint.prev.pt")["step"]
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 3])
    (run / ".checkpoint.pt.new").write_bytes(good[: len(good) // 2])
    (run / "..checkpoint.pt.new.tmp-999999").write_bytes(good[:100])
    proc = cli("train", recipe, "--out", run, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint.prev.pt instead" in proc.stderr
    assert f"at step {previous}\n" in proc.stderr
    assert_same_weights(reference, run)
    load_checkpoint(run / "checkpoint.prev.pt")  # the torn file never became the previous one
    assert not stray_files(run)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no handler catches it."""


def test_a_crash_at_any_instant_of_a_save_leaves_a_whole_checkpoint(tmp_path, monkeypatch):
    """Every file-system call of ``save_checkpoint`` in turn is where the process dies."""
    import types

    from mutualnet.train import checkpoint as module

    def state(step: int) -> dict:
        return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {},
                "rng": {"torch": torch.get_rng_state(), "python": None}, "step": step}

    calls: list[str] = []
    crash_at: list[int] = [-1]

    def counted(name: str):
        real = getattr(os, name)

        def call(*args, **kwargs):
            if len(calls) == crash_at[0]:
                raise Crash(name)
            calls.append(name)
            return real(*args, **kwargs)
        return call

    fake_os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith("_")})
    for name in ("fsync", "replace", "link"):
        setattr(fake_os, name, counted(name))
    monkeypatch.setattr(module, "os", fake_os)

    def fresh(folder: Path) -> Path:
        folder.mkdir()
        save_checkpoint(folder, state(1))
        save_checkpoint(folder, state(2))
        calls.clear()
        return folder

    save_checkpoint(fresh(tmp_path / "count"), state(3))
    points = len(calls)
    assert {"fsync", "replace", "link"} <= set(calls)
    for point in range(points):
        folder = fresh(tmp_path / f"crash{point}")
        crash_at[0] = point
        with pytest.raises(Crash):
            save_checkpoint(folder, state(3))
        crash_at[0] = -1
        assert load_checkpoint(folder / "checkpoint.pt")["step"] in (2, 3), calls
        assert load_checkpoint(folder / "checkpoint.prev.pt")["step"] in (1, 2), calls
        assert resume_checkpoint(folder)["step"] in (2, 3)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    recipe = tiny_yaml(tmp_path, "train.epochs=50", "train.validate=false", "train.log_every=1")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mutualnet", "train", recipe, "--out",
                             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGINT at step "), err
    assert "continue with --resume" in lines[0]
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert f"at step {step};" in lines[0]


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
@pytest.mark.parametrize("validate", [False, True], ids=["training", "validating"])
def test_sigterm_to_the_process_group_with_loader_workers_saves_a_checkpoint(tmp_path,
                                                                            validate):
    """`timeout` and service managers signal the whole process group: the loader's worker
    processes get SIGTERM too, and their death must not take the run down with a traceback,
    whether it comes while training or while validating."""
    recipe = tiny_yaml(tmp_path, "train.epochs=50", f"train.validate={str(validate).lower()}",
                       "train.log_every=1", "data.num_workers=2")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mutualnet", "train", recipe, "--out",
                             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, start_new_session=True)
    deadline = time.time() + 120
    wanted = "val" if validate else "train"
    while time.time() < deadline and not any(r.get("kind") == wanted
                                             for r in _log_so_far(run)):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [x for x in err.strip().splitlines() if not x.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGTERM at step "), err
    assert load_checkpoint(run / "checkpoint.pt")["step"] >= 1


def _log_so_far(run: Path) -> list[dict]:
    try:
        return read_log(run)
    except (OSError, json.JSONDecodeError):  # not written yet, or a line half written
        return []


def test_a_resume_of_a_run_whose_checkpoints_are_gone_does_not_send_back_to_train(run_copy,
                                                                                  recipe):
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_copy / name).unlink(missing_ok=True)
    line = fails_without_damage(run_copy, "train", recipe, "--out", run_copy, "--resume",
                                "--max-steps", "4",
                                needles=("holds weights (model.safetensors) but no "
                                         "checkpoint.pt", "another --out directory"))
    assert "without --resume" not in line


def test_a_resume_without_the_runs_recipe_says_how_to_go_on(tmp_path, run_copy, recipe):
    (run_copy / "config.yaml").unlink()
    fails_without_damage(run_copy, "train", recipe, "--out", run_copy, "--resume",
                         "--max-steps", "4",
                         needles=("config.yaml is missing", "copy there the recipe"))
    shutil.copy(recipe, run_copy / "config.yaml")  # what the message says to do
    proc = cli("train", recipe, "--out", run_copy, "--resume", "--max-steps", "4")
    assert proc.returncode == 0, proc.stderr


def test_a_resume_on_a_training_set_of_another_size_is_refused(tmp_path, run_copy):
    other = tmp_path / "other"
    write_idx_folder(other, tiny_idx_arrays(n_train=40, n_val=16, h=12, w=12, classes=3))
    fails_without_damage(run_copy, "train", run_copy / "config.yaml", "--out", run_copy,
                         "--resume", "--max-steps", "4", "--data", other,
                         needles=("holds 40 items but", "was trained on 48",
                                  "point --data at the run's data"))


def test_commands_on_an_unfinished_run_say_so_until_training_finishes(run_copy):
    # interrupted before its weights were written: only the checkpoint of step 2 is there
    for name in ("model.safetensors", "grid.json", "grid.csv", "query_table.md", "pareto.png"):
        (run_copy / name).unlink(missing_ok=True)
    notice = "has not finished training: its weights are those of step 2"
    proc = cli("calibrate", run_copy, "--widths", "1.0", "--resolutions", "12")
    assert proc.returncode == 0, proc.stderr
    assert notice in proc.stderr
    # the weights file calibration wrote carries it on
    proc = cli("export", run_copy, "--width", "1.0", "--resolution", "12",
               "--format", "safetensors", "-o", run_copy.parent / "net.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert notice in proc.stderr
    # the checkpoint is of the last step: resuming finishes the run (weights and log)
    proc = cli("train", run_copy / "config.yaml", "--out", run_copy, "--resume")
    assert proc.returncode == 0 and "nothing to train" not in proc.stderr, proc.stderr
    assert json.loads((run_copy / "log.jsonl").read_text().splitlines()[-1])["kind"] == "done"
    proc = cli("export", run_copy, "--width", "1.0", "--resolution", "12",
               "--format", "safetensors", "-o", run_copy.parent / "net.safetensors")
    assert proc.returncode == 0 and "not finished" not in proc.stderr, proc.stderr


def test_a_run_trained_on_and_stopped_before_its_weights_serves_its_latest_step(run_copy,
                                                                                 monkeypatch):
    """A finished run trained further (a later leg) and stopped before that leg wrote its
    weights: its weights file is of the first leg, its checkpoint of the later step; commands
    must take the checkpoint and say so, not the older weights in silence."""
    import mutualnet.train.loop as loop
    from mutualnet.run import load_run

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_weights", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(str(run_copy / "config.yaml"), ["train.max_steps=4"]), run_copy,
              resume=True)
    monkeypatch.undo()
    latest = load_checkpoint(run_copy / "checkpoint.pt")
    assert latest["step"] == 4
    proc = cli("export", run_copy, "--width", "1.0", "--resolution", "12",
               "--format", "safetensors", "-o", run_copy.parent / "net.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert "has not finished training: its weights are those of step 4" in proc.stderr
    model = load_run(run_copy).model.state_dict()
    assert all(torch.equal(model[k], v) for k, v in latest["model"].items())
    proc = cli("train", run_copy / "config.yaml", "--out", run_copy, "--resume",
               "--max-steps", "4")
    assert proc.returncode == 0, proc.stderr
    proc = cli("calibrate", run_copy, "--widths", "1.0", "--resolutions", "12")
    assert proc.returncode == 0 and "not finished" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------------
# 3. files that would run code


@pytest.mark.parametrize("layout", ["torch-zip", "bare-pickle"])
@pytest.mark.parametrize("command", ["resume", "evaluate"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, run_copy, layout, command):
    marker = tmp_path / "MARKER"
    path = run_copy / "checkpoint.pt"
    if layout == "torch-zip":
        state = load_checkpoint(path)
        state["meta"]["note"] = Evil(marker)
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps({"model": Evil(marker)}, protocol=2))
    if command == "evaluate":
        (run_copy / "model.safetensors").unlink()
        args = ["evaluate", run_copy]
    else:  # a good checkpoint.prev.pt is there, and must not be taken instead
        args = ["train", run_copy / "config.yaml", "--out", run_copy, "--resume",
                "--max-steps", "4"]
    fails_without_damage(run_copy, *args,
                         needles=("checkpoint.pt asks to run code when loaded", "system",
                                  "refusing to load it"))
    assert not marker.exists()


def test_a_checkpoint_whose_pickle_does_not_decode_says_so_not_a_bare_key(tmp_path):
    import io
    import zipfile

    from mutualnet.errors import CheckpointError
    from mutualnet.train.checkpoint import torch_load

    saved = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, saved)
    damaged = io.BytesIO()
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():  # data.pkl fetches memo entry 246, which was never put
            target.writestr(name, b"\x80\x02h\xf6." if name.endswith("data.pkl")
                            else source.read(name))
    (tmp_path / "c.pt").write_bytes(damaged.getvalue())
    with pytest.raises(CheckpointError, match=r"c.pt is corrupt or truncated \(its pickled data "
                                              r"does not decode\); restore the file") as err:
        torch_load(tmp_path / "c.pt")
    assert "246" not in str(err.value)


def test_an_official_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "official.pt"
    torch.save({"model": {"classifier.0.weight": Evil(marker)}}, evil)
    one_line_error(cli("convert-official", evil, "--arch", "mobilenet_v1", "-o", tmp_path / "r"),
                   "asks to run code when loaded", "refusing to load it")
    assert not marker.exists() and not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# 4. numerical faults


def test_a_non_finite_loss_stops_and_leaves_the_last_checkpoint_intact(tmp_path):
    recipe = tiny_yaml(tmp_path, "optim.lr=1e30", "train.checkpoint_every=1",
                       "train.validate=false", "train.max_steps=6")
    run = tmp_path / "run"
    line = one_line_error(cli("train", recipe, "--out", run), "non-finite loss at step",
                          "lower optim.lr")
    found = re.search(r"at step (\d+) in configuration width=[\d.]+ resolution=\d+", line)
    assert found, line
    step = int(found[1])
    last = load_checkpoint(run / "checkpoint.pt")
    assert last["step"] == step  # saved after the step before the fault, and sound
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    # resuming repeats the fault at the same step, and nothing of the run changes
    before = snapshot(run)
    proc = cli("train", recipe, "--out", run, "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"resumed {run} at step {step}", line]
    assert snapshot(run) == before


def test_skip_nonfinite_skips_such_steps_and_finishes(tmp_path):
    recipe = tiny_yaml(tmp_path, "optim.lr=1e30", "train.skip_nonfinite=true",
                       "train.validate=false", "train.max_steps=5")
    proc = cli("train", recipe, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step skipped (train.skip_nonfinite)" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 5
    assert (tmp_path / "run" / "model.safetensors").is_file()
