"""MAC and parameter counts reproduce the published figures."""

import json

import pytest

from mutualnet import count_macs, create_model
from mutualnet.errors import ConfigError
from mutualnet.nn import SlimBatchNorm2d

# (model, width, resolution, published MMACs, published params in millions or None)
PUBLISHED = [
    ("mobilenet_v1", 1.0, 224, 569, 4.2),
    ("mobilenet_v1", 0.7, 160, 147, None),
    ("mobilenet_v1", 0.25, 128, 13.6, None),
    ("mobilenet_v1", 1.0, 192, 418, None),
    ("mobilenet_v1", 0.75, 224, 325, None),
    ("mobilenet_v1", 0.5, 224, 149, None),
    ("mobilenet_v2", 1.0, 224, 300.8, 3.5),
    ("mobilenet_v2", 0.7, 128, 57.6, None),
    ("mobilenet_v2", 1.0, 160, 154, None),
    ("mobilenet_v2", 0.35, 224, 59.2, None),
    ("resnet50", 1.0, 224, 4090, 25.6),
]


@pytest.fixture(scope="module")
def imagenet_models():
    return {name: create_model(name, num_classes=1000, width_range=(0.25, 1.0))
            for name in {row[0] for row in PUBLISHED}}


@pytest.mark.parametrize("name,width,resolution,mmacs,params_m", PUBLISHED)
def test_counts_match_published_figures(imagenet_models, name, width, resolution, mmacs, params_m):
    macs, params = count_macs(imagenet_models[name], resolution, width=width)
    assert abs(macs / 1e6 - mmacs) / mmacs <= 0.005
    if params_m is not None:
        assert abs(params / 1e6 - params_m) <= 0.05


def test_count_leaves_the_model_as_it_was(imagenet_models):
    model = imagenet_models["mobilenet_v2"]
    model.set_config(0.5, 160)
    model.train()
    count_macs(model, 128, width=0.9)
    assert model.training and model.config.width == 0.5 and model.config.resolution == 160


def test_static_subnet_counts_the_same_as_the_slimmable_model(imagenet_models):
    model = imagenet_models["mobilenet_v1"]
    slim = count_macs(model, 160, width=0.6)
    static = count_macs(model.subnet(0.6), 160, in_chans=3)
    assert slim == static
    assert count_macs(model.subnet(0.6), 160) == static  # channels of its first convolution


def test_a_plain_module_without_convolution_needs_in_chans():
    import torch

    with pytest.raises(ConfigError, match="in_chans= is needed"):
        count_macs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2)), 4)
    assert count_macs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2)), 4,
                      in_chans=3) == (96, 98)


def test_resnet50_channels_follow_the_official_rounding(official_fixtures):
    """The official ResNet-50 keeps BN statistics per width; at 0.9 their sizes are its channels."""
    keys = json.loads((official_fixtures / "resnet50_official_keys.json").read_text())["keys"]
    official = [shape[0] for key, shape in keys if key.endswith("bn.0.running_mean")]
    model = create_model("resnet50", num_classes=1000, width_range=(0.9, 1.0))
    model.set_config(0.9)
    ours = [m.active for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    assert ours == official
