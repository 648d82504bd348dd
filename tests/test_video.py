"""3D networks and action recognition: 3D ops, published counts, clips, frames as a third axis."""

import contextlib
import json
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from mutualnet import AdaptiveModel, count_macs, create_model
from mutualnet.config import config_to_dict, load_config
from mutualnet.data import build_datasets, motion
from mutualnet.data.video import ClipEvalTransform, ClipSampler, VideoFolderDataset
from mutualnet.errors import ConfigError, DataError
from mutualnet.evaluate import average_clips, evaluate_run
from mutualnet.nn import (
    ConcatDim,
    Dim,
    SlimBatchNorm3d,
    SlimConv3d,
    SlimLayer,
    SqueezeExcite,
    to_static,
)
from mutualnet.run import load_run
from mutualnet.select import read_grid, select
from mutualnet.space import Config
from mutualnet.train import train

TINY_X3D = [
    "model.name=x3d_xs",
    "model.options={channels: [8, 16, 24, 32], depths: [1, 1, 1, 1], head_channels: 32, "
    "dropout: 0.0}",
    "space.width_range=[0.5, 1.0]",
    "space.resolutions=[24, 16]",
    "space.frames=[4, 2]",
    "data.num_workers=0",
    "data.frame_stride=3",
    "data.hflip=false",
    "train.batch_size=16",
    "train.progress=false",
    "train.validate=false",
]


def cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


# --- 3D ops -----------------------------------------------------------------------------------


def test_3d_ops_extract_to_plain_layers_with_the_same_output():
    torch.manual_seed(0)
    c16, c32 = Dim(16), Dim(32)
    net = nn.Sequential(
        SlimConv3d(3, c16, (3, 3, 3), (1, 2, 2)), SlimBatchNorm3d(c16), nn.ReLU(),
        SlimConv3d(c16, c16, 3, group_channels=1), SlimBatchNorm3d(c16),  # channel-wise
        SlimConv3d(c16, c32, (3, 1, 1), group_channels=4), SlimBatchNorm3d(c32),  # grouped
        SqueezeExcite(c32, 0.25, max_width=1.0, spatial_dims=3),
        SlimConv3d(c32, 8, 1, bias=True),
    )
    layers = [m for m in net.modules() if isinstance(m, SlimLayer)]
    x = torch.randn(2, 3, 4, 12, 12)
    net.train()
    with torch.no_grad():
        net(x * 2 + 1)  # non-trivial running statistics
    net.eval()
    for width in (0.5, 0.75, 1.0):
        for layer in layers:
            layer.set_width(width)
        static = to_static(net).eval()
        assert not any(isinstance(m, SlimLayer) for m in static.modules())
        assert {type(m) for m in static.modules()} >= {nn.Conv3d, nn.BatchNorm3d}
        with torch.no_grad():
            assert (net(x) - static(x)).abs().max().item() <= 1e-5
    assert static[5].groups == 4 and static[3].groups == 16


def test_2d_squeeze_excite_follows_the_width():
    se = SqueezeExcite(Dim(32), 0.25, max_width=1.0)
    assert se.reduce.out_channels == 8
    se.reduce.set_width(0.5), se.expand.set_width(0.5)
    x = torch.randn(2, 16, 5, 5)
    static = to_static(se)
    assert static.reduce.weight.shape == (8, 16, 1, 1)  # make_divisible keeps at least 8
    torch.testing.assert_close(se(x), static(x))


def test_a_concatenation_keeps_the_fixed_channels_and_slims_the_rest():
    dim = ConcatDim.of(16, Dim(64))
    assert dim.at(1.0) == 80 and dim.at(0.5) == 48 and (dim * 2).at(0.5) == 96


# --- published counts ---------------------------------------------------------------------------

# (model, frames, resolution, published GMACs, published params in millions): X3D Table 3 at
# the training crop; Slow / SlowFast in the SlowFast paper's convention, 256² crops.
PUBLISHED = [
    ("x3d_xs", 4, 160, 0.60, 3.8),
    ("x3d_s", 13, 160, 1.96, 3.8),
    ("x3d_m", 16, 224, 4.73, 3.8),
    ("slow_r50", 8, 256, 54.52, 32.5),
    ("slowfast_r50", 32, 256, 36.1, 34.5),
]


@pytest.mark.parametrize("name,frames,resolution,gmacs,params_m", PUBLISHED)
def test_full_configuration_counts_match_the_papers(name, frames, resolution, gmacs, params_m):
    with torch.device("meta"):  # shapes only: no compute
        model = create_model(name, num_classes=400)
    macs, params = count_macs(model, resolution, frames=frames)
    assert abs(macs / 1e9 - gmacs) / gmacs <= 0.05
    assert abs(params / 1e6 - params_m) / params_m <= 0.05


def test_clip_models_are_counted_at_their_active_frame_count_as_at_their_width():
    with torch.device("meta"):
        model = create_model("x3d_xs", num_classes=8)
    model.set_config(width=0.5, resolution=32, frames=4)
    assert count_macs(model, 32) == count_macs(model, 32, width=0.5, frames=4)
    assert count_macs(model, 32, frames=8)[0] > count_macs(model, 32)[0]


def test_slowfast_keeps_its_fast_pathway_and_laterals_at_every_width():
    model = create_model("slowfast_r50", num_classes=5, width_range=(0.5, 1.0), dropout=0.0)
    full_fast = [m.active_out for m in model.features.fast_stem.modules()
                 if isinstance(m, SlimConv3d)]
    model.set_config(0.5)
    assert [m.active_out for m in model.features.fast_stem.modules()
            if isinstance(m, SlimConv3d)] == full_fast
    stage = model.features.stages[1]
    assert stage.slow[0].body[0][0].active_in == 64 + 128  # lateral 64 + slow 256 at 0.5
    static = model.subnet(0.5).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), static(x), atol=1e-5, rtol=0)


# --- clips ------------------------------------------------------------------------------------


def test_clip_sampling_is_random_in_training_centred_in_evaluation_and_uniform_for_k_clips():
    sampler = ClipSampler(frames=4, stride=2, eval_clips=3)
    assert sampler.indices(16, train=False) == [[0, 2, 4, 6], [4, 6, 8, 10], [9, 11, 13, 15]]
    assert ClipSampler(4, 2).indices(16, train=False) == [[4, 6, 8, 10]]
    starts = {sampler.indices(16, train=True)[0][0] for _ in range(50)}
    assert starts <= set(range(10)) and len(starts) > 3
    assert ClipSampler(4, 3).indices(5, train=False) == [[0, 3, 4, 4]]  # short: last repeats


def test_multi_clip_predictions_average_the_softmax_per_video():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 3.0]])
    out = average_clips(logits, 2)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out.softmax(-1), logits.softmax(-1).view(2, 2, 2).mean(1))


def _write_test_video(path: Path, frames: int, size: tuple[int, int], codec: str,
                      seed: int | None = None) -> None:
    """A video whose frame t is uniformly grey level 12 * t (with ``seed``: random noise),
    written by PyAV directly."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            frame = (np.full((*size, 3), 12 * t, dtype=np.uint8) if seed is None
                     else rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_folder_reads_files_it_never_wrote(tmp_path, caplog):
    """Files made by PyAV in other containers and codecs, non-square: the reader samples the
    right frames, crops and stacks K evaluation clips."""
    for split in ("train", "val"):
        for cls, (ext, codec) in {"a": (".avi", "mpeg4"), "b": (".mkv", "libx264")}.items():
            (tmp_path / split / cls).mkdir(parents=True)
            _write_test_video(tmp_path / split / cls / f"v{ext}", 16, (48, 64), codec)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not a video")
    cfg = load_config(None, ["data.format=video_folder", f"data.root={tmp_path}",
                             "data.frame_stride=2", "data.eval_clips=2", "data.mean=[0, 0, 0]",
                             "data.std=[1, 1, 1]", "data.eval_crop_ratio=1.0",
                             "data.augment=resized_crop", "space.frames=[4]"]).data
    with caplog.at_level(logging.WARNING, logger="mutualnet"):
        train_set, val_set, info = build_datasets(cfg, 32, frames=4)
    assert info.class_names == ["a", "b"] and info.in_chans == 3 and len(train_set) == 2
    assert "ignored 1 file(s) in " + str(tmp_path / "train") in caplog.text
    assert "not videos by their names (.mp4, .avi, .webm, .mkv): a/notes.txt" in caplog.text
    clip, label = train_set[0]
    assert clip.shape == (3, 4, 32, 32) and label == 0
    clips, label = val_set[1]
    assert clips.shape == (2, 3, 4, 32, 32) and label == 1
    levels = clips.mean((1, 3, 4)) * 255  # [K, T] grey level of each frame
    expected = torch.tensor([[0, 2, 4, 6], [9, 11, 13, 15]], dtype=torch.float32) * 12
    assert (levels - expected).abs().max() < 6  # lossy codecs


def test_written_motion_videos_read_back_as_the_generated_clips(tmp_path):
    counts = motion.write_motion_videos(tmp_path / "videos", train_per_class=1, val_per_class=1)
    assert counts == {"train": 8, "val": 8}
    names = sorted(p.name for p in (tmp_path / "videos" / "train").iterdir())
    assert names == sorted(motion.MOTION_CLASSES)
    sampler = ClipSampler(motion.MOTION_FRAMES)
    transform = ClipEvalTransform(32, [0.0] * 3, [1.0] * 3, crop_ratio=1.0)
    data = VideoFolderDataset(tmp_path / "videos" / "val", sampler, transform, train=False)
    videos, labels = motion.make_motion_videos("val", 8)
    for clip, label in (data[i] for i in range(len(data))):
        generated = motion.MOTION_CLASSES.index(data.classes[label])  # folders sort by name
        original = videos[(labels == generated).nonzero()[0, 0]].float().div(255).transpose(0, 1)
        assert (clip - original).abs().mean() < 0.03  # H.264 at high quality


def test_unreadable_videos_are_skipped_when_asked(tmp_path):
    (tmp_path / "a").mkdir()
    _write_test_video(tmp_path / "a" / "good.mp4", 4, (16, 16), "libx264")
    (tmp_path / "a" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    transform = ClipEvalTransform(16, [0.0] * 3, [1.0] * 3)
    data = VideoFolderDataset(tmp_path, ClipSampler(2), transform, False, skip_bad_files=True)
    assert len(data) == 1 and data.skipped[0].endswith("bad.mp4")
    data = VideoFolderDataset(tmp_path, ClipSampler(2), transform, False)
    with pytest.raises(DataError, match="cannot read video .*bad.mp4.*skip_bad_files"):
        [data[i] for i in range(len(data))]


def test_a_file_without_a_video_stream_is_named_as_such(tmp_path):
    import wave

    from mutualnet.data.video import load_video

    with wave.open(str(tmp_path / "sound.mp4"), "wb") as audio:  # the contents decide, not the name
        audio.setnchannels(1), audio.setsampwidth(2), audio.setframerate(8000)
        audio.writeframes(b"\x00\x00" * 800)
    with pytest.raises(DataError, match=r"sound.mp4 holds no video stream \(it is not a video, "
                                        r"or it was cut short\)"):
        load_video(tmp_path / "sound.mp4", lambda n: [[0]])


def _damage_middle_packet(path: Path) -> None:
    """Overwrite the start of the middle packet (in MP4, the length of its first NAL unit): the
    file opens and its first frames decode, the decoder refuses the rest."""
    import av

    with av.open(str(path)) as container:
        starts = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(path.read_bytes())
    middle = starts[len(starts) // 2]
    data[middle:middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def test_a_video_damaged_half_way_is_replaced_by_the_next_when_asked(tmp_path, caplog):
    """The check up front decodes only the first frame (decoding a whole large set would take
    hours); damage further in is found when the video is read, and the next video is read in
    its place, the same one every time."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a/damaged.mp4", "b/good.mp4"):
        _write_test_video(tmp_path / name, 12, (16, 16), "libx264", seed=1)
    _damage_middle_packet(tmp_path / "a" / "damaged.mp4")
    transform = ClipEvalTransform(16, [0.0] * 3, [1.0] * 3)
    data = VideoFolderDataset(tmp_path, ClipSampler(12), transform, False, skip_bad_files=True)
    assert len(data) == 2 and data.skipped == []
    with caplog.at_level("WARNING", logger="mutualnet"):
        first, again, good = data[0], data[0], data[1]
    assert first[1] == good[1] == 1 and torch.equal(first[0], good[0])
    assert torch.equal(again[0], good[0])
    warnings = [r.getMessage() for r in caplog.records if "takes its place" in r.getMessage()]
    assert len(warnings) == 1 and "damaged.mp4" in warnings[0]
    data = VideoFolderDataset(tmp_path, ClipSampler(12), transform, False)
    with pytest.raises(DataError, match=r"cannot read video .*damaged.mp4 .*avcodec_send_packet"
                                        r".*skip_bad_files"):
        [data[i] for i in range(len(data))]


def _load_every_frame(path: Path, choose) -> list[torch.Tensor]:
    """The reference reader: decode and keep every frame, then take the clips."""
    import av

    with av.open(str(path)) as container:
        decoded = list(container.decode(container.streams.video[0]))
    return [torch.from_numpy(np.stack([decoded[i].to_ndarray(format="rgb24") for i in ix]))
            .permute(0, 3, 1, 2) for ix in choose(len(decoded))]


class _Counted:
    """A PyAV container or frame that counts the frames decoded and converted through it."""

    def __init__(self, inner, counts: dict):
        self.inner, self.counts = inner, counts

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self.inner.decode(*args, **kwargs):
            self.counts["decoded"] += 1
            yield _Counted(frame, self.counts)

    def to_ndarray(self, *args, **kwargs):
        self.counts["converted"] += 1
        return self.inner.to_ndarray(*args, **kwargs)


@pytest.mark.parametrize("ext,counted", [(".mp4", True), (".mkv", False)])
def test_clips_equal_decoding_every_frame_but_only_needed_frames_are_kept(tmp_path,
                                                                          monkeypatch, ext,
                                                                          counted):
    import av

    from mutualnet.data.video import load_video

    path = tmp_path / f"v{ext}"
    _write_test_video(path, 40, (24, 32), "libx264", seed=0)
    with av.open(str(path)) as container:
        assert (container.streams.video[0].frames == 40) == counted  # a count in the header
    for choose in (partial(ClipSampler(4, 2, eval_clips=3).indices, train=False),
                   partial(ClipSampler(4, 3).indices, train=True)):
        torch.manual_seed(0)
        want = _load_every_frame(path, choose)
        torch.manual_seed(0)
        got = load_video(path, choose)
        assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    counts = {"decoded": 0, "converted": 0}
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _Counted(real_open(*a, **k), counts))
    clip, = load_video(path, lambda n: ClipSampler(4, 2).indices(n, False))  # frames 16..22
    assert clip.shape == (4, 3, 24, 32) and counts["converted"] == 4
    assert counts["decoded"] == (23 if counted else 40 + 23)  # stops after the last one needed


class _Overstated:
    """A PyAV container whose video stream states ``frames`` frames, more than it holds."""

    def __init__(self, inner, frames: int):
        self.inner = inner
        self.streams = SimpleNamespace(video=[SimpleNamespace(frames=frames)])

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def decode(self, _stream):
        return self.inner.decode(self.inner.streams.video[0])


def test_a_frame_count_stated_too_high_is_corrected_by_counting(tmp_path, monkeypatch):
    import av

    from mutualnet.data.video import load_video

    path = tmp_path / "v.mp4"
    _write_test_video(path, 40, (24, 32), "libx264", seed=0)
    choose = ClipSampler(4, 2, eval_clips=3).indices
    want = _load_every_frame(path, lambda n: choose(n, False))
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _Overstated(real_open(*a, **k), 100))
    got = load_video(path, lambda n: choose(n, False))
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and len(got) == 3

def test_an_empty_val_class_folder_is_a_class_without_val_videos(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "zz"):
            (tmp_path / split / cls).mkdir(parents=True)
            if split == "train" or cls == "a":
                _write_test_video(tmp_path / split / cls / "v.mp4", 4, (16, 16), "libx264")
    (tmp_path / "val" / "zz" / "notes.txt").write_text("not a video")
    cfg = load_config(None, ["data.format=video_folder", f"data.root={tmp_path}",
                             "space.frames=[2]"]).data
    train_set, val_set, info = build_datasets(cfg, 16, frames=2)
    assert info.class_names == ["a", "zz"] and len(train_set) == 2
    assert len(val_set) == 1 and val_set.targets == [0]
    (tmp_path / "train" / "zz" / "v.mp4").unlink()
    with pytest.raises(DataError, match=r"class folder .*train/zz holds no videos .*; add some, "
                                        r"or remove the class from every split"):
        build_datasets(cfg, 16, frames=2)


def test_a_corrupt_video_ends_training_with_one_line(tmp_path):
    videos = tmp_path / "videos"
    for cls in ("a", "b"):
        for split in ("train", "val"):
            (videos / split / cls).mkdir(parents=True)
            _write_test_video(videos / split / cls / "ok.mp4", 8, (16, 16), "libx264")
    (videos / "train" / "b" / "broken.mp4").write_bytes(os.urandom(500))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config_to_dict(load_config(
        None, TINY_X3D + ["data.format=video_folder", "train.batch_size=3"]))))
    proc = cli("train", recipe, "--out", tmp_path / "run", "--data", tmp_path / "videos")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "broken.mp4" in proc.stderr and "skip_bad_files" in proc.stderr


@pytest.mark.parametrize("overrides,message", [
    (["data.format=synthetic_motion"], "set space.frames"),
    (["space.frames=[8]"], "space.frames needs clips"),
    (["data.format=synthetic_motion", "space.frames=[8]", "data.eval_clips=0"],
     "data.eval_clips must be at least 1"),
    (["data.format=synthetic_motion", "space.frames=[8]"], "data.hflip"),
])
def test_video_options_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_an_image_model_on_clips_is_refused(tmp_path):
    cfg = load_config(None, ["model.name=mobilenet_v2", "data.format=synthetic_motion",
                             "space.frames=[4]", "data.hflip=false", "space.resolutions=[16]",
                             "train.batch_size=16"])
    with small_motion(), pytest.raises(ConfigError, match="takes images but"):
        train(cfg, tmp_path / "run")


# --- training, calibration, the grid over frames, selection, serving, export -------------------


@contextlib.contextmanager
def small_motion():
    """The synthetic motion dataset at 48 train / 16 val videos (the full one takes seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(motion, "MOTION_TRAIN", 48)
        patch.setattr(motion, "MOTION_VAL", 16)
        yield


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("video") / "run"
    cfg = load_config(None, TINY_X3D + ["data.format=synthetic_motion", "train.max_steps=3",
                                        "train.channels_last=true", "data.eval_clips=2"])
    with small_motion():
        train(cfg, run)
        rows = evaluate_run(load_run(run), [Config(w, r, t) for w, r in ((0.5, 16), (1.0, 24))
                                            for t in (2, 4)],
                            calibration_batches=2, batch_size=16, progress=False)
    return run, rows


def test_training_calibration_and_the_grid_cover_frames(video_run):
    run, rows = video_run
    assert len(rows) == 4 and {r["frames"] for r in rows} == {2, 4}
    by = {(r["width"], r["resolution"], r["frames"]): r for r in rows}
    assert by[(1.0, 24, 4)]["mmacs"] > 1.8 * by[(1.0, 24, 2)]["mmacs"]  # MACs follow the frames
    assert Config(0.5, 16, 2).key in load_run(run).calibrated_keys()
    table = (run / "query_table.md").read_text()
    assert "width-resolution-frames" in table and "| frames |" in table
    assert "f |" in table  # labels such as 1.0-24-4f


def test_a_resume_may_score_videos_with_another_clip_count(tmp_path):
    """data.eval_clips only changes how validation scores a video, not the training."""
    base = TINY_X3D + ["data.format=synthetic_motion", "train.validate=false"]
    with small_motion():
        train(load_config(None, base + ["train.max_steps=1", "data.eval_clips=2"]),
              tmp_path / "run")
        summary = train(load_config(None, base + ["train.max_steps=2", "data.eval_clips=1"]),
                        tmp_path / "run", resume=True)
    assert summary["steps"] == 2


def test_select_and_runtime_switching_choose_frames_too(video_run):
    run, rows = video_run
    cheapest = min(r["mmacs"] for r in rows)
    row = select(read_grid(run), max_mmacs=cheapest * 1.01)
    assert row["frames"] == 2 and row["width"] == 0.5 and row["resolution"] == 16
    proc = cli("select", run, "--max-mmacs", cheapest * 1.01)
    assert proc.returncode == 0 and json.loads(proc.stdout)["frames"] == 2
    model = AdaptiveModel.load(run)
    model.set_budget(mmacs=cheapest * 1.01)
    assert model.config == Config(0.5, 16, 2)
    assert model(torch.randn(3, 3, 4, 24, 24)).shape == (3, 8)


def test_a_3d_sub_network_exports_to_onnx(video_run, tmp_path):
    import onnxruntime as ort

    from mutualnet.export import export_run

    run, _ = video_run
    out = tmp_path / "x3d.onnx"
    info = export_run(load_run(run), Config(0.5, 16, 2), "onnx", out)
    reference = load_run(run).model.subnet(0.5, 16, 2).eval()
    assert info["frames"] == 2 and info["max_abs_diff_vs_torch"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 2, 16, 16)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, reference(x).numpy(), atol=1e-4)


def test_frames_beyond_the_clip_or_for_an_image_run_are_refused(video_run):
    run, _ = video_run
    proc = cli("export", run, "--width", "0.5", "--resolution", "16", "--frames", "9",
               "--format", "onnx", "-o", run / "x.onnx")
    assert proc.returncode == 2 and "frames 9 is outside 1..4" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
