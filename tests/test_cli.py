"""The command line: listing, counting, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

from mutualnet.cli import main


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v2" in out.split() and "task: detection" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("x3d_m ")] == ["clips"]


def test_macs_prints_json_lines(capsys):
    assert main(["macs", "mobilenet_v1", "--widths", "0.25,1.0", "--resolutions", "128,224"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 4
    assert abs(rows[-1]["mmacs"] - 568.74) < 0.1


def test_unknown_model_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "macs", "mobilenet_v9"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'mobilenet_v9'" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_option_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "macs", "resnet18", "--widths", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1


def test_macs_names_the_flag_of_a_value_that_cannot_be(capsys):
    for args, needle in ((["x3d_xs", "--frames", "0"], "--frames must be positive, got 0"),
                         (["resnet18", "--widths", "0,1"], "--widths must be positive, got 0"),
                         (["resnet18", "--widths", "inf"], "expected comma-separated finite "
                                                           "numbers, got 'inf'"),
                         (["resnet18", "--widths", "0.5,nan"], "got '0.5,nan'"),
                         (["resnet18", "--num-classes", "0"], "--num-classes must be positive, "
                                                              "got 0"),
                         (["resnet18", "--in-chans", "-1"], "--in-chans must be positive, got -1"),
                         (["resnet18", "--resolutions", "4,32"], "--resolutions must be at least "
                                                                 "8 pixels, got 4")):
        assert main(["macs", *args]) == 2
        assert needle in capsys.readouterr().err


def test_a_file_the_system_refuses_is_one_line_and_exit_code_2(tmp_path, capsys):
    """The last guard: an OS error no check foresaw is still one line, naming the file."""
    from mutualnet.cli import guarded

    missing = tmp_path / "gone" / "x.json"
    assert guarded(lambda: missing.read_text()) == 2
    err = capsys.readouterr().err
    assert err == f"error: {missing}: No such file or directory\n"


def test_an_unknown_option_is_named_with_its_subcommand(capsys):
    assert main(["macs", "resnet18", "--bogus", "1"]) == 2
    assert capsys.readouterr().err == ("error: mutualnet macs: unrecognized arguments: --bogus 1 "
                                       "(see 'mutualnet macs --help')\n")
    # one given before the subcommand is the program's, not the subcommand's
    assert main(["--bogus", "macs", "resnet18"]) == 2
    assert capsys.readouterr().err == ("error: mutualnet: unrecognized arguments: --bogus "
                                       "(see 'mutualnet --help')\n")


def test_a_file_given_as_the_run_is_named_as_such(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for args in (["select", afile, "--max-mmacs", "1"],
                 ["export", afile, "--width", "1", "--resolution", "28", "--format", "onnx",
                  "-o", tmp_path / "m.onnx"]):
        proc = subprocess.run([sys.executable, "-m", "mutualnet", *map(str, args)],
                              capture_output=True, text=True)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"error: {afile} is a file, not a run directory"), \
            proc.stderr


def test_help_and_the_package_import_do_not_wait_for_torch():
    code = ("import sys, mutualnet, mutualnet.cli; loaded = 'torch' in sys.modules; "
            "from mutualnet import Config, count_macs; "
            "print(loaded, 'torch' in sys.modules, mutualnet.nn.SlimmableModel.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "SlimmableModel"]


def test_every_module_imports_first_in_a_fresh_package():
    """No import cycle is hidden by another module having been imported before: each module is
    imported with no mutualnet module loaded (torch stays loaded, to keep this quick)."""
    code = """
import importlib, pkgutil, sys, traceback
import mutualnet
names = [m.name for m in pkgutil.walk_packages(mutualnet.__path__, "mutualnet.")
         if m.name != "mutualnet.__main__"]
for name in names:
    for loaded in [n for n in sys.modules if n == "mutualnet" or n.startswith("mutualnet.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        print(f"{name}: {type(exc).__name__}: {exc}")
print(len(names), "modules")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    *failures, count = proc.stdout.strip().splitlines()
    assert failures == [] and int(count.split()[0]) > 30


def test_ctrl_c_while_torch_loads_is_one_line_and_exit_code_130(tmp_path):
    # a torch that is interrupted while it loads, as Ctrl-C in the first seconds does
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "mutualnet", "models"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "error: interrupted"


def test_set_takes_several_pairs_at_once_and_again():
    from mutualnet.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["train", "r.yaml", "--set", "optim.lr=0.05", "train.epochs=3",
                              "--set", "train.seed=1"])
    assert (args.config, args.set) == ("r.yaml", ["optim.lr=0.05", "train.epochs=3",
                                                  "train.seed=1"])
    args = parser.parse_args(["reproduce", "--preset", "tiny", "--set", "a.b=1", "c.d=2"])
    assert args.overrides == ["a.b=1", "c.d=2"]


def test_out_of_memory_names_what_the_command_can_lower(tmp_path, monkeypatch, capsys):
    import mutualnet.data.scenes as scenes

    def too_big(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "4831838208 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(scenes, "write_scenes", too_big)
    assert main(["make-scenes", str(tmp_path / "s"), "--size", "20000"]) == 2
    assert capsys.readouterr().err == ("error: out of memory: could not allocate 4.5 GiB; "
                                       "lower --size, --train or --val\n")
