"""What the registries hold: every entry with its keyword arguments.

``catalog(["partitions"])`` returns text such as::

    partitions  (data.partition: {name, kwargs})
      dirichlet(alpha: float = 0.5, min_size: int = 1)
      iid
      ...

The entries, their arguments, types and defaults are read from the registered
builders' signatures, so the listing cannot drift from the code. Arguments the
engine supplies (a registry's ``context``) are left out; an argument without a
default is required.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Iterable
from typing import Any, NamedTuple

from workbench.errors import WorkbenchError, did_you_mean
from workbench.registry import Registry


class _Kind(NamedTuple):
    module: str  # imported on demand: it registers the entries
    attribute: str  # the Registry in that module
    where: str  # the scenario key that names an entry
    skip: tuple[str, ...] = ()  # builder arguments passed positionally by the code


_KINDS: dict[str, _Kind] = {
    "algorithms": _Kind(
        "workbench.algorithms", "ALGORITHMS", "algorithm: {name, kwargs}"
    ),
    "topologies": _Kind("workbench.topology", "TOPOLOGIES", "topology: {name, kwargs}"),
    "models": _Kind(
        "workbench.models", "MODELS", "model: {name, kwargs} or {module: pkg.mod:Class}"
    ),
    "datasets": _Kind("workbench.data", "DATASETS", "data: {name, options: {kwargs}}"),
    "partitions": _Kind(
        "workbench.data", "PARTITIONERS", "data.partition: {name, kwargs}"
    ),
    # Weight rules are called as rule(G, A) with the graph and its adjacency.
    "weights": _Kind(
        "workbench.topology", "WEIGHTS", "topology.weights: name", ("G", "A")
    ),
    "compressors": _Kind(
        "workbench.compression", "COMPRESSORS", "algorithm.compressor: {name, kwargs}"
    ),
    "metrics": _Kind("workbench.evaluation", "METRICS", "evaluation.metrics: [name]"),
    "optimizers": _Kind("workbench.optim", "OPTIMIZERS", "algorithm.optimizer: name"),
    "schedules": _Kind(
        "workbench.optim", "SCHEDULES", "algorithm.schedule: {name, kwargs}"
    ),
    "aggregators": _Kind(
        "workbench.algorithms", "AGGREGATORS", "algorithm.aggregator: {name, kwargs}"
    ),
    "server_optimizers": _Kind(
        "workbench.algorithms",
        "SERVER_OPTIMIZERS",
        "algorithm.server_optimizer: {name, kwargs}",
    ),
    "speeds": _Kind(
        "workbench.clock.speeds", "SPEEDS", "clock.compute: {name, kwargs}"
    ),
    "attacks": _Kind(
        "workbench.privacy.run", "ATTACKS", "privacy.attacks: [name or {name, kwargs}]"
    ),
}
KINDS: tuple[str, ...] = tuple(_KINDS)


class Argument(NamedTuple):
    """One scenario keyword argument of a registry entry."""

    name: str
    type: str  # "" when the builder does not annotate it
    default: Any  # inspect.Parameter.empty when required

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def __str__(self) -> str:
        text = f"{self.name}: {self.type}" if self.type else self.name
        if self.required:
            return text
        return f"{text} = {self.default!r}" if self.type else f"{text}={self.default!r}"


def registry(kind: str) -> Registry:
    """The registry behind ``kind`` (a name from :data:`KINDS`)."""
    spec = _KINDS[_resolve(kind)]
    return getattr(importlib.import_module(spec.module), spec.attribute)


def arguments(kind: str, name: str) -> list[Argument]:
    """The scenario keyword arguments of entry ``name`` of ``kind``, in order."""
    kind = _resolve(kind)
    reg = registry(kind)
    skip = {*reg.context, *_KINDS[kind].skip}
    params = inspect.signature(reg[name], eval_str=True).parameters.values()
    return [
        Argument(p.name, _type_name(p.annotation), p.default)
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    ]


def catalog(kinds: Iterable[str] | None = None) -> str:
    """Text listing every entry of ``kinds`` (default: all), grouped by kind.

    Raises:
      WorkbenchError: a kind that is not one of :data:`KINDS`.
    """
    chosen = [_resolve(k) for k in kinds or ()] or list(KINDS)
    blocks = []
    for kind in dict.fromkeys(chosen):
        lines = [f"{kind}  ({_KINDS[kind].where})"]
        for name in sorted(registry(kind)):
            args = ", ".join(str(a) for a in arguments(kind, name))
            lines.append(f"  {name}({args})" if args else f"  {name}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _resolve(kind: str) -> str:
    """``kind`` as a key of _KINDS; the registry's singular name works too."""
    if kind in _KINDS:
        return kind
    singular = {k.removesuffix("s"): k for k in _KINDS} | {"topology": "topologies"}
    if kind in singular:
        return singular[kind]
    hint = did_you_mean(kind, KINDS)
    raise WorkbenchError(f"unknown kind '{kind}'{hint}; expected one of {list(KINDS)}")


def _type_name(annotation: Any) -> str:
    """A short, readable name: ``int``, ``'atc'|'cta'``, ``int>0``, ``str | None``."""
    if annotation is inspect.Parameter.empty:
        return ""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(repr(a) for a in args)
    if origin is typing.Annotated:
        bounds = [
            f"{op}{getattr(m, attr)}"
            for m in annotation.__metadata__
            for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
            if getattr(m, attr, None) is not None
        ]
        return _type_name(args[0]) + "".join(bounds)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is typing.Any:
        return "Any"
    return getattr(annotation, "__name__", str(annotation))


__all__ = ["KINDS", "Argument", "arguments", "catalog", "registry"]
