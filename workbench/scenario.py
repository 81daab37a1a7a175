"""Scenario schema: YAML -> validated, frozen objects, with base: and --set.

A scenario is one YAML mapping::

    name: quickstart        # default: the file stem; names the run directory
    base: other.yaml        # optional, relative to this file; deep-merged under it
    seed: 0                 # int >= 0
    peers: 16               # int >= 1
    rounds: 300             # int >= 1
    eval_every: 25          # int >= 1, rounds per jitted chunk
    data: {name: digits, partition: {name: iid}, batch_size: 32}   # DataConfig
    model: {name: mlp, hidden: [64]}    # MODELS entry + kwargs, or {module: "p.m:Cls"}
    topology: {name: ring}              # TOPOLOGIES entry + kwargs
    algorithm:                          # ALGORITHMS entry + kwargs, plus the
      name: dsgd                        # optimizer keys (OptimizerConfig):
      lr: 0.1                           # optimizer, lr, momentum, nesterov,
      schedule: {name: constant}        # weight_decay, l2, clip, schedule
    execution: {strategy: auto, peers_per_chunk: null}
    output: {checkpoint: true, tensorboard: false, keep_checkpoints: 2}

Fixed sections are frozen pydantic models (strict types: YAML already typed
the values). Registry sections (``model``, ``topology``, ``algorithm`` without
the optimizer keys, ``algorithm.schedule``) are :class:`FrozenDict` holding the
values as written (``REG.build`` coerces them), checked by ``REG.validate`` of
their registry; ``data`` is :class:`~workbench.data.config.DataConfig`, which
checks its own ``name``/``options``/``partition``. ``Scenario.optimizer`` holds
the optimizer keys; in YAML they live under ``algorithm`` (``algorithm.optimizer``
is ``Scenario.optimizer.name``); :func:`algorithm_parts` splits them for the
engine.

Merging (``base:`` and ``--set``) is a deep merge where the later value wins,
except that naming a different entry in a registry section (``model.name``,
``topology.name``, ``data.name``, ...) replaces the entry's keyword arguments
instead of merging them: ``--set model.name=cnn`` drops mlp's ``hidden``.
``name`` is never inherited from a base file.

Every user mistake raises one-line :class:`ScenarioError` naming the dotted key.
"""

from __future__ import annotations

import enum
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import ConfigDict, Field
from pydantic_core import core_schema

from workbench.data.config import DataConfig
from workbench.errors import ScenarioError, did_you_mean

__all__ = [
    "OPTIMIZER_KEYS",
    "ExecutionConfig",
    "FrozenDict",
    "OptimizerConfig",
    "OutputConfig",
    "Scenario",
    "algorithm_parts",
    "dump_scenario",
    "load_scenario",
    "parse_scenario",
    "scenario_to_dict",
]

OPTIMIZER_KEYS = (
    *("optimizer", "lr", "momentum", "nesterov"),
    *("weight_decay", "l2", "clip", "schedule"),
)
_ENTRY_KEYS = ("name", "module")  # keys that pick a registry entry
# Registry section -> which of its keys survive a change of entry while merging.
_ENTRY_SECTIONS: dict[tuple[str, ...], Callable[[str], bool]] = {
    ("model",): lambda key: False,
    ("topology",): lambda key: False,
    ("algorithm",): lambda key: key in OPTIMIZER_KEYS,
    ("algorithm", "schedule"): lambda key: False,
    ("data",): lambda key: key != "options",
    ("data", "partition"): lambda key: False,
}
# kind -> (module, attribute); imported only when a scenario is validated.
# (DataConfig validates data.name/options/partition itself.)
_REGISTRIES = {
    "model": ("workbench.models", "MODELS"),
    "topology": ("workbench.topology", "TOPOLOGIES"),
    "algorithm": ("workbench.algorithms", "ALGORITHMS"),
    "optimizer": ("workbench.optim", "OPTIMIZERS"),
    "schedule": ("workbench.optim", "SCHEDULES"),
}


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
        return _plain(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any):
        mapping = core_schema.dict_schema(core_schema.str_schema(), strict=False)
        return core_schema.no_info_after_validator_function(
            cls,
            mapping,
            serialization=core_schema.plain_serializer_function_ser_schema(_plain),
        )


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return value if isinstance(value, FrozenDict) else FrozenDict(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Converts to YAML-native types: dict, list, str, int, float, bool, None."""
    if isinstance(value, pydantic.BaseModel):
        return _plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    return value


class _Frozen(pydantic.BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False
    )


class ExecutionConfig(_Frozen):
    """How the peer axis is executed (the engine's strategy; see DESIGN.md)."""

    strategy: Literal["auto", "vmap", "map", "unroll"] = "auto"
    peers_per_chunk: int | None = Field(None, ge=1)
    kernel: Literal["auto", "mean", "roll", "table", "segment", "dense"] = "auto"


class OutputConfig(_Frozen):
    """What the run directory receives besides metrics."""

    checkpoint: bool = True
    tensorboard: bool = False
    keep_checkpoints: int = Field(2, ge=1)


class OptimizerConfig(_Frozen):
    """The local optax optimizer; written as keys of the ``algorithm`` section."""

    name: str = "sgd"  # YAML: algorithm.optimizer, an OPTIMIZERS entry
    lr: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)  # decoupled (add_decayed_weights)
    l2: float = Field(0.0, ge=0)  # adds l2/2 ||params||^2 to the loss
    clip: float | None = Field(None, gt=0)  # global-norm clip
    schedule: FrozenDict = FrozenDict({"name": "constant"})  # SCHEDULES entry


class Scenario(_Frozen):
    """A validated scenario. Registry sections are FrozenDicts ``{name, **kw}``."""

    name: str = Field("scenario", pattern=r"^\w[\w.+-]*$")
    seed: int = Field(0, ge=0)
    peers: int = Field(ge=1)
    rounds: int = Field(ge=1)
    eval_every: int = Field(25, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: FrozenDict
    topology: FrozenDict
    algorithm: FrozenDict  # without the optimizer keys
    optimizer: OptimizerConfig  # from the optimizer keys of YAML's algorithm
    execution: ExecutionConfig = ExecutionConfig()
    output: OutputConfig = OutputConfig()

    @pydantic.model_validator(mode="before")
    @classmethod
    def _split_optimizer(cls, raw: Any) -> Any:
        """Moves YAML's ``algorithm.{lr, optimizer, ...}`` to ``optimizer``."""
        if not isinstance(raw, Mapping) or "optimizer" in raw:
            return raw
        algorithm = raw.get("algorithm")
        if not isinstance(algorithm, Mapping):
            return raw
        algorithm = dict(algorithm)
        optimizer = {
            key: algorithm.pop(key) for key in OPTIMIZER_KEYS if key in algorithm
        }
        if "optimizer" in optimizer:
            optimizer["name"] = optimizer.pop("optimizer")
        return {**raw, "algorithm": algorithm, "optimizer": optimizer}


# ---------------------------------------------------------------- validation


def parse_scenario(raw: Any, source: str = "<dict>") -> Scenario:
    """Validates a scenario mapping (YAML form) and its registry sections.

    Args:
      raw: the mapping, as YAML would load it (optimizer keys under algorithm).
      source: where it came from, for messages.

    Raises:
      ScenarioError: one line naming the first bad key.
    """
    if not isinstance(raw, Mapping):
        got = type(raw).__name__
        raise ScenarioError("", f"{source}: expected a mapping of keys, got {got}")
    if "optimizer" in raw:
        keys = ", ".join(OPTIMIZER_KEYS)
        raise ScenarioError("optimizer", f"unknown key; put {keys} under algorithm")
    if "base" in raw:
        raise ScenarioError("base", "only allowed in a scenario file (load_scenario)")
    try:
        scenario = Scenario.model_validate(raw)
    except pydantic.ValidationError as e:
        raise _to_scenario_error(e) from None
    _check_registries(scenario)
    return scenario


def _to_scenario_error(error: pydantic.ValidationError) -> ScenarioError:
    first = error.errors()[0]
    loc = tuple(x for x in first["loc"] if not (isinstance(x, str) and "[" in x))
    path = loc
    if loc[:1] == ("optimizer",):  # YAML keeps the optimizer keys in algorithm
        rest = loc[1:]
        if rest[:1] == ("name",):
            rest = ("optimizer", *rest[1:])
        path = ("algorithm", *rest)
    dotted = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in path)
    return ScenarioError(dotted.replace(".[", "["), _message(first, loc))


def _message(error: Mapping[str, Any], loc: tuple) -> str:
    kind, got = error["type"], _short(error.get("input"))
    if kind == "missing":
        return f"required key missing{_expected(loc)}"
    if kind == "extra_forbidden":
        fields = [f for f in _fields(_model_at(loc[:-1])) if f != "optimizer"]
        return f"unknown key{did_you_mean(loc[-1], fields)}; expected one of {fields}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {got}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        hint = did_you_mean(error["input"], choices)
        return f"expected one of {choices}, got {got}{hint}"
    if kind == "string_pattern_mismatch" and loc == ("name",):
        return f"expected letters, digits, '_', '.', '+', '-' (a directory), got {got}"
    text = error["msg"].replace("Input should be", "expected")
    return f"{text}, got {got}"


def _model_at(loc: tuple) -> Any:
    """The annotation found by walking the fields ``loc`` from Scenario."""
    model: Any = Scenario
    for key in loc:
        field = _fields(model).get(key)
        if field is None:
            return None
        model = field.annotation
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


def _short(value: Any, width: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _registry(kind: str):
    module, attribute = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attribute)


def _check_registries(scenario: Scenario) -> None:
    _check_model(scenario.model)
    _check_entry(scenario.topology, "topology", "topology")
    _check_algorithm(scenario.algorithm)
    _registry("optimizer").lookup(scenario.optimizer.name, "algorithm.optimizer")
    _check_entry(scenario.optimizer.schedule, "algorithm.schedule", "schedule")


def _check_entry(spec: Mapping[str, Any], path: str, kind: str) -> None:
    """``REG.validate`` of a ``{name, **kwargs}`` section."""
    registry = _registry(kind)
    name = spec.get("name")
    if name is None:
        raise ScenarioError(
            f"{path}.name", f"missing; expected one of {sorted(registry)}"
        )
    if not isinstance(name, str):
        raise ScenarioError(
            f"{path}.name", f"expected a {kind} name, got {_short(name)}"
        )
    kwargs = {key: _plain(value) for key, value in spec.items() if key != "name"}
    registry.validate(name, kwargs, path)


def _check_model(spec: Mapping[str, Any]) -> None:
    """A MODELS entry, or a user module class that must import."""
    if "module" not in spec:
        return _check_entry(spec, "model", "model")
    if "name" in spec:
        raise ScenarioError("model", "give either 'name' or 'module', not both")
    importlib.import_module("workbench.models").load_module_class(spec["module"])
    return None


def _check_algorithm(spec: Mapping[str, Any]) -> None:
    """Like _check_entry, but an unknown key may be a misspelled optimizer key."""
    try:
        _check_entry(spec, "algorithm", "algorithm")
    except ScenarioError as e:
        key = e.path.removeprefix("algorithm.")
        hint = did_you_mean(key, OPTIMIZER_KEYS)
        if key in spec and hint and "did you mean" not in e.message:
            raise ScenarioError(e.path, e.message.split(";")[0] + hint) from None
        raise


# ------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # SafeLoader rejects unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_yaml(text: str, path: str, source: str | None = None) -> Any:
    """``yaml.load`` with _Loader; errors name ``source:line:column`` or ``path``.

    Args:
      text: the YAML text.
      path: dotted key the text is the value of ("" for a whole file).
      source: the file name, when the text is a file.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        problem = " ".join(str(problem).split())[:120]
        if source is None:
            raise ScenarioError(path, f"invalid YAML {text!r}: {problem}") from None
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ScenarioError(path, f"{where}: invalid YAML: {problem}") from None


def _read(path: Path, chain: tuple[Path, ...]) -> dict:
    """Reads one file and, recursively, its ``base:`` chain (bases merged under)."""
    if path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise ScenarioError("base", f"cycle of base files: {cycle}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(
            "", f"cannot read scenario file {path}: {e.strerror}"
        ) from None
    raw = _parse_yaml(text, "", str(path))
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ScenarioError("", f"{path}: expected a mapping of keys, got {got}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ScenarioError(
            "base", f"expected a file path in {path}, got {_short(base)}"
        )
    base_path = path.parent / base
    if not base_path.is_file():
        raise ScenarioError("base", f"file not found: {base_path} (base of {path})")
    parent = _read(base_path, (*chain, path.resolve()))
    parent.pop("name", None)
    return _merge(parent, raw)


def _merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """Deep merge, ``over`` wins; a new registry entry drops the old kwargs."""
    if not (isinstance(base, Mapping) and isinstance(over, Mapping)):
        return over
    keep = _ENTRY_SECTIONS.get(path)
    if keep and any(k in over and over[k] != base.get(k) for k in _ENTRY_KEYS):
        base = {key: value for key, value in base.items() if keep(key)}
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
    return merged


def _apply_override(raw: dict, item: str) -> dict:
    """Applies one ``dotted.key=value`` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ScenarioError("", f"bad --set {item!r}; expected dotted.key=value")
    if keys[0] == "base":
        raise ScenarioError("base", "cannot be set with --set; use it in the file")
    node: Any = raw
    for depth, name in enumerate(keys[:-1]):
        node = node.get(name)
        if node is None:
            break
        if not isinstance(node, Mapping):
            where = ".".join(keys[: depth + 1])
            got = f"{_short(node)} ({type(node).__name__})"
            raise ScenarioError(where, f"is {got}, not a mapping; cannot set {key}")
    value = _parse_yaml(text, key)
    for name in reversed(keys):
        value = {name: value}
    return _merge(raw, value)


def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Reads a scenario file, resolves ``base:``, applies ``--set`` overrides.

    Args:
      path: the YAML file.
      overrides: ``"dotted.key=value"`` strings, applied in order; values are
        YAML (``0.05`` float, ``[64, 64]`` list, ``true`` bool, ``ring`` str).

    Raises:
      ScenarioError: one line naming the file or the first bad key.
    """
    path = Path(path)
    raw = _read(path, ())
    raw.setdefault("name", path.stem)
    for item in overrides:
        raw = _apply_override(raw, item)
    return parse_scenario(raw, str(path))


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The YAML form: plain types, optimizer keys back under ``algorithm``."""
    out = _plain(scenario.model_dump(exclude={"optimizer"}))
    optimizer = _plain(scenario.optimizer.model_dump())
    optimizer["optimizer"] = optimizer.pop("name")
    out["algorithm"].update({key: optimizer[key] for key in OPTIMIZER_KEYS})
    return out


def algorithm_parts(scenario: Scenario) -> tuple[str, dict, dict]:
    """What the engine builds the algorithm and the local optimizer from.

    Returns:
      ``(name, kwargs, optimizer)``: the ALGORITHMS entry, its keyword arguments
      coerced by ``ALGORITHMS.validate``, and the optimizer keys as plain
      ``make_optimizer`` arguments (``name``, ``lr``, ..., ``schedule``) plus
      ``l2`` (the loss term).
    """
    kwargs = scenario.algorithm.to_dict()
    name = kwargs.pop("name")
    kwargs = _registry("algorithm").validate(name, kwargs, "algorithm")
    return name, kwargs, _plain(scenario.optimizer.model_dump())


def dump_scenario(scenario: Scenario, comment: str | None = None) -> str:
    """The fully resolved scenario as YAML; ``load_scenario`` reads it back equal.

    Args:
      scenario: the scenario.
      comment: optional header (versions, device, ...), written as ``#`` lines.
    """
    text = yaml.safe_dump(
        scenario_to_dict(scenario), sort_keys=False, default_flow_style=None
    )
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    return text
