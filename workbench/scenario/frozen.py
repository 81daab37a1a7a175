"""Immutable building blocks of a scenario: FrozenDict, FrozenModel, ``plain``.

A registry section (``model``, ``topology``, ``algorithm``, a schedule) is kept
as written in YAML in a :class:`FrozenDict`; fixed sections are
:class:`FrozenModel` subclasses. Both keep a scenario hashable and immutable;
``plain`` turns any part of a scenario back into YAML-native types.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic
from pydantic_core import core_schema

__all__ = ["FrozenDict", "FrozenModel", "plain"]


class FrozenModel(pydantic.BaseModel):
    """A frozen model with strict types (YAML already typed the values)."""

    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False
    )


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping; nested dicts and lists are frozen too.

    Holds a registry section such as ``{name: mlp, hidden: (64,)}``: nested dicts
    become FrozenDicts and lists become tuples. ``dict(spec)`` is a plain copy;
    ``REG.build(spec, path, ...)`` accepts it as is.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | Iterable = ()):
        self._items = {key: _freeze(value) for key, value in dict(items).items()}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable deep copy (dicts and lists), as YAML would load it."""
        return plain(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any):
        mapping = core_schema.dict_schema(core_schema.str_schema(), strict=False)
        return core_schema.no_info_after_validator_function(
            cls,
            mapping,
            serialization=core_schema.plain_serializer_function_ser_schema(plain),
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, FrozenDict) else FrozenDict(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """Converts to YAML-native types: dict, list, str, int, float, bool, None."""
    if isinstance(value, pydantic.BaseModel):
        return plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value
