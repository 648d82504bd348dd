"""The sandwich sampler and the on-device resizing."""

import collections

import pytest
import torch

from mutualnet.space import Config, Space, to_config

SPACE = Space((0.25, 1.0), (224, 192, 160, 128))


def test_sandwich_is_full_then_smallest_then_random_widths():
    configs = SPACE.sandwich(seed=0, step=5)
    assert len(configs) == 4
    assert configs[0] == Config(1.0, 224)
    assert configs[1].width == 0.25
    assert all(0.25 <= c.width <= 1.0 for c in configs[2:])


def test_sandwich_depends_only_on_seed_and_step():
    assert SPACE.sandwich(3, 17) == SPACE.sandwich(3, 17)
    assert SPACE.sandwich(3, 17) != SPACE.sandwich(3, 18)
    assert SPACE.sandwich(3, 17) != SPACE.sandwich(4, 17)


def test_non_full_resolutions_are_uniform_over_the_whole_list():
    counts = collections.Counter(
        c.resolution for step in range(4000) for c in SPACE.sandwich(0, step)[1:]
    )
    assert set(counts) == {224, 192, 160, 128}
    total = sum(counts.values())
    for r in counts:
        assert abs(counts[r] / total - 0.25) < 0.02


def test_random_widths_are_uniform_over_the_range():
    widths = [c.width for step in range(3000) for c in SPACE.sandwich(1, step)[2:]]
    assert abs(sum(widths) / len(widths) - 0.625) < 0.01
    below_half = sum(w < 0.625 for w in widths) / len(widths)
    assert abs(below_half - 0.5) < 0.03


def test_smallest_can_be_pinned_to_the_lowest_resolution():
    space = Space((0.25, 1.0), (224, 128), smallest_at_lowest=True)
    assert all(space.sandwich(0, s)[1] == Config(0.25, 128) for s in range(50))


def test_a_single_configuration_space_trains_only_the_full_network():
    assert Space((1.0, 1.0), (32,)).sandwich(0, 0) == [Config(1.0, 32)]


def test_frames_are_a_third_axis():
    space = Space((0.5, 1.0), (32, 24), frames=(16, 8, 4))
    configs = space.sandwich(0, 0)
    assert configs[0] == Config(1.0, 32, 16)
    assert all(c.frames in (16, 8, 4) for c in configs[1:])


def test_grid_spans_the_range_with_both_ends():
    grid = Space((0.35, 1.0), (28, 16)).grid(0.05)
    widths = sorted({c.width for c in grid})
    assert widths[0] == 0.35 and widths[-1] == 1.0 and len(widths) == 14
    assert len(grid) == 28


@pytest.mark.parametrize("width_range, step, count", [
    ((0.25, 1.0), 0.3, 4),     # steps of 0.25 (0.05 off), not 0.375 (0.075 off)
    ((0.35, 1.0), 0.25, 4),    # 0.2167 (0.033 off), not 0.325
    ((0.25, 1.0), 0.25, 4),    # divides exactly
    ((0.25, 1.0), 5.0, 2),     # a step past the range: both ends
    ((0.5, 0.5), 0.1, 1),
])
def test_grid_takes_the_equal_step_nearest_the_one_asked_for(width_range, step, count):
    widths = sorted({c.width for c in Space(width_range, (16,)).grid(step)})
    assert len(widths) == count and widths[0] == width_range[0] and widths[-1] == width_range[1]


def test_resize_is_bilinear_on_the_batch():
    x = torch.rand(2, 3, 32, 32)
    y = to_config(x, Config(0.5, 16))
    assert y.shape == (2, 3, 16, 16)
    ref = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(y, ref)
    assert to_config(x, Config(0.5, 32)) is x


def test_antialiased_resize_is_the_data_pipelines():
    """space.antialias: the device resize filters as the data pipeline's resize does, so a
    configuration sees what a network trained at its resolution sees."""
    from mutualnet.data.transforms import _resize

    x = torch.rand(2, 3, 28, 28)
    y = to_config(x, Config(0.5, 16), antialias=True)
    torch.testing.assert_close(y, torch.stack([_resize(img, 16) for img in x]))
    assert not torch.allclose(y, to_config(x, Config(0.5, 16)))
    clip = torch.rand(1, 3, 4, 28, 28)
    out = to_config(clip, Config(0.5, 16, frames=4), antialias=True)
    torch.testing.assert_close(out[0, :, 1], _resize(clip[0, :, 1], 16))


def test_clips_are_subsampled_in_time():
    clip = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 4, 4)
    out = to_config(clip, Config(1.0, 2, frames=4))
    assert out.shape == (1, 1, 4, 2, 2)
    assert out[0, 0, :, 0, 0].tolist() == [0.0, 2.0, 5.0, 7.0]


@pytest.mark.parametrize("width", [0.3333, 0.5, 1.0])
def test_config_keys_are_state_dict_safe(width):
    assert "." not in Config(width, 224, 8).key


def test_config_names_are_the_papers_notation_as_in_the_query_table():
    assert Config(0.5, 160).name == "0.5-160"
    assert Config(1.0, 224, 8).name == "1.0-224-8f"
    assert Config(1, 28).name == "1.0-28"
    assert Config(0.3333).name == "0.3333"
    assert Config(0.33333333, 20).name == "0.3333-20"  # to 4 decimals, as the key
