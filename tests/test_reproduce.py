"""The modes of the one engine and the reproduction report."""

import json
import subprocess
import sys

import pytest

from mutualnet.config import load_config
from mutualnet.errors import ConfigError
from mutualnet.reproduce import PRESETS, reproduce
from mutualnet.space import Config
from mutualnet.train import build_space
from mutualnet.train.log import read_log


def test_modes_choose_what_the_engine_trains():
    base = ["space.width_range=[0.25, 1.0]", "space.resolutions=[32, 24, 16]"]
    mutual = build_space(load_config(None, base + ["train.mode=mutualnet"]))
    assert mutual.resolutions == (32, 24, 16) and mutual.num_random == 2
    usnet = build_space(load_config(None, base + ["train.mode=usnet"]))
    assert usnet.resolutions == (32,) and usnet.width_range == (0.25, 1.0)
    assert {c.resolution for s in range(50) for c in usnet.sandwich(0, s)} == {32}
    single = build_space(load_config(None, base + ["train.mode=single"]))
    assert single.sandwich(0, 0) == [Config(1.0, 32)]
    independent = build_space(load_config(None, [
        "train.mode=independent", "space.width_range=[0.5, 0.5]", "space.resolutions=[24]"]))
    assert independent.sandwich(0, 7) == [Config(0.5, 24)]
    with pytest.raises(ConfigError, match="independent trains one configuration"):
        build_space(load_config(None, base + ["train.mode=independent"]))


def test_every_preset_has_enough_seeds_and_budgets():
    for name, preset in PRESETS.items():
        assert preset.seeds >= 3, name
        assert len(preset.budgets) >= 6, name
        load_config(None, list(preset.overrides))


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """The tiny preset run by the command line, which prints the report and a JSON line."""
    out = tmp_path_factory.mktemp("reproduce")
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "reproduce", "--preset", "tiny",
                           "--seeds", "2", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith((out / "report.md").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["report"] == f"{out}/report.md"
    return out, json.loads((out / "report.json").read_text())


def test_the_tiny_reproduction_writes_a_full_report(tiny_report):
    out, report = tiny_report
    for name in ("report.md", "report.json", "curves.png"):
        assert (out / name).stat().st_size > 200
    budgets = [b["mmacs"] for b in report["budgets"]]
    assert len(budgets) >= 6 and max(budgets) / min(budgets) >= 10
    for b in report["budgets"]:
        assert b["independent"]["n"] == 2 and b["mutualnet"]["n"] == 2
    assert set(report["single"]) >= {"single_top1", "mutualnet_full_top1", "gain"}
    for t in report["training_time"]:
        assert t["mutualnet_s"] > 0 and t["independent_sum_s"] > 0
    text = (out / "report.md").read_text()
    assert "| budget (MMACs) |" in text and "MutualNet / independent" in text
    assert json.loads((out / "report.json").read_text())["seeds"] == 2


def test_methods_are_matched_within_the_budget(tiny_report):
    _, report = tiny_report
    runs = report["runs"]
    for b in report["budgets"]:
        for method in ("usnet", "mutualnet"):
            for seed, config in enumerate(b[method]["configs"]):
                rows = runs[f"seed{seed}/{method}"]["rows"]
                chosen = next(r for r in rows if Config(r["width"], r["resolution"]).name == config)
                assert chosen["mmacs"] <= b["mmacs"] * (1 + 1e-9)


def test_a_second_call_reuses_finished_runs(tiny_report):
    out, report = tiny_report
    before = read_log(out / "seed0" / "mutualnet")
    again = reproduce("tiny", out, seeds=2)
    assert read_log(out / "seed0" / "mutualnet") == before
    assert again["budgets"] == report["budgets"]


def test_unknown_preset_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "reproduce", "--preset", "mnistt",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown preset 'mnistt'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_budget_macs_are_those_of_the_independent_networks(tiny_report):
    _, report = tiny_report
    for b in report["budgets"]:
        rows = [run["rows"][0] for name, run in report["runs"].items()
                if name.startswith("seed0/independent_")]
        row = next(r for r in rows if Config(r["width"], r["resolution"]).name == b["config"])
        assert row["mmacs"] == b["mmacs"]


def test_a_subset_of_methods_with_recipe_overrides(tmp_path):
    report = reproduce("tiny", tmp_path, seeds=1, methods=("mutualnet",),
                       overrides=["space.smallest_at_lowest=true"])
    assert sorted(report["runs"]) == ["seed0/mutualnet"]
    assert report["single"] is None and report["recipe"]["space"]["smallest_at_lowest"]
    assert all("independent" not in b and b["mutualnet"]["n"] == 1 for b in report["budgets"])
    text = (tmp_path / "report.md").read_text()
    assert "| budget (MMACs) | budget config | MutualNet |" in text
    assert "| US-Nets" not in text and "Single network" not in text
    # finished runs of another recipe are refused, never reused silently
    with pytest.raises(ConfigError, match="different recipe.*train.epochs"):
        reproduce("tiny", tmp_path, seeds=1, epochs=2, methods=("mutualnet",),
                  overrides=["space.smallest_at_lowest=true"])


def test_the_single_network_alone_is_reported_and_another_report_is_kept(tmp_path, caplog):
    report = reproduce("tiny", tmp_path, seeds=1, methods=("single",))
    alone = report["single"]["single_top1"]
    assert alone["std"] is None and set(report["single"]) == {"full_config", "single_top1"}
    text = (tmp_path / "report.md").read_text()
    assert "| budget" not in text and "No budget comparison" in text
    assert f"trained alone {alone['mean']:.2f}." in text and "±" not in text
    with caplog.at_level("WARNING", logger="mutualnet"):
        reproduce("tiny", tmp_path, seeds=1, methods=("mutualnet",))
    assert "covers other methods or seeds (single-1 seed): it is kept as " \
           "report-single-1-seed.md" in caplog.text
    assert (tmp_path / "report-single-1-seed.md").read_text() == text
    assert (tmp_path / "report-single-1-seed.json").is_file()
    assert (tmp_path / "report-single-1-seed.png").is_file() is False
    assert (tmp_path / "curves-single-1-seed.png").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["methods"] == ["mutualnet"]


def test_unknown_methods_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        reproduce("tiny", tmp_path, methods=("mutualnet", "ofa"))
    assert not any(tmp_path.iterdir())
