"""mutualnet: one adaptive ConvNet for many compute budgets (MutualNet, Yang et al.)."""

__version__ = "0.1.0"

from .adaptive import AdaptiveModel
from .errors import ConfigError, MutualNetError, UnknownModelError
from .export import load_exported
from .macs import count_macs
from .models import create_model, list_models, model_options, register_model
from .nn import SlimmableModel, make_divisible, to_static
from .space import Config

__all__ = [
    "AdaptiveModel",
    "Config",
    "ConfigError",
    "MutualNetError",
    "SlimmableModel",
    "UnknownModelError",
    "count_macs",
    "create_model",
    "list_models",
    "load_exported",
    "make_divisible",
    "model_options",
    "register_model",
    "to_static",
]
