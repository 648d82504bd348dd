"""Every registered model: forward/backward at several configurations, extraction, scripting."""

import random

import pytest
import torch
from torch import nn

from mutualnet import create_model, list_models, model_options
from mutualnet.nn import SlimLayer

MODELS = list_models()
RANGE = (0.25, 1.0)


def small(name: str, **kwargs) -> nn.Module:
    """A model of the family at its small-image layout (28-32 px); the 3D families with one
    block per stage (``test_video`` counts them at full depth)."""
    options = model_options(name)
    if "small_input" in options:
        kwargs.setdefault("small_input", True)
    if "depths" in options:
        kwargs.setdefault("depths", (1, 1, 1, 1))
    return create_model(name, num_classes=10, width_range=RANGE, **kwargs)


def batch(model: nn.Module, n: int, size: int, channels: int | None = None) -> torch.Tensor:
    """Random images, or 2-frame clips for a 3D network."""
    frames = (2,) if model.temporal else ()
    return torch.randn(n, channels or model.in_chans, *frames, size, size)


def first_conv(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, SlimLayer))


def with_nontrivial_bn_statistics(model: nn.Module) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(batch(model, 4, 32) * 2 + 0.5)
    return model.eval()


def test_the_zoo_holds_the_promised_models():
    expected = {"mobilenet_v1", "mobilenet_v2", "resnet18", "resnet34", "resnet50",
                "resnet101", "wide_resnet28_10", "x3d_xs", "x3d_s", "x3d_m", "slow_r50",
                "slowfast_r50"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward_at_min_max_and_random_widths(name):
    torch.manual_seed(0)
    model = small(name).train()
    rng = random.Random(name)
    for width, resolution in [(RANGE[0], 32), (RANGE[1], 24), (rng.uniform(*RANGE), 20)]:
        model.zero_grad(set_to_none=True)
        model.set_config(width, resolution)
        out = model(batch(model, 2, resolution))
        assert out.shape == (2, 10)
        out.logsumexp(1).mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        # channels beyond the active width get no gradient
        stem = first_conv(model)
        assert stem.weight.grad[stem.active_out:].abs().sum() == 0


@pytest.mark.parametrize("name", MODELS)
def test_first_conv_input_and_classifier_output_are_never_slimmed(name):
    model = small(name, in_chans=1)
    model.set_config(RANGE[0])
    out = model(batch(model, 2, 28))
    assert out.shape == (2, 10)
    layers = [m for m in model.modules() if isinstance(m, SlimLayer)]
    assert layers[0].active_in == 1 and layers[-1].active_out == 10


@pytest.mark.parametrize("name", MODELS)
def test_extracted_subnet_matches_the_slimmable_model(name):
    torch.manual_seed(1)
    model = with_nontrivial_bn_statistics(small(name))
    x = batch(model, 3, 32)
    rng = random.Random(name)
    for width in [RANGE[0], rng.uniform(*RANGE), RANGE[1]]:
        model.set_config(width)
        static = model.subnet(width).eval()
        assert not any(isinstance(m, SlimLayer) for m in static.modules())
        with torch.no_grad():
            diff = (model(x) - static(x)).abs().max().item()
        assert diff <= 1e-5
        assert sum(p.numel() for p in static.parameters()) == model.active_param_count()


@pytest.mark.parametrize("name", MODELS)
def test_extracted_subnet_is_torchscriptable(name):
    model = small(name).eval()
    static = model.subnet(0.5).eval()
    scripted = torch.jit.script(static)
    x = batch(model, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), static(x))


@pytest.mark.parametrize("name", MODELS)
def test_subnet_does_not_change_the_active_configuration_or_share_weights(name):
    model = small(name)
    model.set_config(0.5, 32)
    static = model.subnet(0.25)
    assert model.config.width == 0.5 and model.config.resolution == 32
    first = next(static.parameters())
    with torch.no_grad():
        first.add_(1.0)
    assert not torch.equal(first, next(model.parameters())[: first.shape[0], : first.shape[1]])


def test_initialisation_follows_the_official_code():
    model = create_model("mobilenet_v2", num_classes=1000)
    lin = model.head[-1]
    assert abs(lin.weight.std().item() - 0.01) < 1e-3 and lin.bias.abs().sum() == 0
    conv = model.features[-1][0]  # 1x1, 1280 outputs: std = sqrt(2 / 1280)
    assert abs(conv.weight.std().item() - (2 / 1280) ** 0.5) < 3e-3
    bn = model.features[-1][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and bn.bias.abs().sum() == 0
    # the official Wide ResNet keeps PyTorch's default classifier weights: U(+-1/sqrt(fan_in))
    wrn = create_model("wide_resnet28_10", num_classes=100, width_range=(0.9, 1.0))
    fc = wrn.head[-1]
    bound = fc.in_features ** -0.5
    assert fc.weight.abs().max().item() <= bound and fc.bias.abs().sum() == 0
    assert abs(fc.weight.std().item() - bound / 3 ** 0.5) < 0.05 * bound


def test_subnet_carries_the_configurations_calibrated_statistics():
    from mutualnet.nn import SlimBatchNorm2d

    torch.manual_seed(2)
    model = with_nontrivial_bn_statistics(small("mobilenet_v2"))
    for bn in (m for m in model.modules() if isinstance(m, SlimBatchNorm2d)):
        c = bn.dim.at(0.5)
        bn.calibrated["w0p5_r28"] = (torch.randn(c) * 0.1, torch.rand(c) + 0.5)
    x = torch.randn(2, 3, 28, 28)
    model.set_config(0.5, 28)
    static = model.subnet(0.5, 28).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), static(x), atol=1e-5, rtol=0)
        shared = model.subnet(0.5, None).eval()(x)  # the shared statistics
    assert not torch.allclose(shared, static(x))
