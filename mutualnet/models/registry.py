"""The model registry behind ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, UnknownModelError
from ..nn.model import SlimmableModel
from ..space import is_count

__all__ = ["check_count", "check_counts", "check_rows", "create_model", "list_models",
           "model_options", "register_model", "register_variant"]

_REGISTRY: dict[str, Callable[..., SlimmableModel]] = {}


def register_model(fn: Callable[..., SlimmableModel]) -> Callable[..., SlimmableModel]:
    """Register a factory under its function name (use it as a decorator)."""
    if not callable(fn) or not isinstance(getattr(fn, "__name__", None), str):
        raise TypeError(f"register_model takes a function or class that builds the model "
                        f"(it registers it under its __name__), got {fn!r}")
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The keyword options a model accepts."""
    return [p for p in inspect.signature(_factory(name)).parameters]


def _factory(name: str) -> Callable[..., SlimmableModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; available models: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **kwargs) -> SlimmableModel:
    """Build a registered slimmable model, e.g. ``create_model('mobilenet_v2', num_classes=10)``."""
    factory = _factory(name)
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(options)}"
        )
    parameters = inspect.signature(factory).parameters
    for key, value in kwargs.items():  # a flag taken by truth would read "false" as true
        if isinstance(parameters[key].default, bool) and not isinstance(value, bool):
            raise ConfigError(f"model {name!r} option {key} must be true or false, got "
                              f"{value!r}; fix model.options")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:  # a value the model refuses, e.g. dropout=2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {name!r} refuses its options ({first}); fix model.options"
                          ) from None


def check_rows(option: str, rows: Any, fields: tuple[str, ...]) -> list[tuple[int, ...]]:
    """``rows`` of a model option (e.g. MobileNetV2's ``block_setting``), each as many positive
    whole numbers as ``fields`` names; a ValueError naming the bad row otherwise."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise ValueError(f"{option} must be a non-empty list of [{', '.join(fields)}] rows, "
                         f"got {rows!r}")
    for row in rows:
        if not (isinstance(row, (list, tuple)) and len(row) == len(fields)
                and all(map(is_count, row))):
            raise ValueError(f"{option} row {row!r} needs {len(fields)} positive whole numbers "
                             f"[{', '.join(fields)}]")
    return [tuple(row) for row in rows]


def check_counts(option: str, values: Any, length: int | None = None) -> tuple[int, ...]:
    """A model option that lists positive whole numbers (``length`` of them when given,
    at least one otherwise); a ValueError naming the option otherwise."""
    ok = isinstance(values, (list, tuple)) and all(map(is_count, values)) and (
        len(values) == length if length is not None else len(values) > 0)
    if not ok:
        count = f"{length} positive whole numbers" if length is not None else \
            "a non-empty list of positive whole numbers"
        raise ValueError(f"{option} must be {count}, got {values!r}")
    return tuple(int(v) for v in values)


def check_count(option: str, value: Any) -> int:
    """A model option that is one positive whole number; a ValueError naming it otherwise."""
    if not is_count(value):
        raise ValueError(f"{option} must be a positive whole number, got {value!r}")
    return int(value)


def register_variant(name: str, cls: type[SlimmableModel], **fixed) -> None:
    """Register ``cls`` with some constructor arguments fixed, e.g. a depth."""

    def factory(**kwargs) -> SlimmableModel:
        return cls(**fixed, **kwargs)

    signature = inspect.signature(cls)
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in fixed]
    )
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = cls.__doc__
    register_model(factory)
