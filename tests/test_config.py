"""Recipes: YAML in, strict checking, overrides."""

from pathlib import Path

import pytest

from mutualnet.config import RunConfig, config_to_dict, load_config
from mutualnet.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_official_hyperparameters_are_in_the_recipes():
    root = Path(__file__).resolve().parents[1] / "configs"
    v1 = load_config(root / "imagenet/mobilenet_v1.yaml")
    assert (v1.optim.lr, v1.train.batch_size, v1.train.epochs) == (0.5, 1024, 250)
    assert v1.space.width_range == (0.25, 1.0) and v1.space.resolutions == [224, 192, 160, 128]
    v2 = load_config(root / "imagenet/mobilenet_v2.yaml")
    assert v2.space.width_range == (0.7, 1.0) and v2.optim.lr == 0.5
    r50 = load_config(root / "imagenet/resnet50.yaml")
    assert (r50.optim.lr, r50.train.batch_size, r50.train.epochs) == (0.2, 512, 120)
    assert r50.space.width_range == (0.9, 1.0)
    wrn = load_config(root / "cifar/wide_resnet28_10.yaml")
    assert (wrn.optim.lr, wrn.optim.weight_decay, wrn.train.epochs) == (0.1, 5e-4, 200)
    assert wrn.space.resolutions == [32, 28, 24, 20]
    # the official CIFAR pipeline: every parameter decayed, reflect padding, CIFAR-10 statistics
    assert not wrn.optim.no_decay_bn_bias_depthwise
    assert (wrn.data.shift, wrn.data.shift_pad) == (4, "reflect")
    assert wrn.data.mean == pytest.approx([125.3 / 255, 123.0 / 255, 113.9 / 255], abs=1e-4)
    assert wrn.data.std == pytest.approx([63.0 / 255, 62.1 / 255, 66.7 / 255], abs=1e-4)
    # the official ImageNet pipeline's ColorJitter(0.4) (brightness, contrast, saturation)
    assert v1.data.color_jitter == v2.data.color_jitter == r50.data.color_jitter == 0.4


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(path)


def test_a_section_given_whole_keeps_its_other_keys_and_null_restores_a_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("space:\n  width_range: [0.5, 1.0]\n  num_random: 1\n"
                    "model:\n  options:\n    # dropout: 0.2\n")
    cfg = load_config(path, ["space={resolutions: [12]}"])
    assert cfg.space.resolutions == [12] and cfg.space.width_range == (0.5, 1.0)
    assert cfg.space.num_random == 1 and cfg.model.options == {}  # options all commented out
    assert load_config(path, ["space.num_random=null"]).space.num_random == 2
    # options depend on the model: a mapping given for them replaces them
    cfg = load_config(None, ["model.options={dropout: 0.1, small_input: true}",
                             "model.options={small_input: true}"])
    assert cfg.model.options == {"small_input": True}


def test_set_under_a_key_that_holds_a_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"--set 'train.epochs.x': train.epochs is a value "
                                          r"\(3\), not a section of keys; set train.epochs=VALUE"):
        load_config(None, ["train.epochs=3", "train.epochs.x=1"])


def test_a_number_with_underscores_is_not_one():
    with pytest.raises(ConfigError, match=r"optim.lr must be float, got '1_0'"):
        load_config(None, ['optim.lr="1_0"'])


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match="train.epochs must be int"):
        load_config(path)


def test_overrides_use_yaml_values():
    cfg = load_config(None, ["optim.lr=0.05", "space.resolutions=[32, 16]", "train.amp=bf16"])
    assert cfg.optim.lr == 0.05 and cfg.space.resolutions == [32, 16] and cfg.train.amp == "bf16"


def test_bad_values_are_rejected():
    with pytest.raises(ConfigError, match="width_range"):
        load_config(None, ["space.width_range=[1.0, 0.5]"])
    with pytest.raises(ConfigError, match="train.mode"):
        load_config(None, ["train.mode=magic"])
    with pytest.raises(ConfigError, match="data.shift_pad must be zeros or reflect"):
        load_config(None, ["data.shift_pad=edge"])
    with pytest.raises(ConfigError, match=r"data.color_jitter must be in \[0, 1\)"):
        load_config(None, ["data.color_jitter=1.2"])
    with pytest.raises(ConfigError, match="data.color_jitter is not available for detection"):
        load_config(None, ["task=detection", "data.format=scenes", "data.augment=none",
                           "data.color_jitter=0.4"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_plain_data():
    cfg = load_config(None, ["space.width_range=[0.5, 1.0]"])
    from mutualnet.config import config_from_dict

    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_exponents_without_a_dot_are_numbers():
    cfg = load_config(None, ["optim.weight_decay=5e-5", "optim.lr=1E-1"])
    assert cfg.optim.weight_decay == 5e-5 and cfg.optim.lr == 0.1
