"""Building a model from a scenario section, and initializing its parameters.

A ``model:`` section either names a registry entry, ``{name: mlp, hidden:
[128]}``, or points at a user's flax module class by import path, ``{module:
"my_pkg.nets:Net", width: 32}``; the other keys are the class's fields.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pydantic

from workbench.errors import ScenarioError, did_you_mean
from workbench.models.base import MODELS

_PATH = "model.module"
# Fields the engine fills from the dataset when the class declares them.
_CONTEXT_FIELDS = ("num_classes", "input_shape")


def build_model(
    spec: Mapping[str, Any], num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """Builds the flax module a scenario's ``model`` section describes.

    Args:
      spec: ``{"name": entry, **options}`` or ``{"module": "pkg.mod:Class",
        **fields}``.
      num_classes: number of classes of the dataset.
      input_shape: shape of one example, e.g. ``(28, 28, 1)``.

    Raises:
      ScenarioError: one line naming the bad key under ``model``.
    """
    spec = dict(spec)
    input_shape = tuple(input_shape)
    if "module" in spec:
        if "name" in spec:
            raise ScenarioError("model", "give either 'name' or 'module', not both")
        cls = load_module_class(spec.pop("module"))
        return _instantiate(cls, spec, num_classes, input_shape)
    if "name" not in spec:
        raise ScenarioError(
            "model.name",
            f"missing; expected one of {sorted(MODELS)} "
            "or 'module: package.module:Class'",
        )
    return MODELS.build(spec, "model", num_classes=num_classes, input_shape=input_shape)


def load_module_class(path: Any) -> type[nn.Module]:
    """Imports ``"package.module:Class"`` (no eval) and checks it is a Module.

    Raises:
      ScenarioError: at ``model.module``, one line.
    """
    mod_name, _, attr = str(path).partition(":")
    if not isinstance(path, str) or not mod_name or not attr:
        raise ScenarioError(_PATH, f"expected 'package.module:Class', got {path!r}")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # any failure of user code at import
        missing = (
            isinstance(e, ModuleNotFoundError) and e.name == mod_name.split(".")[0]
        )
        hint = " (is its folder on PYTHONPATH?)" if missing else ""
        raise ScenarioError(
            _PATH, f"cannot import '{mod_name}': {_one_line(e)}{hint}"
        ) from None
    try:
        cls = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        public = [n for n in vars(module) if not n.startswith("_")]
        hint = did_you_mean(attr, public)
        raise ScenarioError(
            _PATH, f"module '{mod_name}' has no attribute '{attr}'{hint}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ScenarioError(
            _PATH, f"'{path}' is {what}, expected a flax.linen.Module subclass"
        )
    return cls


def _instantiate(
    cls: type[nn.Module], kwargs: dict, num_classes: int, input_shape: tuple
) -> nn.Module:
    """Checks ``kwargs`` against the dataclass fields of ``cls``; builds it."""
    fields = {
        f.name: f
        for f in dataclasses.fields(cls)
        if f.init and f.name not in ("parent", "name")
    }
    context = dict(zip(_CONTEXT_FIELDS, (num_classes, input_shape), strict=True))
    for key, value in kwargs.items():
        if key not in fields:
            name = cls.__name__
            hint = did_you_mean(key, fields) or f"; {name} takes {sorted(fields)}"
            raise ScenarioError(f"model.{key}", f"unknown field of {name}{hint}")
        if key in context and value != context[key]:
            raise ScenarioError(
                f"model.{key}", f"the dataset gives {context[key]!r}, got {value!r}"
            )
    kwargs = {k: _coerce(cls, k, v) for k, v in kwargs.items()}
    kwargs.update({k: v for k, v in context.items() if k in fields})
    missing = [
        k
        for k, f in fields.items()
        if k not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ScenarioError(f"model.{missing[0]}", f"required by {cls.__name__}")
    try:
        return cls(**kwargs)
    except Exception as e:  # user code (__post_init__)
        msg = f"{cls.__name__}(...) failed: {_one_line(e)}"
        raise ScenarioError(_PATH, msg) from None


def _coerce(cls: type, key: str, value: Any) -> Any:
    """Validates ``value`` against the field's annotation when pydantic can."""
    try:
        hint = typing.get_type_hints(cls)[key]
        adapter = pydantic.TypeAdapter(hint)
    except Exception:  # unresolvable or unsupported annotation
        return value
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ScenarioError(f"model.{key}", f"{msg}, got {value!r}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@functools.partial(jax.jit, static_argnums=0)
def _init(model: nn.Module, key, x):
    """``model.init``, compiled once per model (modules compare by their fields):
    a sweep's points of one model skip it."""
    return model.init(key, x)


def init_params(model: nn.Module, input_shape: tuple[int, ...], key: jax.Array):
    """Initializes ``model`` on a zero batch of shape ``(1, *input_shape)``.

    Returns:
      The ``params`` collection (a pytree of float32 arrays).

    Raises:
      ScenarioError: at ``model`` if the module keeps other state (BatchNorm
        statistics...), which per-peer averaging cannot handle.
    """
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = _init(model, key, x)
    extra = sorted(set(variables) - {"params"})
    if extra:
        raise ScenarioError(
            "model",
            f"{type(model).__name__} keeps state {extra}; only stateless models "
            "(params only) are supported, e.g. GroupNorm instead of BatchNorm",
        )
    return variables.get("params", {})


def num_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
