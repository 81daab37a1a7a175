"""One-line ScenarioError messages from pydantic validation errors.

The first pydantic error becomes ``ScenarioError(dotted.key, message)``, where
the key is the one written in YAML and the message says what was expected,
found from the schema's fields and bounds (for the optimizer keys of
``algorithm``, those of the ``fields_model`` in the field's metadata).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pydantic

from workbench.errors import ScenarioError, did_you_mean
from workbench.scenario.frozen import FrozenDict
from workbench.scenario.schema import Scenario

__all__ = ["short", "to_scenario_error"]


def to_scenario_error(error: pydantic.ValidationError) -> ScenarioError:
    """The first error of ``error``, as a one-line ScenarioError."""
    first = error.errors()[0]
    loc = tuple(x for x in first["loc"] if not (isinstance(x, str) and "[" in x))
    dotted = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in loc)
    return ScenarioError(dotted.replace(".[", "["), _message(first, loc))


def short(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _message(error: Mapping[str, Any], loc: tuple) -> str:
    kind, got = error["type"], short(error.get("input"))
    if kind == "missing":
        return f"required key missing{_expected(loc)}"
    if kind == "extra_forbidden":
        fields = list(_fields(_model_at(loc[:-1])))
        return f"unknown key{did_you_mean(loc[-1], fields)}; expected one of {fields}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {got}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        hint = did_you_mean(error["input"], choices)
        return f"expected one of {choices}, got {got}{hint}"
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return f"expected letters, digits, '_', '.', '+', '-' (a directory), got {got}"
    if kind == "value_error":  # a validator's own message says what is wrong
        return error["msg"].removeprefix("Value error, ")
    text = error["msg"].replace("Input should be", "expected")
    return f"{text}, got {got}"


def _model_at(loc: tuple) -> Any:
    """The annotation found by walking the fields ``loc`` from Scenario.

    A field whose metadata names a ``fields_model`` (``algorithm``: its optimizer
    keys) is walked into that model.
    """
    model: Any = Scenario
    for key in loc:
        field = _fields(model).get(key)
        if field is None:
            return None
        inner = [m.fields_model for m in field.metadata if hasattr(m, "fields_model")]
        model = inner[0] if inner else field.annotation
    return model


def _fields(model: Any) -> dict[str, Any]:
    is_model = isinstance(model, type) and issubclass(model, pydantic.BaseModel)
    return model.model_fields if is_model else {}


def _expected(loc: tuple) -> str:
    """``"; expected int >= 1"`` from the field's annotation and bounds."""
    field = _fields(_model_at(loc[:-1])).get(loc[-1]) if loc else None
    if field is None:
        return ""
    if field.annotation is FrozenDict:
        return "; expected a mapping {name: <entry>, **kwargs}"
    kind = getattr(field.annotation, "__name__", None) or str(field.annotation)
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bounds = [
        f"{op} {getattr(m, bound)}"
        for m in field.metadata
        for bound, op in ops.items()
        if getattr(m, bound, None) is not None
    ]
    return f"; expected {' '.join([kind, ' and '.join(bounds)]).strip()}"
