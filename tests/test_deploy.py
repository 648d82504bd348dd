"""From a trained run to a deployed configuration: calibration, grid, query table, export."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import mutualnet
from mutualnet import AdaptiveModel
from mutualnet.calibrate import calibrate, calibration_batches
from mutualnet.errors import ConfigError
from mutualnet.export import fold_batchnorm
from mutualnet.run import load_run
from mutualnet.select import _label, pareto_front, read_grid, select
from mutualnet.space import Config, to_config
from mutualnet.train import train

from test_train import tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("deploy") / "run"
    train(tiny("train.epochs=2", "train.validate=false"), run)
    return run


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                          capture_output=True, text=True)


def test_calibration_is_a_cumulative_average_that_leaves_the_model_as_it_was(run_dir):
    run = load_run(run_dir)
    model = run.model
    model.train()
    model.set_config(0.75, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    calibrate(model, batches, [Config(0.6, 12)])
    assert model.training and model.config == Config(0.75, 16)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    # the stem's statistics are the mean over all images of the three batches
    stem_bn = model.features[0][1]
    mean, var = stem_bn.calibrated[Config(0.6, 12).key]
    with torch.no_grad():
        model.set_config(0.6, 12)
        conv = model.features[0][0]
        feats = [conv(torch.nn.functional.interpolate(b, size=(12, 12), mode="bilinear",
                                                      align_corners=True)) for b in batches]
    expected = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-4)


def test_switching_between_calibrated_configurations_needs_no_recalibration(run_dir):
    run = load_run(run_dir)
    model = run.model.eval()
    batches = calibration_batches(*_train_set(run), 4, 32, 0, 0, torch.device("cpu"))
    a, b = Config(0.5, 12), Config(1.0, 16)
    calibrate(model, batches, [a, b])
    x = torch.randn(4, 3, 16, 16)
    model.set_config(a)
    ya = model(torch.nn.functional.interpolate(x, size=(12, 12)))
    model.set_config(b)
    model(x)
    model.set_config(a)
    torch.testing.assert_close(model(torch.nn.functional.interpolate(x, size=(12, 12))), ya)


def _train_set(run):
    from mutualnet.data import build_datasets

    return (build_datasets(run.config.data, 16)[0],)


def test_evaluate_writes_the_grid_table_and_plot(run_dir):
    proc = cli("evaluate", run_dir, "--latency", "--width-step", "0.25", "--latency-batch", "4")
    assert proc.returncode == 0, proc.stderr
    rows = read_grid(run_dir)
    assert len(rows) == 3 * 2  # widths 0.5, 0.75, 1.0 x resolutions 12, 16
    for row in rows:
        assert {"width", "resolution", "mmacs", "params_m", "top1", "top5", "latency_ms",
                "latency_ms_b4"} <= set(row)
        assert 0 <= row["top1"] <= row["top5"] <= 100 and row["latency_device"] == "cpu"
    full = next(r for r in rows if r["width"] == 1.0 and r["resolution"] == 16)
    assert full["mmacs"] == max(r["mmacs"] for r in rows) and full["top1"] > 50
    from mutualnet.macs import count_macs

    model = load_run(run_dir).model
    for row in rows:  # every MAC, so that a budget is never exceeded
        macs, _ = count_macs(model, row["resolution"], width=row["width"])
        assert round(row["mmacs"] * 1e6) == macs
    for name in ("grid.csv", "query_table.md", "pareto.png"):
        assert (run_dir / name).stat().st_size > 100
    assert (run_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "| MMACs | config | top1 |" in (run_dir / "query_table.md").read_text()


def test_select_prints_the_best_configuration_within_the_budget(run_dir):
    rows = read_grid(run_dir)
    budget = sorted(r["mmacs"] for r in rows)[2]
    proc = cli("select", run_dir, "--max-mmacs", budget)
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads(proc.stdout)
    fits = [r for r in rows if r["mmacs"] <= budget]
    assert chosen["mmacs"] <= budget and chosen["top1"] == max(r["top1"] for r in fits)
    assert chosen in pareto_front(rows)


@pytest.mark.parametrize("args,message", [
    (["--max-mmacs", "0.0001"], "no configuration fits"),
    (["--max-mmacs", "-3"], "positive"),
])
def test_select_errors_are_one_line(run_dir, args, message):
    proc = cli("select", run_dir, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_select_without_an_evaluation_says_what_to_run(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("select", tmp_path / "empty", "--max-mmacs", "5")
    assert proc.returncode == 2 and "mutualnet evaluate" in proc.stderr


def test_a_width_is_taken_to_the_4_decimals_it_is_named_and_calibrated_by(run_dir):
    run = load_run(run_dir)
    assert run.check_config(Config(0.50004, 16)) == Config(0.5, 16)
    assert run.check_config(Config(0.62496, 16)) == Config(0.625, 16)
    assert run.check_config(Config(0.62506, 16)) == Config(0.6251, 16)


def test_a_configuration_never_listed_in_training_can_be_calibrated(run_dir):
    proc = cli("calibrate", run_dir, "--widths", "0.62", "--resolutions", "14", "--batches", "2")
    assert proc.returncode == 0, proc.stderr
    assert load_run(run_dir).is_calibrated(Config(0.62, 14))


def test_width_outside_the_trained_range_is_refused(run_dir):
    proc = cli("calibrate", run_dir, "--widths", "0.3")
    assert proc.returncode == 2 and "outside the trained range" in proc.stderr


def test_adaptive_model_serves_a_budget(run_dir):
    m = AdaptiveModel.load(run_dir)
    rows = read_grid(run_dir)
    budget = sorted(r["mmacs"] for r in rows)[1]
    row = m.set_budget(mmacs=budget)
    assert row == select(rows, max_mmacs=budget)
    assert m.config == Config(row["width"], row["resolution"])
    x = torch.randn(2, 3, 40, 40)
    out = m(x)  # any input size: resized to the configuration
    assert out.shape == (2, 10)
    with torch.no_grad(), m.model.using(m.config):  # served by the folded static network:
        want = m.model.eval()(to_config(x, m.config))  # the slimmable model's function
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="no configuration fits"):
        m.set_budget(mmacs=1e-6)


def test_adaptive_model_never_serves_one_width_for_another_named_alike(run_dir):
    m = AdaptiveModel.load(run_dir)
    lo, hi = m.model.width_range

    def channels(width):
        with m.model.using(width):
            return m.model.active_param_count()

    a, b = next((Config(w - 4.9e-5, 16), Config(w + 4.9e-5, 16))  # both named w (4 decimals)
                for w in (round(lo + k * 1e-4, 4) for k in range(1, int((hi - lo) / 1e-4)))
                if channels(w - 4.9e-5) != channels(w + 4.9e-5))
    assert a.key == b.key
    calibrate(m.model, [torch.randn(4, 3, 16, 16)], [a])  # the model's API: a's own width
    x = torch.randn(2, 3, 16, 16)
    named = round(a.width, 4)  # the run takes either as the width both are named by
    assert m.use(a) == m.use(b) == Config(named, 16)
    if channels(named) == channels(a.width):  # the network a was calibrated on
        m(x)
    else:
        with pytest.raises(ConfigError, match=f"statistics calibrated for {a.key}"):
            m(x)
    with m.model.using(b):  # b's own width on the model itself: a's statistics do not fit
        with pytest.raises(ConfigError, match=f"statistics calibrated for {a.key}"):
            m.model(x)


def test_adaptive_model_refuses_what_is_no_configuration_or_budget(run_dir):
    m = AdaptiveModel.load(run_dir)
    assert m.use((0.5, 12)) == Config(0.5, 12)  # a plain tuple is a configuration too
    with pytest.raises(ConfigError, match=r"a configuration needs a resolution \(this run "
                                          r"was trained at 12, 16\)"):
        m.use(Config(0.5))
    with pytest.raises(ConfigError, match=r"use takes a Config or \(width, resolution\), "
                                          r"got 'big'"):
        m.use("big")
    with pytest.raises(ConfigError, match=r"resolution must be a whole number, got '12'"):
        m.use((0.5, "12"))
    rows = [{"width": 0.5, "resolution": 12, "mmacs": 1.0, "top1": 50.0}]
    with pytest.raises(ConfigError, match=r"the budget must be a positive number, got '1.0'"):
        select(rows, max_mmacs="1.0")
    assert select(rows, max_mmacs=np.int64(2)) == rows[0]
    with pytest.raises(ConfigError, match=r"the grid has no latency; run "
                                          r"`mutualnet evaluate runs/x --latency`"):
        select(rows, max_latency_ms=2.0, run="runs/x")
    with pytest.raises(ConfigError, match=r"give exactly one budget: mmacs= or latency_ms="):
        m.set_budget()
    from mutualnet.select import _label

    assert [_label({"width": w, "resolution": 28}) for w in (1.0, 0.9999, 0.35, 0.5)] == \
        ["1.0-28", "0.9999-28", "0.35-28", "0.5-28"]
    assert m.config == Config(0.5, 12)


def test_adaptive_models_of_one_run_keep_their_own_configurations(run_dir):
    run = load_run(run_dir)
    big, small = AdaptiveModel(run).eval(), AdaptiveModel(run).eval()
    big.use((1.0, 16))
    small.use((0.5, 12))
    assert big.config == Config(1.0, 16) and small.config == Config(0.5, 12)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = AdaptiveModel.load(run_dir).eval()
        want.use((1.0, 16))
        torch.testing.assert_close(big(x), want(x))
    row = {"width": 0.5, "resolution": 12, "top1": 50.0, "mmacs": 1.0}
    calibrate(run.model, [torch.randn(4, 3, 16, 16)], [Config(0.5, 12)])
    served = AdaptiveModel(run, [row])
    assert served.set_budget(mmacs=2.0) == row and served.active == row
    served.use((1.0, 16))
    assert served.active is None  # no longer a row of the table


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_loading_on_a_missing_gpu_is_one_config_error(run_dir):
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        AdaptiveModel.load(run_dir, "cuda")


def test_adaptive_model_follows_to_and_takes_any_float_input(run_dir):
    m = AdaptiveModel.load(run_dir)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = m(x)
        m.to(torch.float64)
        out = m(x)  # a float32 input, served by the float64 networks
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, want.double(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(m(x.half()), want.double(), atol=1e-2, rtol=1e-2)
    with pytest.raises(ConfigError, match=r"takes float images \(normalised as the run's "
                                          r"data\), got torch.uint8"):
        m(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_onnx_export_matches_torch_in_onnxruntime(run_dir, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    proc = cli("export", run_dir, "--width", "0.7", "--resolution", "12", "--format", "onnx",
               "-o", out)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["max_abs_diff_vs_torch"] <= 1e-4
    run = load_run(run_dir)
    reference = run.model.subnet(0.7, 12).eval()
    x = torch.randn(3, 3, 12, 12)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, reference(x).detach(), atol=1e-4, rtol=0)
    # what the network takes travels with it: in the file and in what export prints
    stored = json.loads(session.get_modelmeta().custom_metadata_map["mutualnet"])
    for meta in (info, stored):
        assert meta["mean"] == run.meta["mean"] and meta["std"] == run.meta["std"]
        assert meta["input_shape"] == ["batch", 3, 12, 12]
        assert (meta["width"], meta["resolution"]) == (0.7, 12)
    assert stored["class_names"] == run.meta["class_names"]
    # how evaluation made its input, as a phone's code must make it
    assert stored["preprocess"] == info["preprocess"]
    assert info["preprocess"][-2:] == [
        "resize 16 x 16 to 12 x 12: bilinear, align_corners=True, no antialiasing "
        "(torch.nn.functional.interpolate)", "x / 255, then (x - mean) / std per channel"]
    # batch norm is folded into the convolutions, unless asked to stay
    import onnx

    def operators(path):
        return {node.op_type for node in onnx.load(str(path)).graph.node}

    assert "BatchNormalization" not in operators(out)
    kept = tmp_path / "kept.onnx"
    proc = cli("export", run_dir, "--width", "0.7", "--resolution", "12", "--format", "onnx",
               "-o", kept, "--no-fold-bn")
    assert proc.returncode == 0, proc.stderr
    assert "BatchNormalization" in operators(kept)
    assert json.loads(proc.stdout)["max_abs_diff_vs_torch"] <= 1e-4
    assert info["bn_folded"] is True and json.loads(proc.stdout)["bn_folded"] is False


def test_the_onnx_check_scales_with_outputs_in_pixels():
    """A detector's boxes are in pixels: float rounding of ONNX Runtime against torch grows
    with them, so the check is relative beyond ±1 and absolute within."""
    from mutualnet.errors import MutualNetError
    from mutualnet.export import onnx_difference

    logits, boxes = torch.full((2, 5), 0.5), torch.full((2, 4, 3, 3), 71.0)
    assert onnx_difference([logits + 5e-5, boxes + 2.4e-4], [logits, boxes]) == \
        pytest.approx(2.4e-4, rel=5e-2)
    with pytest.raises(MutualNetError, match="in output 1 .*of its largest magnitude 71"):
        onnx_difference([logits, boxes + 1e-2], [logits, boxes])
    with pytest.raises(MutualNetError, match=r"by 2\.\d+e-04 in output 0 \(> 0\.0001\)"):
        onnx_difference([logits + 2e-4, boxes], [logits, boxes])
    with pytest.raises(MutualNetError, match="2 outputs where torch has 1"):
        onnx_difference([logits, boxes], [logits])


def test_torchscript_and_safetensors_exports_reload(run_dir, tmp_path):
    run = load_run(run_dir)
    reference = run.model.subnet(0.5, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    for fmt in ("torchscript", "safetensors"):
        out = tmp_path / f"m.{fmt}"
        proc = cli("export", run_dir, "--width", "0.5", "--resolution", "16", "--format", fmt,
                   "-o", out)
        assert proc.returncode == 0, proc.stderr
        # a safetensors export keeps the BN layers of the model code that rebuilds it
        assert json.loads(proc.stdout)["bn_folded"] is (fmt == "torchscript")
        loaded = torch.jit.load(str(out)) if fmt == "torchscript" else mutualnet.load_exported(out)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), reference(x), atol=1e-4, rtol=0)
    meta = mutualnet.load_exported(tmp_path / "m.safetensors").export_meta
    assert (meta["width"], meta["resolution"], meta["mean"]) == (0.5, 16, run.meta["mean"])
    extra = {"mutualnet.json": ""}
    torch.jit.load(str(tmp_path / "m.torchscript"), _extra_files=extra)
    stored = json.loads(extra["mutualnet.json"])
    assert stored["mean"] == run.meta["mean"] and stored["input_shape"] == ["batch", 3, 16, 16]


def test_load_exported_says_what_it_was_given_instead(run_dir, tmp_path):
    (tmp_path / "m.torchscript").write_bytes(b"PK\x03\x04" + bytes(100))
    for given, message in ((run_dir, "is a folder: give the .safetensors file"),
                           (run_dir / "model.safetensors",
                            "is a safetensors file but not a mutualnet export"),
                           (tmp_path / "m.torchscript", "cannot be read as a safetensors "
                                                        "export: it is damaged or of another")):
        with pytest.raises(ConfigError, match=message):
            mutualnet.load_exported(given)


def test_the_preprocessing_of_an_image_folder_export_names_every_step():
    from mutualnet.config import load_config
    from mutualnet.export import preprocessing

    cfg = load_config("configs/fashion_mnist.yaml", [
        "data.format=image_folder", "data.root=/images", "space.resolutions=[224,160]",
        "data.eval_crop_ratio=0.875", "space.antialias=true"])
    assert preprocessing(cfg, Config(0.5, 160), 3) == [
        "decode as RGB", "resize the shorter side to 256 px (Pillow bilinear, antialiased)",
        "centre-crop 224 x 224", "resize 224 x 224 to 160 x 160: bilinear, align_corners=False, "
        "antialias=True (torch.nn.functional.interpolate)",
        "x / 255, then (x - mean) / std per channel"]
    assert preprocessing(cfg, Config(0.5, 224), 1)[:1] == ["decode as grayscale"]
    assert "resize 224" not in " ".join(preprocessing(cfg, Config(0.5, 224), 1))


def test_the_preprocessing_of_coco_and_video_exports_names_every_step():
    from mutualnet.config import load_config
    from mutualnet.export import preprocessing

    cfg = load_config("configs/detection/synthetic.yaml", [
        "data.format=coco", "data.root=/coco", "space.resolutions=[64,32]"])
    assert preprocessing(cfg, Config(0.5, 32), 3) == [
        "decode as RGB", "scale = 64 / max(height, width); resize to round(height x scale) x "
        "round(width x scale) (bilinear, align_corners=False, antialias=True; "
        "torch.nn.functional.interpolate)",
        "place it at the top-left of a 64 x 64 canvas of the mean colour (zeros after "
        "normalisation)", "resize 64 x 64 to 32 x 32: bilinear, align_corners=True, no "
        "antialiasing (torch.nn.functional.interpolate)",
        "x / 255, then (x - mean) / std per channel"]
    cfg = load_config("configs/video/synthetic_x3d.yaml", [
        "data.format=video_folder", "data.root=/videos", "space.resolutions=[32,24]",
        "space.frames=[8,4]", "data.frame_stride=2", "data.eval_clips=3",
        "data.eval_crop_ratio=0.8"])
    steps = preprocessing(cfg, Config(0.5, 32, 4), 3)
    assert steps[:4] == [
        "decode the video's n frames as RGB",
        "take a clip of 8 frames 2 apart (span 15), 3 clips, first frames "
        "round(i x (n - span) / 2) for i = 0..2, their softmax averaged (the table's "
        "accuracy; one clip scores lower); past the last frame, repeat it",
        "resize each frame's shorter side to 40 px (bilinear, align_corners=False, "
        "antialias=True; torch.nn.functional.interpolate)", "centre-crop 32 x 32"]
    assert steps[4].startswith("take 4 of the clip's 8 frames")
    one = preprocessing(load_config("configs/video/synthetic_x3d.yaml", [
        "data.format=video_folder", "data.root=/videos", "space.frames=[8,4]"]),
        Config(0.5, None, 8), 3)
    assert "centred: first frame (n - span) // 2" in one[1]


def test_export_at_a_resolution_never_trained_warns(run_dir, tmp_path):
    import shutil

    run = shutil.copytree(run_dir, tmp_path / "run")
    proc = cli("export", run, "--width", "0.5", "--resolution", "20", "--format",
               "safetensors", "-o", tmp_path / "m.safetensors")
    assert proc.returncode == 0, proc.stderr
    assert "20 is not among the resolutions the run was trained at (16, 12)" in proc.stderr
    # measuring it says so too: its row enters the query table
    proc = cli("evaluate", run, "--widths", "0.5", "--resolutions", "12,20")
    assert proc.returncode == 0, proc.stderr
    assert "evaluated resolutions the run was not trained at (20; trained: 16, 12)" in proc.stderr


def test_batchnorm_folding_keeps_outputs():
    from mutualnet import create_model

    model = create_model("mobilenet_v1", num_classes=5, small_input=True)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    static = model.eval().subnet(0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = static(x)
        folded = fold_batchnorm(static)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded(x), want, atol=1e-5, rtol=1e-4)


def test_in_place_activations_only_overwrite_outputs_nobody_else_reads():
    from torch import nn

    from mutualnet.nn.extract import inplace_activations

    shared = nn.ReLU6()
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), shared),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.Identity(), nn.ReLU()),
        nn.Sequential(nn.ReLU(), nn.Flatten(1), nn.SiLU()),  # its input; a view
    ).eval()
    before = [type(m) for m in net.modules()]
    inplace_activations(net)
    assert [type(m) for m in net.modules()] == before
    assert net[0][2].inplace and net[0][2] is not shared and not shared.inplace
    assert net[1][2].inplace
    assert not net[2][0].inplace and not net[2][2].inplace


def test_the_inference_network_computes_the_slimmable_function_and_keeps_its_input(run_dir):
    from mutualnet.evaluate import static_network

    model = load_run(run_dir).model.eval()
    config = Config(0.75, 16)
    net = static_network(model, config)
    assert any(getattr(m, "inplace", False) for m in net.modules())
    x = torch.randn(4, 3, 16, 16)
    kept = x.clone()
    with torch.no_grad():
        out = net(x)
        model.set_config(config)
        want = model(x)
    assert torch.equal(x, kept)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)


def test_export_to_a_missing_directory_is_one_line(run_dir, tmp_path):
    proc = cli("export", run_dir, "--width", "0.5", "--resolution", "16", "--format", "onnx",
               "-o", tmp_path / "no" / "m.onnx")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_a_config_pool_runs_every_configuration_once_costliest_first_and_gives_threads_back():
    import threading

    from mutualnet.parallel import ConfigPool, cost_order

    configs = [Config(w / 20, r) for w in range(7, 21) for r in (20, 24, 28)]
    order = cost_order(configs)
    assert sorted(order) == list(range(len(configs)))
    costs = [configs[i].width ** 2 * configs[i].resolution ** 2 for i in order]
    assert costs == sorted(costs, reverse=True)
    threads = torch.get_num_threads()
    seen: list[int] = []
    lock = threading.Lock()
    together = threading.Barrier(2, timeout=30)  # broken unless two tasks run at once

    def task(i: int) -> None:
        assert not torch.is_grad_enabled()
        if i in order[:2]:
            together.wait()
        with lock:
            seen.append(i)

    with ConfigPool(configs, torch.device("cpu"), threads=3) as pool:
        assert torch.get_num_threads() == max(1, threads // 3)
        pool.map(task)
    assert sorted(seen) == list(range(len(configs)))
    assert torch.get_num_threads() == threads
    with ConfigPool(configs[:2], torch.device("cpu"), threads=8) as pool:
        assert pool.threads == 2  # never more threads than configurations
    assert ConfigPool(configs, torch.device("meta")).threads == 1  # one after another off CPU

    def fail(i: int) -> None:
        if i == order[-1]:
            raise ValueError("the smallest failed")

    with pytest.raises(ValueError, match="smallest"), \
            ConfigPool(configs, torch.device("cpu"), threads=2) as pool:
        pool.map(fail)
    assert torch.get_num_threads() == threads


def test_each_pool_thread_sets_its_share_of_the_torch_threads_itself(monkeypatch):
    # OpenMP's thread count is per thread: a new thread starts with the process's initial
    # count whatever the main thread set, and two workers would each run that many
    import threading

    from mutualnet.parallel import ConfigPool

    calls: list[tuple[str, int]] = []
    original = torch.set_num_threads

    def recording(n: int) -> None:
        calls.append((threading.current_thread().name, n))
        original(n)

    monkeypatch.setattr(torch, "set_num_threads", recording)
    threads = torch.get_num_threads()
    configs = [Config(0.5, 16), Config(1.0, 16)]
    together = threading.Barrier(2, timeout=30)
    with ConfigPool(configs, torch.device("cpu"), threads=2) as pool:
        pool.map(lambda i: together.wait())
    share = max(1, threads // 2)
    workers = {name for name, n in calls if name.startswith("mutualnet") and n == share}
    assert len(workers) == 2
    assert calls[-1] == (threading.current_thread().name, threads)  # given back


def test_calibrating_side_by_side_gives_the_statistics_of_one_at_a_time(run_dir):
    from mutualnet.nn.layers import _SlimBatchNormNd

    run = load_run(run_dir)
    configs = [Config(w, r) for w in (0.5, 0.75, 1.0) for r in (12, 16)]
    batches = calibration_batches(*_train_set(run), 2, 32, 0, 0, torch.device("cpu"))
    bns = [m for m in run.model.modules() if isinstance(m, _SlimBatchNormNd)]
    calibrate(run.model, batches, configs, threads=1)
    one = [{c.key: bn.calibrated[c.key] for c in configs} for bn in bns]
    calibrate(run.model, batches, configs, threads=3)
    for bn, stats in zip(bns, one):
        for key, (mean, var) in stats.items():
            assert bn.calibrated[key][0] is not mean  # recomputed
            torch.testing.assert_close(bn.calibrated[key][0], mean, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bn.calibrated[key][1], var, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="no batch"):
        calibrate(run.model, [], configs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_calibration_hands_over_the_inference_networks_evaluation_would_build(run_dir,
                                                                              channels_last):
    from mutualnet.evaluate import evaluate, static_network
    from mutualnet.tasks import ClassificationTask

    run = load_run(run_dir)
    configs = [Config(0.5, 12), Config(1.0, 16)]
    batches = calibration_batches(*_train_set(run), 2, 32, 0, 0, torch.device("cpu"),
                                  channels_last)
    networks: dict = {}
    calibrate(run.model, batches, configs, channels_last=channels_last, networks=networks)
    assert set(networks) == {c.key for c in configs}
    x = torch.randn(4, 3, 16, 16)
    for config in configs:
        built = static_network(run.model, config, channels_last)
        handed = networks[config.key]
        assert not handed.training
        assert [type(m) for m in handed.modules()] == [type(m) for m in built.modules()]
        for a, b in zip(handed.parameters(), built.parameters()):
            assert a.stride() == b.stride()  # the same layout
        with torch.no_grad():
            xs = to_config(x, config)
            torch.testing.assert_close(handed(xs), built(xs), atol=1e-5, rtol=1e-4)
    _, val = run.datasets()
    loader = torch.utils.data.DataLoader(val, batch_size=32)
    task = ClassificationTask()
    device = torch.device("cpu")
    handed_rows = evaluate(run.model, loader, configs, task, device, channels_last,
                           networks=networks)
    built_rows = evaluate(run.model, loader, configs, task, device, channels_last)
    for a, b in zip(handed_rows, built_rows):
        assert a == pytest.approx(b, abs=0.5)


def test_evaluating_configurations_side_by_side_gives_the_same_rows(run_dir):
    from torch.utils.data import DataLoader

    from mutualnet.evaluate import evaluate
    from mutualnet.tasks import ClassificationTask

    run = load_run(run_dir)
    configs = [Config(w, r) for w in (0.5, 0.75, 1.0) for r in (12, 16)]
    calibrate(run.model, calibration_batches(*_train_set(run), 2, 32, 0, 0,
                                             torch.device("cpu")), configs)
    _, val = run.datasets()
    loader = DataLoader(val, batch_size=32)
    threads = torch.get_num_threads()
    one = evaluate(run.model, loader, configs, ClassificationTask(), torch.device("cpu"),
                   threads=1)
    three = evaluate(run.model, loader, configs, ClassificationTask(), torch.device("cpu"),
                     threads=3)
    assert torch.get_num_threads() == threads  # the torch threads are given back
    for a, b in zip(one, three):
        assert a.keys() == b.keys() and (a["width"], a["resolution"]) == (b["width"],
                                                                          b["resolution"])
        assert a["top1"] == pytest.approx(b["top1"], abs=0.5) and 0 < a["top1"] <= 100


def test_a_row_measured_again_without_latency_keeps_every_latency_column(tmp_path):
    from mutualnet.select import read_grid, update_results

    old = {"width": 1.0, "resolution": 28, "mmacs": 2.4, "top1": 90.0, "latency_ms": 0.5,
           "latency_ms_b32": 3.0}
    update_results(tmp_path, [old])
    update_results(tmp_path, [{"width": 1.0, "resolution": 28, "mmacs": 2.4, "top1": 90.5}])
    [row] = read_grid(tmp_path)
    assert row["top1"] == 90.5 and row["latency_ms"] == 0.5 and row["latency_ms_b32"] == 3.0


def test_configurations_evaluated_without_latency_leave_the_others_selectable(tmp_path,
                                                                              caplog):
    from mutualnet.select import read_grid, update_results

    rows = [{"width": w, "resolution": 28, "mmacs": 2.4 * w, "top1": 80 + 10 * w,
             "latency_ms": 0.5 + w} for w in (0.5, 1.0)]
    update_results(tmp_path, rows)
    # one more configuration, evaluated without --latency, best at its cost
    update_results(tmp_path, [{"width": 0.42, "resolution": 28, "mmacs": 0.9, "top1": 99.0}])
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        chosen = select(read_grid(tmp_path), max_latency_ms=10)
    assert chosen["width"] == 1.0
    assert "1 of the 3 configurations have no measured latency and are not considered " \
           "(0.42-28)" in caplog.text
    assert select(read_grid(tmp_path), max_mmacs=1.0)["width"] == 0.42
    table = (tmp_path / "query_table.md").read_text()
    assert "| 0.900 | 0.42-28 | 99.00 | – |" in table
    latency = table.split("## By measured latency")[1]
    assert "The 1 configuration evaluated without `--latency` is not in it." in latency
    assert "0.42-28" not in latency.split("|---|", 1)[1] and "| 1.500 | 1.0-28 |" in latency


def test_a_budget_copied_from_the_query_table_selects_its_row(tmp_path):
    from mutualnet.select import read_grid, update_results

    update_results(tmp_path, [{"width": 0.75, "resolution": 20, "mmacs": 1.912, "top1": 99.0},
                              {"width": 1.0, "resolution": 12, "mmacs": 1.905, "top1": 94.0},
                              {"width": 0.5, "resolution": 28, "mmacs": 1.900312, "top1": 93.0},
                              {"width": 0.5, "resolution": 12, "mmacs": 0.5, "top1": 50.0}])
    # a budget a little below a configuration's MACs does not select it
    assert _label(select(read_grid(tmp_path), max_mmacs=1.9003)) == "0.5-12"
    rows = [line.split(" | ") for line in (tmp_path / "query_table.md").read_text().splitlines()
            if line.startswith("| 1.9")]
    assert [cells[1] for cells in rows] == ["0.75-20", "1.0-12", "0.5-28"]
    assert rows[2][0] == "| 1.900312"
    for cells in rows:
        budget = float(cells[0].strip("| "))
        assert _label(select(read_grid(tmp_path), max_mmacs=budget)) == cells[1]


def test_rows_measured_on_other_data_are_kept_with_a_warning(tmp_path, caplog):
    from mutualnet.select import read_grid, update_results

    def row(width, data):
        return {"width": width, "resolution": 28, "mmacs": 2.4 * width, "top1": 90.0,
                "data": data}

    update_results(tmp_path, [row(1.0, "/data/a"), row(0.5, "/data/a")])
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        update_results(tmp_path, [row(0.5, "/data/a")])
    assert "different data" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        update_results(tmp_path, [row(0.5, "/data/b")])
    assert "1 configuration(s) on /data/a, these on /data/b" in caplog.text
    assert [r["data"] for r in read_grid(tmp_path)] == ["/data/b", "/data/a"]


def test_adaptive_model_serves_the_weights_loaded_into_it(run_dir):
    """Its networks are built on first use; loading other weights (or rebuild() after an
    edit in place) builds them again, so it never serves stale weights."""
    m = AdaptiveModel.load(run_dir)
    m.use((0.5, 12))
    x = torch.randn(2, 3, 12, 12)
    before = m(x)
    zeroed = {k: torch.zeros_like(v) if k.endswith("weight") else v
              for k, v in m.state_dict().items()}
    m.load_state_dict(zeroed)
    fresh = AdaptiveModel.load(run_dir)
    fresh.load_state_dict(zeroed)
    fresh.use((0.5, 12))
    assert not torch.equal(m(x), before) and torch.equal(m(x), fresh(x))
    m.model.head[-1].bias.data.add_(1.0)  # in place: rebuild() makes it seen
    m.rebuild()
    torch.testing.assert_close(m(x), fresh(x) + 1.0)


def test_adaptive_model_takes_what_set_config_takes_and_checks_the_input_shape(run_dir):
    m = AdaptiveModel.load(run_dir)
    assert m.use((0.5, 12.0)) == Config(0.5, 12) and type(m.config.resolution) is int
    assert type(m.use((1, 12)).width) is float
    for bad, message in (((True, 12), "width must be a number, got True"),
                         (("0.5", 12), "width must be a number, got '0.5'")):
        with pytest.raises(ConfigError, match=message):
            m.use(bad)
    with pytest.raises(ConfigError, match=r"AdaptiveModel takes \[N, C, H, W\] images with "
                                          r"C = 3, got shape \[2, 1, 12, 12\]"):
        m(torch.randn(2, 1, 12, 12))
    with pytest.raises(ConfigError, match=r"got shape \[3, 12, 12\]"):
        m(torch.randn(3, 12, 12))


def test_results_that_fail_to_be_made_leave_the_earlier_ones_whole(tmp_path, monkeypatch):
    """The four result files are all made before any is written: a failure part-way (here
    the plot) leaves the earlier grid, table and plot as they were, not a new grid with an
    old table."""
    import mutualnet.select as select_mod

    row = {"width": 1.0, "resolution": 28, "mmacs": 2.4, "top1": 90.0}
    select_mod.write_results(tmp_path, [row])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert len(before) == 4

    def broken(rows):
        raise RuntimeError("no plot")

    monkeypatch.setattr(select_mod, "_plot", broken)
    with pytest.raises(RuntimeError, match="no plot"):
        select_mod.write_results(tmp_path, [{**row, "top1": 91.0}])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_latency_heading_names_the_device_the_latencies_were_measured_on(tmp_path):
    """Measured on a GPU, measured again on the CPU without latency: the latencies kept are
    still the GPU's, whether the earlier rows recorded their device or only the heading did."""
    from mutualnet.select import read_grid, update_results

    for earlier in ({}, {"latency_device": "cuda:0"}):
        old = {"width": 1.0, "resolution": 28, "mmacs": 2.4, "top1": 90.0, "latency_ms": 0.5,
               **earlier}
        update_results(tmp_path, [old], device="cuda:0")
        update_results(tmp_path, [{"width": 1.0, "resolution": 28, "mmacs": 2.4, "top1": 90.5}],
                       device="cpu")
        [row] = read_grid(tmp_path)
        assert row["latency_device"] == "cuda:0"
        assert "## By measured latency (cuda:0)" in (tmp_path / "query_table.md").read_text()


def test_an_antialiased_run_resizes_so_everywhere(tmp_path, monkeypatch):
    """A run trained with space.antialias: training, calibration, evaluation and serving
    all resize with the antialiased filter, and the grid's top-1 is the static network's on
    antialiased images."""
    import mutualnet.calibrate as calibrate_mod
    import mutualnet.train.loop as loop_mod
    from mutualnet.evaluate import evaluate_run, static_network

    seen = []
    for module in (loop_mod, calibrate_mod):
        def spy(images, config, antialias=False, real=module.to_config):
            seen.append(antialias)
            return real(images, config, antialias)
        monkeypatch.setattr(module, "to_config", spy)
    run_path = tmp_path / "run"
    train(tiny("train.max_steps=2", "train.validate=false", "space.antialias=true"), run_path)
    run = load_run(run_path)
    config = Config(0.5, 12)
    rows = evaluate_run(run, [config], progress=False)
    assert seen and all(seen)
    assert rows[0]["data"] == run.data_source and run.data_source
    net = static_network(run.model, config, run.config.train.channels_last)
    _, val = run.datasets()
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    small = to_config(images, config, antialias=True)
    with torch.no_grad():
        top1 = (net(small).argmax(1) == labels).float().mean().item() * 100
    assert rows[0]["top1"] == pytest.approx(top1, abs=1e-6)
    m = AdaptiveModel.load(run_path)
    m.use(config)
    with torch.no_grad():
        torch.testing.assert_close(m(images[:4]), net(small[:4]), atol=1e-5, rtol=1e-4)
