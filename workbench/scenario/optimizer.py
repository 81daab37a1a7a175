"""The optimizer keys: written under ``algorithm`` in YAML, held apart in Scenario.

In YAML the local optimizer is set by keys of the ``algorithm`` section
(``algorithm.optimizer`` names the OPTIMIZERS entry; ``algorithm.lr``, ...).
A :class:`~workbench.scenario.schema.Scenario` holds them as
``Scenario.optimizer``, an :class:`OptimizerConfig`, and ``Scenario.algorithm``
without them. Every conversion between the two forms is here:

- :func:`split_optimizer`: YAML form -> fields (Scenario's before-validator);
- :func:`yaml_loc`: the location of an error in the fields -> its YAML key;
- :func:`optimizer_yaml`: ``Scenario.optimizer`` -> its YAML keys (for dumps);
- :func:`algorithm_parts`: what the engine builds the algorithm and the local
  optimizer from.

Elsewhere, the key list is only used: ``parse`` rejects a top-level
``optimizer`` key, ``merge`` keeps these keys when ``algorithm.name`` changes,
``checks`` looks up the optimizer and schedule entries and hints at a
misspelled key, and ``messages`` leaves the ``optimizer`` field out of the
top-level keys it lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from workbench.scenario.frozen import FrozenDict, FrozenModel, plain
from workbench.scenario.registries import registry

if TYPE_CHECKING:
    from workbench.scenario.schema import Scenario

__all__ = [
    "OPTIMIZER_KEYS",
    "OptimizerConfig",
    "algorithm_parts",
    "optimizer_yaml",
    "split_optimizer",
    "yaml_loc",
]

OPTIMIZER_KEYS = (
    *("optimizer", "lr", "momentum", "nesterov"),
    *("weight_decay", "l2", "clip", "schedule"),
)


class OptimizerConfig(FrozenModel):
    """The local optax optimizer; written as keys of the ``algorithm`` section."""

    name: str = "sgd"  # YAML: algorithm.optimizer, an OPTIMIZERS entry
    lr: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)  # decoupled (add_decayed_weights)
    l2: float = Field(0.0, ge=0)  # adds l2/2 ||params||^2 to the loss
    clip: float | None = Field(None, gt=0)  # global-norm clip
    schedule: FrozenDict = FrozenDict({"name": "constant"})  # SCHEDULES entry


def split_optimizer(raw: Any) -> Any:
    """Moves YAML's ``algorithm.{lr, optimizer, ...}`` to ``optimizer``.

    Returns ``raw`` unchanged when it is not a mapping, has no ``algorithm``
    mapping, or already has an ``optimizer`` field.
    """
    if not isinstance(raw, Mapping) or "optimizer" in raw:
        return raw
    algorithm = raw.get("algorithm")
    if not isinstance(algorithm, Mapping):
        return raw
    algorithm = dict(algorithm)
    optimizer = {key: algorithm.pop(key) for key in OPTIMIZER_KEYS if key in algorithm}
    if "optimizer" in optimizer:
        optimizer["name"] = optimizer.pop("optimizer")
    return {**raw, "algorithm": algorithm, "optimizer": optimizer}


def yaml_loc(loc: tuple) -> tuple:
    """The YAML key of a location in Scenario's fields, for error messages.

    ``("optimizer", "name")`` is ``("algorithm", "optimizer")`` and
    ``("optimizer", "lr")`` is ``("algorithm", "lr")``; others are unchanged.
    """
    if loc[:1] != ("optimizer",):
        return loc
    rest = loc[1:]
    if rest[:1] == ("name",):
        rest = ("optimizer", *rest[1:])
    return ("algorithm", *rest)


def optimizer_yaml(optimizer: OptimizerConfig) -> dict[str, Any]:
    """The optimizer keys as written under ``algorithm``, in OPTIMIZER_KEYS order."""
    keys = plain(optimizer.model_dump())
    keys["optimizer"] = keys.pop("name")
    return {key: keys[key] for key in OPTIMIZER_KEYS}


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
    kwargs = registry("algorithm").validate(name, kwargs, "algorithm")
    return name, kwargs, plain(scenario.optimizer.model_dump())
