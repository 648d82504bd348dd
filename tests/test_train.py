"""The training engine on tiny synthetic data: learning, exact resume, DDP, CLI."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mutualnet.config import load_config
from mutualnet.errors import ConfigError
from mutualnet.train import train
from mutualnet.train.checkpoint import load_checkpoint, load_weights

TINY = [
    "model.name=mobilenet_v2",
    "model.options={block_setting: [[1, 8, 1, 1], [2, 16, 1, 2], [2, 24, 1, 2]], "
    "last_channels: 64, stem_channels: 8}",
    "space.width_range=[0.5, 1.0]",
    "space.resolutions=[16, 12]",
    "data.format=synthetic",
    "data.num_workers=0",
    "optim.lr=0.1",
    "train.batch_size=32",
    "train.progress=false",
    "train.log_every=5",
]


def tiny(*extra: str):
    return load_config(None, TINY + list(extra))


def tiny_yaml(tmp_path: Path, *extra: str) -> str:
    import yaml

    from mutualnet.config import config_to_dict

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(tiny(*extra))))
    return str(path)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_short_run_learns_and_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny("train.epochs=3"), run)
    assert summary["steps"] == 3 * (640 // 32)
    records = read_log(run)
    losses = [r["loss_full"] for r in records if r["kind"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    val = [r for r in records if r["kind"] == "val"][-1]
    assert val["top1_full"] > 50 and val["top1_smallest"] > 30  # 10 classes: chance is 10%
    for name in ("config.yaml", "checkpoint.pt", "model.safetensors", "log.jsonl"):
        assert (run / name).is_file()
    tensors, meta = load_weights(run / "model.safetensors")
    assert meta["model"] == "mobilenet_v2" and meta["num_classes"] == 10
    assert any(".calibrated.w0p5_r12." in k for k in tensors)


def test_resume_continues_to_the_same_weights(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ("train.epochs=2", "train.validate=false", "model.options.dropout=0.2")
    train(tiny(*extra), straight)
    train(tiny(*extra, "train.max_steps=27"), resumed)
    assert load_checkpoint(resumed / "checkpoint.pt")["step"] == 27
    train(tiny(*extra), resumed, resume=True)
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 40
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_validation_leaves_training_as_it_was_and_resume_after_it_is_exact(tmp_path):
    """Dropout draws from the global generator, which a validation's loader also draws its
    seed from: a run stopped at an epoch's end (its checkpoint saved before the validation)
    and resumed, and one that never validates, must end with the same weights."""
    extra = ("train.epochs=2", "model.options.dropout=0.2")
    runs = {name: tmp_path / name for name in ("straight", "resumed", "unvalidated")}
    train(tiny(*extra), runs["straight"])
    train(tiny(*extra, "train.max_steps=20"), runs["resumed"])  # the end of epoch 1
    train(tiny(*extra), runs["resumed"], resume=True)
    train(tiny(*extra, "train.validate=false"), runs["unvalidated"])
    a = load_checkpoint(runs["straight"] / "checkpoint.pt")["model"]
    for name in ("resumed", "unvalidated"):
        b = load_checkpoint(runs[name] / "checkpoint.pt")["model"]
        for key, value in a.items():
            assert torch.equal(value, b[key]), (name, key)


def test_statistics_of_an_epochs_validation_are_not_saved_with_later_weights(tmp_path):
    """Validation calibrates the full and smallest configurations at the epoch's end; weights
    trained past it (a stop part-way through the next epoch) must not carry those statistics,
    which `evaluate` would take as calibrated for them."""
    run = tmp_path / "run"
    train(tiny("train.epochs=2", "train.max_steps=27"), run)  # validation at step 20
    for path in (run / "model.safetensors", run / "checkpoint.pt"):
        state = load_weights(path)[0] if path.suffix == ".safetensors" else \
            load_checkpoint(path)["model"]
        assert not [k for k in state if ".calibrated." in k], path
    train(tiny("train.epochs=2"), run, resume=True)  # validation at step 40, the last
    tensors, _ = load_weights(run / "model.safetensors")
    assert any(".calibrated.w0p5_r12." in k for k in tensors)


def test_a_run_stopped_in_its_last_validation_validates_when_resumed(tmp_path, monkeypatch):
    """The checkpoint of the last step is saved before the last validation; a run stopped
    during that validation is resumed at its last step with nothing left to train, and must
    still validate, so that its weights carry the calibrated statistics of the full and
    smallest configurations."""
    import mutualnet.train.loop as loop

    run = tmp_path / "run"
    validate = loop._validate

    def stopped(*args, **kwargs):
        if args[-1] == 40:  # the last step
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(loop, "_validate", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(tiny("train.epochs=2"), run)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 40
    monkeypatch.setattr(loop, "_validate", validate)
    summary = train(tiny("train.epochs=2"), run, resume=True)
    assert summary["validation"] is not None
    assert [r["step"] for r in read_log(run) if r["kind"] == "val"] == [20, 40]
    tensors, _ = load_weights(run / "model.safetensors")
    assert any(".calibrated.w0p5_r12." in k for k in tensors)


def test_a_signal_while_the_weights_are_written_lets_them_be_written(tmp_path, monkeypatch):
    """Training is over when its weights are written: a Ctrl-C then waits for the file."""
    import signal

    import mutualnet.train.loop as loop

    save = loop.save_weights

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_weights", signalled)
    run = tmp_path / "run"
    assert train(tiny("train.epochs=1", "train.validate=false"), run)["steps"] == 20
    assert load_weights(run / "model.safetensors")[1]["model"] == "mobilenet_v2"
    assert read_log(run)[-1]["kind"] == "done"


def test_resume_with_more_epochs_trains_further_and_records_them(tmp_path):
    import yaml

    run = tmp_path / "run"
    train(tiny("train.epochs=1", "train.validate=false"), run)
    summary = train(tiny("train.epochs=2", "train.validate=false"), run, resume=True)
    assert summary["steps"] == 40 and load_checkpoint(run / "checkpoint.pt")["step"] == 40
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert train(tiny("train.epochs=2", "train.validate=false"), run, resume=True)["steps"] == 40
    # the recipe records the latest leg, so that resuming with it goes on from there
    train(tiny("train.epochs=3", "train.max_steps=50", "train.validate=false"), run, resume=True)
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (recorded["epochs"], recorded["max_steps"]) == (3, 50)
    assert train(load_config(str(run / "config.yaml")), run, resume=True)["steps"] == 50
    # fewer epochs would relay the learning-rate schedule under the steps already trained
    with pytest.raises(ConfigError, match="cannot lower train.epochs from 3 to 1.*--max-steps"):
        train(tiny("train.epochs=1", "train.validate=false"), run, resume=True)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3


def test_the_nothing_to_train_hint_names_what_stops_the_run(tmp_path, caplog):
    """A finished run says which limit to raise: the one that stops it (both when they
    coincide; raising --max-steps past the epochs' end trains nothing)."""
    run = tmp_path / "run"
    train(tiny("train.epochs=1", "train.max_steps=20", "train.validate=false"), run)  # 20 a leg
    for extra, hint in ((["train.max_steps=20"], "raise --epochs and --max-steps to go on"),
                        ([], "raise --epochs to go on"),
                        (["train.max_steps=30"], "raise --epochs to go on"),
                        (["train.epochs=2", "train.max_steps=20"], "raise --max-steps to go on")):
        caplog.clear()
        epochs = [] if any(e.startswith("train.epochs") for e in extra) else ["train.epochs=1"]
        with caplog.at_level("INFO", logger="mutualnet"):
            summary = train(tiny(*epochs, *extra, "train.validate=false"), run, resume=True)
        assert summary["steps"] == 20
        assert f"nothing to train ({hint})" in caplog.text, (extra, caplog.text)


def test_a_resume_stopped_before_its_first_step_leaves_the_recipe_as_it_was(tmp_path,
                                                                             monkeypatch):
    import mutualnet.train.loop as loop

    run = tmp_path / "run"
    train(tiny("train.epochs=1", "train.validate=false"), run)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "RunLog", ctrl_c)  # Ctrl-C while the leg starts
        with pytest.raises(KeyboardInterrupt):
            train(tiny("train.epochs=40", "train.validate=false"), run, resume=True)
    assert "epochs: 1\n" in (run / "config.yaml").read_text()
    # nothing was trained at 40 epochs: the run may go on at any length from its 1 epoch
    train(tiny("train.epochs=2", "train.validate=false"), run, resume=True)
    assert "epochs: 2\n" in (run / "config.yaml").read_text()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 40


def test_resume_refuses_a_changed_recipe(tmp_path):
    from mutualnet.errors import ConfigError

    run = tmp_path / "run"
    train(tiny("train.max_steps=2", "train.validate=false"), run)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(tiny("optim.lr=0.3", "train.validate=false"), run, resume=True)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    from mutualnet.errors import ConfigError

    run = tmp_path / "run"
    train(tiny("train.max_steps=1", "train.validate=false"), run)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny("train.max_steps=1", "train.validate=false"), run)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_micro_batches_sum_to_the_whole_batch_without_batch_norm_effects(tmp_path):
    """With accumulate=2 each half-batch is normalised alone, so it is a different (documented)
    computation from accumulate=1; both must train and stay finite."""
    run = tmp_path / "acc"
    summary = train(tiny("train.max_steps=4", "train.accumulate=2", "train.validate=false"), run)
    assert summary["steps"] == 4


def _torchrun(args: list[str], env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mutualnet", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """Two gloo processes with 16 images each equal one process with the 32-image batch split
    into two micro-batches (BN normalises per 16 images in both). Weights must agree to 1e-4
    (only the order of float sums differs); BN running statistics are not compared, as one
    process updates them per micro-batch and DDP keeps rank 0's."""
    recipe = tiny_yaml(tmp_path, "train.max_steps=6", "train.validate=false")
    ddp = tmp_path / "ddp"
    proc = _torchrun(["train", recipe, "--out", str(ddp), "--device", "cpu"], {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecated" not in proc.stderr  # torch's DDP options as torch now names them
    single = tmp_path / "single"
    train(tiny("train.max_steps=6", "train.validate=false", "train.accumulate=2"), single)
    a = load_checkpoint(ddp / "checkpoint.pt")["model"]
    b = load_checkpoint(single / "checkpoint.pt")["model"]
    weights = [k for k in a if "running_" not in k and "num_batches" not in k]
    assert len(weights) > 20
    worst = max((a[k] - b[k]).abs().max().item() for k in weights)
    assert worst < 1e-4


def test_a_data_error_in_one_process_is_one_line_in_every_process(tmp_path):
    """A damaged validation image read by rank 0 only: rank 0 names it, and rank 1, whose
    collective then fails, says that another process stopped (not gloo's traceback) unless
    torchrun, seeing rank 0 exit, terminated it first (a race: then it prints nothing)."""
    from test_data import make_image_folder

    root = make_image_folder(tmp_path / "data", per_class=4)
    (root / "val" / "cat" / "0.png").write_bytes(b"broken")  # the first: rank 0's share
    recipe = tiny_yaml(tmp_path, "data.format=image_folder", f"data.root={root}",
                       "data.augment=none", "data.hflip=false", "train.batch_size=4",
                       "train.epochs=1")
    proc = _torchrun(["train", recipe, "--out", str(tmp_path / "run"), "--device", "cpu"], {})
    assert proc.returncode != 0
    assert f"error: cannot read image {root / 'val' / 'cat' / '0.png'}" in proc.stderr
    assert "error: process 1 of 2: another process of this run stopped (its error is " \
           "printed above)" in proc.stderr or "Signal 15 (SIGTERM) received" in proc.stderr
    assert "closed by peer" not in proc.stderr and "mutualnet/cli.py" not in proc.stderr


def test_a_resume_with_another_process_count_warns_that_it_is_not_exact(tmp_path, caplog):
    run = tmp_path / "run"
    train(tiny("train.max_steps=2", "train.validate=false"), run)
    assert load_checkpoint(run / "checkpoint.pt")["processes"] == 1
    with caplog.at_level("WARNING", logger="mutualnet"):
        train(tiny("train.max_steps=3", "train.validate=false"), run, resume=True)
    assert "trained with" not in caplog.text  # the same count: nothing to say
    state = load_checkpoint(run / "checkpoint.pt")
    torch.save({**state, "processes": 2}, run / "checkpoint.pt")  # as a two-process run saves it
    with caplog.at_level("WARNING", logger="mutualnet"):
        train(tiny("train.max_steps=4", "train.validate=false"), run, resume=True)
    assert f"{run} was trained with 2 process(es) and goes on with 1: each process " \
           f"normalises its own share of the batch" in caplog.text


def test_fp16_on_the_cpu_warns_that_it_is_slow(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="mutualnet"):
        train(tiny("train.max_steps=1", "train.validate=false", "train.amp=bf16"), tmp_path / "a")
    assert "slow half-precision kernels" not in caplog.text
    with caplog.at_level("WARNING", logger="mutualnet"):
        train(tiny("train.max_steps=1", "train.validate=false", "train.amp=fp16"), tmp_path / "b")
    assert "train.amp fp16 runs on the CPU through slow half-precision kernels" in caplog.text


def test_validation_split_over_two_processes_equals_one_process(tmp_path):
    """Each process evaluates every other validation image and the counts are summed: the
    logged top-1 of a two-process run equals one process validating the same final weights."""
    from mutualnet.run import load_run
    from mutualnet.tasks import ClassificationTask
    from mutualnet.train.distributed import Distributed
    from mutualnet.train.loop import _validate

    recipe = tiny_yaml(tmp_path, "train.epochs=1")
    ddp = tmp_path / "ddp"
    proc = _torchrun(["train", recipe, "--out", str(ddp), "--device", "cpu"], {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (logged,) = [r for r in read_log(ddp) if r["kind"] == "val"]
    run = load_run(ddp)
    train_ds, val_ds = run.datasets()
    single = _validate(run.model, train_ds, val_ds, run.space, ClassificationTask(), run.config,
                       torch.device("cpu"), Distributed(), logged["step"])
    assert {k: logged[k] for k in single} == single
    assert 0 < single["top1_full"] <= 100


def test_cli_train_runs_and_reports(tmp_path):
    recipe = tiny_yaml(tmp_path, "train.validate=false")
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "train", recipe, "--out",
                           str(tmp_path / "r"), "--max-steps", "3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 3


def test_cli_train_records_the_data_folder_as_an_absolute_path_taken_literally(tmp_path):
    """--data is a path, not YAML ("my data: v2" is a folder name), and the run records it
    absolute, so that its commands find the data from any working directory."""
    import yaml
    from test_data import make_image_folder

    make_image_folder(tmp_path / "my data: v2", per_class=4)
    recipe = tiny_yaml(tmp_path, "data.format=image_folder", "data.augment=none",
                       "data.hflip=false", "train.batch_size=4", "train.validate=false")
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "train", recipe, "--data",
                           "my data: v2", "--out", "run", "--max-steps", "1"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["root"]
    assert recorded == str(tmp_path / "my data: v2")


def test_cli_train_with_a_missing_recipe_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "train", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not exist" in proc.stderr


def _format_data(kind: str, root: Path) -> list[str]:
    """A tiny dataset on disk in one of the supported formats, and the keys that select it."""
    from test_data import make_image_folder, tiny_idx_arrays, write_idx_folder, write_cifar10

    if kind == "idx":
        write_idx_folder(root, tiny_idx_arrays(n_train=48, n_val=16, h=12, w=12, classes=3),
                         gz=True)
        return ["data.format=idx", f"data.root={root}"]
    if kind == "cifar10":
        write_cifar10(root)
        return ["data.format=cifar10", f"data.root={root}"]
    make_image_folder(root, classes=("a", "b", "c"), per_class=6)
    return ["data.format=image_folder", f"data.root={root}", "data.augment=resized_crop"]


@pytest.mark.parametrize("kind", ["idx", "cifar10", "image_folder"])
def test_training_runs_on_every_on_disk_format(tmp_path, kind):
    keys = _format_data(kind, tmp_path / "data")
    summary = train(tiny(*keys, "train.batch_size=8", "train.epochs=1"), tmp_path / "run")
    assert summary["steps"] >= 1 and summary["validation"] is not None


@pytest.mark.parametrize("extra", [["train.amp=bf16"], ["train.channels_last=true"]])
def test_mixed_precision_and_channels_last_train(tmp_path, extra):
    summary = train(tiny("train.max_steps=4", "train.validate=false", *extra), tmp_path / "r")
    assert summary["steps"] == 4
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    import signal
    import time

    recipe = tiny_yaml(tmp_path, "train.epochs=50", "train.validate=false")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mutualnet", "train", recipe, "--out",
                             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "log.jsonl").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint saved" in err and len(err.strip().splitlines()) == 1
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert step >= 5
    summary = train(tiny("train.epochs=50", "train.validate=false", f"train.max_steps={step + 2}"),
                    run, resume=True)
    assert summary["steps"] == step + 2


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
@pytest.mark.parametrize("setting,kept", [(None, True), ("system", False)])
def test_freed_memory_is_kept_for_reuse_unless_the_environment_says_system(setting, kept):
    code = (
        "import os, torch\n"
        "from mutualnet.train.allocator import retain_freed_memory\n"
        "applied = retain_freed_memory()\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "x = torch.empty(16 * 2**20)\n"
        "x.fill_(1.0)\n"
        "before = rss()\n"
        "del x\n"
        "print(applied, before - rss() < 2**25)\n"  # 64 MiB freed: still resident if kept
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MUTUALNET_"))}
    if setting:
        env["MUTUALNET_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == [str(kept), str(kept)]


def test_an_unknown_allocator_setting_is_one_line_and_exit_2():
    env = {**os.environ, "MUTUALNET_MALLOC": "sytem"}
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "calibrate", "no-such-run"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "MUTUALNET_MALLOC" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_config_built_in_python_is_checked_as_a_recipe_is(tmp_path):
    import dataclasses

    from mutualnet.config import RunConfig

    cfg = tiny("train.max_steps=1")
    for change, message in (({"train": {"batch_size": 0}}, "train.batch_size"),
                            ({"train": {"epochs": "1"}}, "train.epochs"),
                            ({"space": {"resolutions": []}}, "space.resolutions"),
                            ({"space": {"width_range": (1.0, 0.5)}}, "space.width_range")):
        (section, values), = change.items()
        bad = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                       **values)})
        with pytest.raises(ConfigError, match=message):
            train(bad, tmp_path / "run")
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train takes a RunConfig.*not a dict"):
        train({"train": {}}, tmp_path / "run")
    assert isinstance(cfg, RunConfig)
