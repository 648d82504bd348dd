"""Official MutualNet checkpoints become ordinary runs and reproduce the official outputs."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mutualnet.convert import convert_official, map_official_key
from mutualnet.errors import CheckpointError, ConfigError
from mutualnet.run import load_run


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "mobilenet_v2"])
def test_converted_model_matches_the_official_outputs(official_fixtures, tmp_path, arch):
    run_dir = tmp_path / arch
    proc = cli("convert-official", official_fixtures / f"{arch}_official.pt", "--arch", arch,
               "-o", run_dir)
    assert proc.returncode == 0, proc.stderr
    reference = torch.load(official_fixtures / f"{arch}_official_outputs.pt", weights_only=True)
    run = load_run(run_dir)
    assert run.meta["needs_calibration"] is True
    model = run.model.train()  # batch statistics, as the official outputs were made
    x = reference["input"]
    for out in reference["outputs"]:
        r = out["resolution"]
        xi = x if r == x.shape[-1] else F.interpolate(x, (r, r), mode="bilinear",
                                                      align_corners=True)
        model.set_config(out["width"], r)
        with torch.no_grad():
            diff = (model(xi) - out["logits"]).abs().max().item()
        assert diff <= 1e-4, (out["width"], r, diff)


def test_resnet50_mapping_covers_every_official_key(official_fixtures, tmp_path):
    keys = json.loads((official_fixtures / "resnet50_official_keys.json").read_text())["keys"]
    state = {k: torch.zeros(shape) if shape else torch.tensor(0) for k, shape in keys}
    path = tmp_path / "r50.pt"
    torch.save({"model": state, "optimizer": {}, "last_epoch": 119}, path)
    summary = convert_official(path, "resnet50", tmp_path / "run")
    params = [k for k, _ in keys if k.endswith((".weight", ".bias")) and ".bn." not in k]
    assert summary["weights"] == len(params)
    assert summary["dropped_bn_statistics"] == len(keys) - len(params)
    mapped = {map_official_key("resnet50", k.removeprefix("module.")) for k in params}
    assert None not in mapped and len(mapped) == len(params)


def test_wrong_architecture_is_a_clear_error(official_fixtures, tmp_path):
    proc = cli("convert-official", official_fixtures / "mobilenet_v1_official.pt", "--arch",
               "mobilenet_v2", "-o", tmp_path / "run")
    assert proc.returncode == 2
    assert "--arch" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_width_range_must_fit_the_weights(official_fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="--width-range"):
        convert_official(official_fixtures / "mobilenet_v1_official.pt", "mobilenet_v1",
                         tmp_path / "run", width_range=(0.25, 1.6))


def _official_mobilenet_v1(path, width_range):
    """A MobileNetV1 state dict named as the official code names it (a bare state dict)."""
    from mutualnet import create_model

    model = create_model("mobilenet_v1", num_classes=10, width_range=width_range)
    official = {}
    for key, value in model.state_dict().items():
        if "running" in key or "num_batches" in key:
            continue
        official["module." + key.replace("head.2", "classifier.0")
                  .replace("depthwise.0", "body.0").replace("depthwise.1", "body.1")
                  .replace("pointwise.0", "body.3").replace("pointwise.1", "body.4")] = value
    torch.save(official, path)
    return model


def test_a_scaled_checkpoint_converts_with_its_width_range(tmp_path):
    model = _official_mobilenet_v1(tmp_path / "scaled.pt", (0.25, 1.6))
    summary = convert_official(tmp_path / "scaled.pt", "mobilenet_v1", tmp_path / "run",
                               width_range=(0.25, 1.6))
    converted = load_run(tmp_path / "run").model
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(converted.state_dict()[key], value), key
    assert summary["width_range"] == [0.25, 1.6]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(CheckpointError, match="refusing to load it"):
        convert_official(path, "mobilenet_v1", tmp_path / "run")


def test_evaluate_refuses_until_calibrated(official_fixtures, tmp_path):
    convert_official(official_fixtures / "mobilenet_v1_official.pt", "mobilenet_v1",
                     tmp_path / "run")
    proc = cli("evaluate", tmp_path / "run", "--widths", "1.0", "--resolutions", "224")
    assert proc.returncode == 2 and "mutualnet calibrate" in proc.stderr


def test_a_converted_run_is_sent_to_calibrate_with_its_data(tmp_path):
    _official_mobilenet_v1(tmp_path / "official.pt", (0.25, 1.0))
    convert_official(tmp_path / "official.pt", "mobilenet_v1", tmp_path / "run")
    for args in (["evaluate", tmp_path / "run", "--data", tmp_path],
                 ["export", tmp_path / "run", "--width", "1", "--resolution", "224", "-o",
                  tmp_path / "m.onnx", "--format", "onnx"]):
        proc = cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert f"run `mutualnet calibrate {tmp_path / 'run'} --data DIR` first (DIR: the " \
               f"training images" in proc.stderr


def test_a_folder_given_as_the_official_checkpoint_is_named_as_such(tmp_path):
    proc = cli("convert-official", tmp_path, "--arch", "mobilenet_v1", "-o", tmp_path / "run")
    assert proc.returncode == 2 and f"{tmp_path} is a folder, not a checkpoint file" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown --arch"):
        convert_official(tmp_path / "x.pt", "vgg16", tmp_path / "run")


def test_a_converted_run_calibrates_evaluates_selects_and_exports(official_fixtures, tmp_path):
    from test_data import make_image_folder

    run = tmp_path / "run"
    convert_official(official_fixtures / "mobilenet_v1_official.pt", "mobilenet_v1", run)
    data = make_image_folder(tmp_path / "imagenet", classes=("n01", "n02"), per_class=4)
    grid = ["--widths", "0.25,1.0", "--resolutions", "128,160", "--data", data]
    proc = cli("calibrate", run, *grid, "--batches", "1")
    assert proc.returncode == 0, proc.stderr
    assert "needs_calibration" not in load_run(run).meta
    proc = cli("evaluate", run, *grid)
    assert proc.returncode == 0, proc.stderr
    # the 1,000 classes of the run are numbers: two class folders are taken as the first two
    assert "has 2 classes and the run 1000, which it only numbers" in proc.stderr, proc.stderr
    rows = json.loads((run / "grid.json").read_text())
    assert len(rows) == 4 and {round(r["mmacs"], 2) for r in rows} >= {13.57}
    proc = cli("select", run, "--max-mmacs", "20")
    assert proc.returncode == 0 and json.loads(proc.stdout)["width"] == 0.25
    proc = cli("export", run, "--width", "0.25", "--resolution", "128", "--format", "onnx",
               "-o", tmp_path / "m.onnx", "--data", data)
    assert proc.returncode == 0, proc.stderr


def _scaled_run(tmp_path) -> Path:
    """A converted run (official layout, made from a fresh model) without calibration."""
    from mutualnet import create_model

    model = create_model("mobilenet_v1", num_classes=10, width_range=(0.25, 1.0))
    official = {"module." + k.replace("head.2", "classifier.0").replace("depthwise.0", "body.0")
                .replace("depthwise.1", "body.1").replace("pointwise.0", "body.3")
                .replace("pointwise.1", "body.4"): v for k, v in model.state_dict().items()
                if "running" not in k and "num_batches" not in k}
    torch.save(official, tmp_path / "scaled.pt")
    convert_official(tmp_path / "scaled.pt", "mobilenet_v1", tmp_path / "run",
                     width_range=(0.25, 1.0))
    return tmp_path / "run"


def test_serving_a_converted_run_needs_the_configurations_calibrated(tmp_path):
    """Its own statistics are placeholders: a configuration not calibrated is an error, also
    after other configurations were calibrated."""
    from mutualnet import AdaptiveModel, Config
    from mutualnet.calibrate import calibrate

    run_dir = _scaled_run(tmp_path)
    x = torch.randn(1, 3, 128, 128)
    with pytest.raises(ConfigError, match=r"1.0-224 of .* has no calibrated statistics .*; "
                                          r"run `mutualnet calibrate .* --widths 1 "
                                          r"--resolutions 224`"):
        AdaptiveModel.load(run_dir)(x)
    run = load_run(run_dir)
    calibrate(run.model, [torch.randn(4, 3, 128, 128)], [Config(0.25, 128)])
    run.meta.pop("needs_calibration")  # as calibrate_run leaves it
    run.save()
    m = AdaptiveModel.load(run_dir)
    m.use((0.25, 128))
    assert m(x).shape == (1, 10)
    m.use((1.0, 224))
    with pytest.raises(ConfigError, match="has no calibrated statistics"):
        m(x)


def test_conversion_never_writes_into_a_folder_holding_a_run(tmp_path):
    run_dir = _scaled_run(tmp_path)
    held = tmp_path / "held"
    held.mkdir()
    (held / "checkpoint.pt").write_bytes(b"a training state")
    with pytest.raises(ConfigError, match="already holds a run"):
        convert_official(tmp_path / "scaled.pt", "mobilenet_v1", held, width_range=(0.25, 1.0))
    assert [p.name for p in held.iterdir()] == ["checkpoint.pt"]
    assert run_dir.is_dir()


def test_a_reversed_width_range_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"--width-range must be LO,HI with 0 < LO <= HI, got "
                                          r"1,0.25"):
        convert_official(tmp_path / "x.pt", "mobilenet_v1", tmp_path / "run",
                         width_range=(1.0, 0.25))
