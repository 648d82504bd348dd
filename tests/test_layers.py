"""Slimmable layers: channel rules, slicing, per-configuration BN statistics."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mutualnet
from mutualnet import ConfigError, create_model, make_divisible
from mutualnet.nn import Dim, SlimBatchNorm2d, SlimConv2d, SlimLinear, SlimmableModel


@pytest.mark.parametrize(
    "value,expected", [(32, 32), (22.4, 24), (27.2, 32), (8.0, 8), (3, 8), (230.4, 232), (12, 16)]
)
def test_make_divisible_rounds_to_eight_and_never_more_than_ten_percent_down(value, expected):
    assert make_divisible(value) == expected


def test_expanded_dim_keeps_its_ratio_exactly():
    c, t = Dim(24), 6
    for w in [0.35, 0.5, 0.7, 0.83, 1.0, 1.4]:
        assert (c * t).at(w) == t * make_divisible(24 * w)


def test_unslimmed_dim_never_changes():
    assert Dim(1280, slim=False).at(0.3) == 1280


def test_conv_allocates_weights_at_the_maximum_width_above_one():
    conv = SlimConv2d(Dim(16), Dim(32), 3, max_width=1.6)
    assert conv.weight.shape == (make_divisible(32 * 1.6), make_divisible(16 * 1.6), 3, 3)


@pytest.mark.parametrize("group_channels", [None, 1, 4])
def test_conv_at_a_width_equals_a_static_conv_on_the_leading_channels(group_channels):
    torch.manual_seed(0)
    conv = SlimConv2d(Dim(32), Dim(32), 3, group_channels=group_channels, bias=True)
    conv.set_width(0.5)
    x = torch.randn(2, conv.active_in, 9, 9)
    groups = conv.active_groups
    expected_groups = {None: 1, 1: 16, 4: 4}[group_channels]
    assert groups == expected_groups
    w = conv.weight[: conv.active_out, : conv.weight.shape[1] if group_channels else conv.active_in]
    ref = F.conv2d(x, w, conv.bias[: conv.active_out], padding=1, groups=groups)
    torch.testing.assert_close(conv(x), ref)
    static = conv.to_static()
    assert type(static) is nn.Conv2d and static.groups == groups
    torch.testing.assert_close(static(x), ref)


def test_linear_slims_inputs_only_when_outputs_are_fixed():
    lin = SlimLinear(Dim(64), 10)
    lin.set_width(0.25)
    assert (lin.active_in, lin.active_out) == (16, 10)
    assert lin(torch.randn(3, 16)).shape == (3, 10)


def test_batchnorm_shares_affine_parameters_across_widths():
    bn = SlimBatchNorm2d(Dim(32))
    with torch.no_grad():
        bn.weight.copy_(torch.arange(32.0))
    bn.set_width(0.5)
    static = bn.to_static()
    torch.testing.assert_close(static.weight, torch.arange(16.0))


def test_batchnorm_uses_a_configurations_own_statistics_in_eval():
    bn = SlimBatchNorm2d(Dim(16)).eval()
    bn.set_width(0.5, stats_key="w0p5_r32")
    x = torch.randn(4, 8, 5, 5) * 3 + 2
    shared = bn(x)
    bn.calibrated["w0p5_r32"] = (torch.full((8,), 2.0), torch.full((8,), 9.0))
    own = bn(x)
    torch.testing.assert_close(own, (x - 2.0) / torch.sqrt(torch.tensor(9.0 + bn.eps)))
    assert not torch.allclose(shared, own)
    bn.set_width(0.5, stats_key="w0p5_r24")  # another resolution: back to the shared statistics
    torch.testing.assert_close(bn(x), shared)


def test_batchnorm_updates_shared_statistics_only_at_full_width():
    bn = SlimBatchNorm2d(Dim(16)).train()
    bn.set_width(0.5)
    bn(torch.randn(4, 8, 3, 3) + 5)
    assert torch.equal(bn.running_mean, torch.zeros(16))
    bn.set_width(1.0)
    bn(torch.randn(4, 16, 3, 3) + 5)
    assert bn.running_mean.mean() > 0.3


def test_calibrated_statistics_round_trip_through_the_state_dict():
    model = create_model("mobilenet_v1", num_classes=4, small_input=True)
    bns = [m for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    for i, bn in enumerate(bns):
        c = bn.dim.at(0.5)
        bn.calibrated["w0p5_r32"] = (torch.full((c,), float(i)), torch.full((c,), 1.0 + i))
    state = model.state_dict()
    assert "features.0.1.calibrated.w0p5_r32.mean" in state
    fresh = create_model("mobilenet_v1", num_classes=4, small_input=True)
    fresh.load_state_dict(state)  # strict: calibrated entries are neither missing nor unexpected
    fresh_bns = [m for m in fresh.modules() if isinstance(m, SlimBatchNorm2d)]
    assert torch.equal(fresh_bns[3].calibrated["w0p5_r32"][0], bns[3].calibrated["w0p5_r32"][0])


def test_models_hold_their_configuration_without_global_state():
    a = create_model("mobilenet_v2", num_classes=3, small_input=True)
    b = create_model("mobilenet_v2", num_classes=3, small_input=True)
    a.set_config(0.25)
    b.set_config(1.0)
    assert a.features[0][0].active_out == 8 and b.features[0][0].active_out == 32


def test_width_outside_the_trained_range_is_a_clear_error():
    model = create_model("mobilenet_v1", width_range=(0.5, 1.0), small_input=True)
    with pytest.raises(ConfigError, match=r"width 0.3 is outside the trained range \[0.5, 1\]"):
        model.set_config(0.3)


def test_using_restores_the_previous_configuration():
    model = create_model("resnet18", num_classes=3, small_input=True)
    model.set_config(0.5, 32)
    with model.using(0.25):
        assert model.config.width == 0.25
    assert model.config.width == 0.5 and model.config.resolution == 32


def _calibrate_randomly(model, configs):
    from mutualnet.calibrate import calibrate

    torch.manual_seed(0)
    calibrate(model, [torch.randn(8, 3, 24, 24)], configs)


def test_subnet_takes_the_active_resolution_and_its_calibrated_statistics():
    model = create_model("mobilenet_v2", num_classes=3, width_range=(0.35, 1.0),
                         small_input=True)
    _calibrate_randomly(model, [mutualnet.Config(0.5, 24)])
    model.eval().set_config(0.5, 24)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(model.subnet(0.5)(x), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.subnet()(x), want, atol=1e-5, rtol=0)
        shared = model.subnet(0.5, None)(x)  # None, given: the shared statistics
    assert (shared - want).abs().max() > 1e-3
    assert model.config == mutualnet.Config(0.5, 24)


def test_widths_named_alike_with_different_channels_are_an_error_not_the_other_width():
    model = create_model("mobilenet_v2", num_classes=3, width_range=(0.35, 1.0),
                         small_input=True)
    a, b = mutualnet.Config(0.45833, 24), mutualnet.Config(0.45834, 24)
    assert a.key == b.key
    with model.using(a):
        count_a = model.active_param_count()
    with model.using(b):
        assert model.active_param_count() != count_a
    _calibrate_randomly(model, [a])
    model.eval().set_config(b)
    with pytest.raises(ConfigError, match=r"statistics calibrated for w0p4583_r24 hold \d+ "
                                          r"channels where width 0.45834 has \d+"):
        model(torch.randn(1, 3, 24, 24))
    with pytest.raises(ConfigError, match="w0p4583_r24"):
        model.subnet()


def test_a_failed_set_config_keeps_the_previous_configuration():
    class Grouped(SlimmableModel):
        def __init__(self):
            super().__init__((0.25, 1.0), 3, 3)
            self.features = nn.Sequential(SlimConv2d(3, Dim(32), 3), SlimBatchNorm2d(Dim(32)),
                                          SlimConv2d(Dim(32), Dim(32), 3, group_channels=16))
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      SlimLinear(Dim(32), 3))
            self._finish()

    model = Grouped().eval()
    model.set_config(0.5)
    x = torch.randn(1, 3, 8, 8)
    before = model(x)
    with pytest.raises(ConfigError, match="16 channels per group cannot take 24"):
        model.set_config(0.75)
    assert model.config.width == 0.5
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("args, message", [
    (("abc",), r"width must be a number, got 'abc'"),
    (([0.5],), r"width must be a number, got \[0.5\]"),
    (("0.5",), r"width must be a number, got '0.5'"),
    ((True,), r"width must be a number, got True"),
    ((torch.tensor(0.5),), r"width must be a number, got tensor\(0.5000\)"),
    ((0.5, 24.7), r"resolution must be a positive whole number of pixels, got 24.7"),
    ((0.5, -3), r"resolution must be a positive whole number of pixels, got -3"),
    ((0.5, 24, 4), r"this model takes images, not clips: drop the frame count \(4\)"),
    ((mutualnet.Config(0.5, 24), 32), r"give a Config or width, resolution and frames, not both"),
])
def test_set_config_refuses_bad_arguments_naming_them(args, message):
    model = create_model("mobilenet_v1", width_range=(0.25, 1.0), small_input=True)
    model.set_config(0.5, 16)
    with pytest.raises(ConfigError, match=message):
        model.set_config(*args)
    assert model.config == mutualnet.Config(0.5, 16)


def test_calibrate_takes_any_iterable_of_batches_and_refuses_frames_for_images():
    from mutualnet.calibrate import calibrate

    model = create_model("mobilenet_v1", width_range=(0.25, 1.0), small_input=True)
    torch.manual_seed(0)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(2)]
    calibrate(model, (b for b in batches), [mutualnet.Config(0.5, 16)])
    calibrate(model, batches, [mutualnet.Config(0.25, 16)])
    bn = next(m for m in model.modules() if isinstance(m, SlimBatchNorm2d))
    assert {"w0p5_r16", "w0p25_r16"} <= set(bn.calibrated)
    with pytest.raises(ConfigError, match="takes images, not clips"):
        calibrate(model, batches, [mutualnet.Config(0.5, 16, 4)])


def test_extraction_and_folding_keep_the_models_dtype():
    from mutualnet.nn.extract import fold_batchnorm

    model = create_model("resnet18", width_range=(0.25, 0.5), small_input=True).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
        static = model.subnet(0.5)
        assert {p.dtype for p in static.state_dict().values() if p.is_floating_point()} == \
            {torch.float64}
        torch.testing.assert_close(static(x), want)
        torch.testing.assert_close(fold_batchnorm(static)(x), want)


@pytest.mark.parametrize("build, message", [
    (lambda: create_model("mobilenet_v2", stem_channels=0),
     r"'mobilenet_v2' refuses its options \(channel counts must be positive whole numbers, "
     r"got 0\)"),
    (lambda: create_model("mobilenet_v2", stem_channels=2.5),
     r"channel counts must be positive whole numbers, got 2.5"),
    (lambda: create_model("mobilenet_v2", dropout=-1),
     r"'mobilenet_v2' refuses its options \(dropout must be a number in \[0, 1\), got -1\)"),
    (lambda: create_model("mobilenet_v1", dropout=1.5),
     r"dropout must be a number in \[0, 1\), got 1.5"),
    (lambda: create_model("mobilenet_v2", num_classes=2.5),
     r"num_classes must be a positive whole number, got 2.5"),
    (lambda: create_model("resnet18", in_chans="3"), r"in_chans must be a positive whole number"),
    (lambda: create_model("mobilenet_v2", width_range=(0.5, float("inf"))),
     r"width_range must satisfy 0 < lo <= hi \(finite\), got \(0.5, inf\)"),
    # every model the same check of the same option
    (lambda: create_model("x3d_xs", dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    (lambda: create_model("slowfast_r50", dropout=-1), r"dropout must be a number in \[0, 1\)"),
    (lambda: create_model("wide_resnet28_10", dropout=-1),
     r"dropout must be a number in \[0, 1\)"),
    # the 3D networks' structure
    (lambda: create_model("slow_r50", depths=[1, 1]),
     r"depths must be 4 positive whole numbers, got \[1, 1\]"),
    (lambda: create_model("slow_r50", temporal_kernels=[0, 1, 1, 1]),
     r"temporal_kernels must be 4 positive whole numbers"),
    (lambda: create_model("slowfast_r50", depths=[1, 1]), r"depths must be 4 positive whole"),
    (lambda: create_model("slowfast_r50", alpha=2.5),
     r"alpha must be a positive whole number, got 2.5"),
    (lambda: create_model("x3d_xs", channels=[8, 16], depths=[-1, 1], head_channels=16),
     r"depths must be 2 positive whole numbers, got \[-1, 1\]"),
    (lambda: create_model("x3d_xs", se_ratio=-0.5), r"se_ratio must be a number in \[0, 1\)"),
])
def test_model_options_out_of_range_are_refused(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_model_option_torch_refuses_is_named_on_one_line():
    with pytest.raises(ConfigError) as caught:
        create_model("mobilenet_v2", last_channels=10**23)  # beyond 64 bits
    message = str(caught.value)
    assert "\n" not in message and message.startswith("model 'mobilenet_v2' refuses its options (")
    assert "Overflow" in message and message.endswith("; fix model.options")


def test_make_divisible_refuses_what_it_cannot_round():
    from mutualnet.nn.layers import make_divisible

    assert make_divisible(10) == 16 and make_divisible(10, 4) == 12
    for value, divisor in ((10, 0), (-5, 8), (float("inf"), 8)):
        with pytest.raises(ValueError, match="divisor must be|positive finite number"):
            make_divisible(value, divisor)


def test_calibrated_statistics_take_the_models_dtype_when_loaded():
    """A state dict saved from a float64 (or bfloat16) copy loads into a float32 model with
    every statistic in float32: the calibrated ones as the running ones."""
    from mutualnet.calibrate import calibrate
    from mutualnet.space import Config

    kw = dict(num_classes=5, small_input=True, stem_channels=8, last_channels=32,
              block_setting=[[1, 16, 1, 1], [2, 24, 2, 2]])
    model = create_model("mobilenet_v2", **kw)
    calibrate(model, [torch.randn(4, 3, 16, 16)], [Config(0.5, 16)])
    for dtype in (torch.float64, torch.bfloat16):
        fresh = create_model("mobilenet_v2", **kw).eval()
        fresh.load_state_dict(copy.deepcopy(model).to(dtype).state_dict())
        bn = next(m for m in fresh.modules() if isinstance(m, SlimBatchNorm2d))
        assert {t.dtype for t in bn.calibrated["w0p5_r16"]} == {torch.float32}
        fresh.set_config(0.5, 16)
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), fresh.subnet().eval()(x))


def test_count_macs_takes_a_whole_float_resolution_and_refuses_a_fraction():
    model = create_model("mobilenet_v1", width_range=(0.25, 1.0), small_input=True)
    assert mutualnet.count_macs(model, 16.0) == mutualnet.count_macs(model, 16)
    with pytest.raises(ConfigError, match=r"resolution must be a positive whole number of "
                                          r"pixels, got 16.5"):
        mutualnet.count_macs(model, 16.5)
