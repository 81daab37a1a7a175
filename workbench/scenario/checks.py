"""Registry checks of a validated scenario's ``{name, **kwargs}`` sections.

The schema only checks that ``model``, ``topology``, ``algorithm`` and
``algorithm.schedule`` are mappings (and the types and bounds of the optimizer
keys); here each is looked up in its registry and its keyword arguments are
checked by ``REG.validate``, and ``model.module`` must name a class that
imports. The keyword arguments of ``algorithm`` are its keys besides ``name``
and the optimizer keys.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workbench.errors import ScenarioError, did_you_mean
from workbench.scenario.frozen import plain
from workbench.scenario.messages import short
from workbench.scenario.optimizer import OPTIMIZER_KEYS, optimizer_config
from workbench.scenario.registries import registry

if TYPE_CHECKING:
    from workbench.scenario.schema import Scenario

__all__ = ["check_registries"]


def check_registries(scenario: Scenario) -> None:
    """Raises a one-line ScenarioError at the first bad registry section."""
    _check_model(scenario.model)
    _check_entry(scenario.topology, "topology", "topology")
    _check_algorithm(scenario.algorithm)
    optimizer = optimizer_config(scenario.algorithm)
    registry("optimizer").lookup(optimizer.name, "algorithm.optimizer")
    _check_entry(optimizer.schedule, "algorithm.schedule", "schedule")


def _check_entry(spec: Mapping[str, Any], path: str, kind: str) -> None:
    """``REG.validate`` of a ``{name, **kwargs}`` section."""
    reg = registry(kind)
    name = spec.get("name")
    if name is None:
        raise ScenarioError(f"{path}.name", f"missing; expected one of {sorted(reg)}")
    if not isinstance(name, str):
        raise ScenarioError(
            f"{path}.name", f"expected a {kind} name, got {short(name)}"
        )
    kwargs = {key: plain(value) for key, value in spec.items() if key != "name"}
    reg.validate(name, kwargs, path)


def _check_model(spec: Mapping[str, Any]) -> None:
    """A MODELS entry, or a user module class that must import."""
    if "module" not in spec:
        return _check_entry(spec, "model", "model")
    if "name" in spec:
        raise ScenarioError("model", "give either 'name' or 'module', not both")
    importlib.import_module("workbench.models").load_module_class(spec["module"])
    return None


def _check_algorithm(spec: Mapping[str, Any]) -> None:
    """_check_entry without the optimizer keys; an unknown key may be a
    misspelled optimizer key."""
    own = {key: value for key, value in spec.items() if key not in OPTIMIZER_KEYS}
    try:
        _check_entry(own, "algorithm", "algorithm")
    except ScenarioError as e:
        key = e.path.removeprefix("algorithm.")
        hint = did_you_mean(key, OPTIMIZER_KEYS)
        if key in spec and hint and "did you mean" not in e.message:
            raise ScenarioError(e.path, e.message.split(";")[0] + hint) from None
        raise
