"""The optimizer keys of the ``algorithm`` section, validated where they are written.

In YAML the local optimizer is set by keys of the ``algorithm`` section
(``algorithm.optimizer`` names the OPTIMIZERS entry; ``algorithm.lr``, ...).
``Scenario.algorithm`` holds the whole section as written, a FrozenDict with
``name``; the section's other keys are the ALGORITHMS entry's keyword
arguments, which only its registry knows. Here:

- :class:`OptimizerConfig`: the types, bounds and defaults of the optimizer
  keys (``optimizer`` is its ``name`` field); its dump is ``make_optimizer``'s
  arguments plus ``l2``;
- :data:`OptimizerKeysInPlace`: the schema metadata of ``Scenario.algorithm``,
  which validates the optimizer keys with OptimizerConfig and keeps the section
  as written (values coerced, keys in their order, no defaults added);
- :func:`optimizer_config`: a validated section's optimizer keys, defaults
  filled in (for the registry checks and the engine);
- :func:`algorithm_parts`: what the engine builds the algorithm and the local
  optimizer from.

Elsewhere, the key list is only used: ``parse`` rejects a top-level
``optimizer`` key, ``merge`` keeps these keys when ``algorithm.name`` changes,
``checks`` looks up the optimizer and schedule entries and hints at a
misspelled key, and ``messages`` finds the bounds of a key for its message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic import Field
from pydantic_core import core_schema

from workbench.scenario.frozen import FrozenDict, FrozenModel, plain
from workbench.scenario.registries import registry

if TYPE_CHECKING:
    from workbench.scenario.schema import Scenario

__all__ = [
    "OPTIMIZER_KEYS",
    "OptimizerConfig",
    "OptimizerKeysInPlace",
    "algorithm_parts",
    "optimizer_config",
]

OPTIMIZER_KEYS = (
    *("optimizer", "lr", "momentum", "nesterov"),
    *("weight_decay", "l2", "clip", "schedule"),
)


class OptimizerConfig(FrozenModel):
    """The local optax optimizer; written as keys of the ``algorithm`` section.

    Validated from the YAML keys (``optimizer`` fills ``name``); ``name=`` is
    accepted too. ``plain(config.model_dump())`` is ``make_optimizer``'s keyword
    arguments plus ``l2``.
    """

    model_config = pydantic.ConfigDict(populate_by_name=True)

    # algorithm.optimizer, an OPTIMIZERS entry
    name: str = Field("sgd", validation_alias="optimizer")
    lr: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)  # decoupled (add_decayed_weights)
    l2: float = Field(0.0, ge=0)  # adds l2/2 ||params||^2 to the loss
    clip: float | None = Field(None, gt=0)  # global-norm clip
    schedule: FrozenDict = FrozenDict({"name": "constant"})  # SCHEDULES entry


class _OptimizerKeysInPlace:
    """``Annotated[FrozenDict, OptimizerKeysInPlace]``: a registry section whose
    optimizer keys OptimizerConfig validates, kept in place.

    Errors name the key as written (``algorithm.lr``); ``fields_model`` tells
    ``messages`` where the keys' types and bounds are.
    """

    fields_model = OptimizerConfig

    def __get_pydantic_core_schema__(self, source: Any, handler: Any):
        section = handler(source)  # FrozenDict: a mapping with string keys
        keys = handler.generate_schema(OptimizerConfig)
        return core_schema.chain_schema(
            [section, core_schema.no_info_wrap_validator_function(_in_place, keys)],
            serialization=core_schema.plain_serializer_function_ser_schema(plain),
        )


OptimizerKeysInPlace = _OptimizerKeysInPlace()


def _in_place(section: FrozenDict, validate: Any) -> FrozenDict:
    """``section`` with its optimizer keys validated (coerced) in place."""
    config = validate(_written(section))
    field = lambda key: "name" if key == "optimizer" else key  # noqa: E731
    return FrozenDict(
        {
            key: getattr(config, field(key)) if key in OPTIMIZER_KEYS else value
            for key, value in section.items()
        }
    )


def _written(section: Mapping[str, Any]) -> dict[str, Any]:
    return {key: section[key] for key in OPTIMIZER_KEYS if key in section}


def optimizer_config(section: Mapping[str, Any]) -> OptimizerConfig:
    """The optimizer keys of a validated algorithm section, defaults filled in."""
    return OptimizerConfig.model_validate(_written(section))


def algorithm_parts(scenario: Scenario) -> tuple[str, dict, dict]:
    """What the engine builds the algorithm and the local optimizer from.

    Returns:
      ``(name, kwargs, optimizer)``: the ALGORITHMS entry, its keyword arguments
      (the section's keys besides ``name`` and the optimizer keys) coerced by
      ``ALGORITHMS.validate``, and the optimizer keys as plain ``make_optimizer``
      arguments (``name``, ``lr``, ..., ``schedule``) plus ``l2`` (the loss
      term), defaults filled in.
    """
    section = scenario.algorithm
    own = {key: plain(v) for key, v in section.items() if key not in OPTIMIZER_KEYS}
    name = own.pop("name")
    kwargs = registry("algorithm").validate(name, own, "algorithm")
    return name, kwargs, plain(optimizer_config(section).model_dump())
