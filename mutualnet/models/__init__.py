"""The model zoo: one file per family, all behind ``create_model``."""

from . import mobilenet_v1, mobilenet_v2, resnet, slowfast, wide_resnet, x3d  # noqa: F401,E501  (registration)
from .registry import create_model, list_models, model_options, register_model, register_variant

__all__ = ["create_model", "list_models", "model_options", "register_model", "register_variant"]
