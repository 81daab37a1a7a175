"""Registries of named builders whose keyword arguments come from a scenario.

A registry maps a name to a builder function. Scenario sections that name an
entry look like ``{name: ring, d: 4}``: every key besides ``name`` is a keyword
argument of the builder, validated against its signature and annotations with
pydantic, so ``topology.d: four`` fails with one line naming ``topology.d``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pydantic

from workbench.errors import ScenarioError, did_you_mean, one_of


class Registry(Mapping[str, Callable[..., Any]]):
    """A named mapping ``name -> builder`` with validated keyword arguments.

    Args:
      kind: what the entries are, for messages ("topology", "model", ...).
      context: names of builder arguments supplied by the engine, not by the
        scenario (e.g. ``n`` for topologies, ``num_classes`` for models).
    """

    def __init__(self, kind: str, context: tuple[str, ...] = ()):
        self.kind = kind
        self.context = context
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def add(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = fn
            return fn

        return add

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, name: str, path: str) -> Callable[..., Any]:
        """Returns the entry or raises a one-line ScenarioError at ``path``."""
        if name not in self._entries:
            raise ScenarioError(path, f"{self.kind} {one_of(name, self._entries)}")
        return self._entries[name]

    def validate(self, name: str, kwargs: Mapping[str, Any], path: str) -> dict:
        """Checks ``kwargs`` against the builder's signature; returns coerced ones.

        Args:
          name: entry name.
          kwargs: scenario-supplied keyword arguments (no ``name``).
          path: dotted path of the section, for messages (e.g. ``"topology"``).
        """
        fn = self.lookup(name, f"{path}.name")
        params = {
            p.name: p
            for p in inspect.signature(fn, eval_str=True).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.name not in self.context
        }
        out = {}
        for key, value in kwargs.items():
            if key not in params:
                hint = did_you_mean(key, params) or f"; '{name}' takes {sorted(params)}"
                raise ScenarioError(
                    f"{path}.{key}", f"unknown key for {self.kind} '{name}'{hint}"
                )
            out[key] = _coerce(params[key], value, f"{path}.{key}")
        missing = [
            p
            for p, v in params.items()
            if v.default is inspect.Parameter.empty and p not in out
        ]
        if missing:
            raise ScenarioError(
                f"{path}.{missing[0]}", f"required by {self.kind} '{name}', missing"
            )
        return out

    def build(self, spec: Mapping[str, Any], path: str, **context: Any) -> Any:
        """Validates ``spec`` (``{name: ..., **kwargs}``) and calls the builder."""
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ScenarioError(f"{path}.name", f"missing; expected a {self.kind} name")
        kwargs = self.validate(name, spec, path)
        fn = self._entries[name]
        return fn(**_accepted(fn, context), **kwargs)


def _accepted(fn: Callable, context: Mapping[str, Any]) -> dict:
    """The context arguments ``fn`` declares (a builder may ignore optional ones)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(context)
    return {k: v for k, v in context.items() if k in params}


def _coerce(param: inspect.Parameter, value: Any, path: str) -> Any:
    if param.annotation is inspect.Parameter.empty:
        return value
    try:
        return pydantic.TypeAdapter(param.annotation).validate_python(value)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        raise ScenarioError(path, f"{err['msg']}, got {value!r}") from None
