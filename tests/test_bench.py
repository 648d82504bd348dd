"""The benchmark scripts at toy sizes: each ends with its JSON line, and bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import tiny, tiny_yaml

from mutualnet.train import train

ROOT = Path(__file__).resolve().parents[1]


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("bench") / "run"
    train(tiny("train.epochs=1", "train.validate=false"), run)
    return run


def result_of(out: subprocess.CompletedProcess, name: str) -> dict:
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == name and result["targets"] and result["machine"]["cpus"]
    return result


def test_train_step_at_toy_size(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--models",
                          "mobilenet_v2", "--shapes", "small", "--rounds", "3", "--batch", "2"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    result = result_of(out, "train_step")  # started from another folder
    (row,) = result["results"]
    assert row["model"] == "mobilenet_v2" and row["step_over_floor"] > 0
    low, median, high = row["step_over_floor_quartiles"]
    assert 0 < low <= median <= high
    assert row["memory_ratio"] > 0


def test_inference_at_toy_size():
    result = result_of(bench("inference.py", "--resolution", "32", "--rounds", "1"), "inference")
    assert [row["batch"] for row in result["results"]] == [1, 32]
    assert all(row["extracted_over_native"] > 0 for row in result["results"])


def test_gpu_benchmark_runs_as_a_smoke_check_on_cpu():
    result = result_of(bench("gpu.py", "--device", "cpu", "--models", "mobilenet_v2",
                             "--batch", "2", "--rounds", "1"), "gpu")
    (row,) = result["results"]
    assert row["amp_over_fp32"] > 0 and row["step_over_floor"] > 0


def test_data_pipeline_against_the_engine_step(tmp_path):
    # 12 steps read 24 batches, more than the 20 of an epoch of the synthetic data
    recipe = tiny_yaml(tmp_path, "train.accumulate=2", "optim.label_smoothing=0.1")
    result = result_of(bench("data.py", "--config", recipe, "--steps", "12"), "data")
    assert result["loader_images_per_s"] > 0 and result["step_images_per_s"] > 0


def test_grid_against_the_official_procedure_agrees_on_accuracy(run_dir):
    result = result_of(bench("grid.py", "--run", run_dir, "--configs", "3", "--rounds", "1"),
                       "grid")
    assert result["configurations"] == 3 and len(result["top1_ours"]) == 3
    assert result["max_top1_difference"] <= 0.1


@pytest.mark.parametrize("script,args,needle", [
    ("train_step.py", ["--rounds", "0"], "--rounds"),
    ("train_step.py", ["--batch", "-1"], "--batch"),
    ("train_step.py", ["--models", "nope"], "unknown model 'nope'"),
    ("train_step.py", ["--shapes", "huge"], "huge"),
    ("inference.py", ["--rounds", "0"], "--rounds"),
    ("inference.py", ["--model", "nope"], "unknown model 'nope'"),
    ("inference.py", ["--width", "2"], "width"),
    ("gpu.py", ["--device", "cpu", "--rounds", "0"], "--rounds"),
    ("data.py", ["--steps", "0"], "--steps"),
    ("data.py", ["--config", "missing.yaml"], "missing.yaml"),
    ("train_step.py", ["--device", "foo"], "--device: unknown device 'foo'"),
    ("train_step.py", ["--device", "meta"], "--device: device 'meta' is not supported"),
    ("train_step.py", ["--models", "x3d_xs"], "x3d_xs is a video model"),
    ("gpu.py", ["--device", "mps"], "--device: device 'mps' is not supported"),
    ("gpu.py", ["--device", "cpu", "--models", "x3d_xs"], "x3d_xs is a video model"),
    ("inference.py", ["--model", "x3d_xs"], "x3d_xs is a video model"),
    ("data.py", ["--config", "configs/detection/synthetic.yaml"],
     "configs/detection/synthetic.yaml is a detection recipe; this benchmark measures image "
     "classification recipes"),
    ("data.py", ["--config", "configs/video/synthetic_x3d.yaml"], "is a video recipe"),
    ("grid.py", ["--configs", "0"], "--configs"),
    ("grid.py", ["--run", "no/such/run"], "no/such/run"),
])
def test_bad_input_is_one_line_and_exit_2(script, args, needle):
    out = bench(script, *args)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
