"""mutualnet: one adaptive ConvNet for many compute budgets (MutualNet, Yang et al.)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: the public names, by the module that defines them; imported on first use, so that
#: ``import mutualnet`` (and the command line's ``--help``) does not wait for torch
_EXPORTS = {
    "AdaptiveModel": "adaptive",
    "Config": "space",
    "ConfigError": "errors",
    "MutualNetError": "errors",
    "SlimmableModel": "nn",
    "UnknownModelError": "errors",
    "count_macs": "macs",
    "create_model": "models",
    "list_models": "models",
    "load_exported": "export",
    "make_divisible": "nn",
    "model_options": "models",
    "register_model": "models",
    "to_static": "nn",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a submodule, as `mutualnet.nn` after a plain `import mutualnet`
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
