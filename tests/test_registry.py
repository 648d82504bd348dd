import pytest

from mutualnet import ConfigError, UnknownModelError, create_model, list_models, register_model


def test_unknown_model_names_the_available_ones():
    with pytest.raises(UnknownModelError, match="available models: .*mobilenet_v1"):
        create_model("mobilenet_v3")


def test_unknown_option_is_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError, match="has no option 'stem_strid'.*small_input"):
        create_model("resnet18", stem_strid=1)


@pytest.mark.parametrize("width_range", [(0.0, 1.0), (1.0, 0.5), ("a", 1)])
def test_invalid_width_range_is_rejected(width_range):
    with pytest.raises(ConfigError, match="width_range"):
        create_model("mobilenet_v1", width_range=width_range)


@pytest.mark.parametrize("bad", [5, "mobilenet_v2", None])
def test_register_model_refuses_what_is_not_a_factory(bad):
    before = list_models()
    with pytest.raises(TypeError, match="register_model takes a function or class"):
        register_model(bad)
    assert list_models() == before


@pytest.mark.parametrize("value", ["false", "abc", 2, [1], None])
def test_a_flag_option_takes_only_true_or_false(value):
    import re

    with pytest.raises(ConfigError, match=re.escape(f"model 'mobilenet_v1' option small_input "
                                                    f"must be true or false, got {value!r}")):
        create_model("mobilenet_v1", small_input=value)
    create_model("mobilenet_v1", small_input=False)
