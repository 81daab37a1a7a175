"""parse_scenario: a YAML-form mapping -> a validated, frozen Scenario."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from workbench.errors import ScenarioError
from workbench.scenario.checks import check_registries
from workbench.scenario.messages import to_scenario_error
from workbench.scenario.optimizer import OPTIMIZER_KEYS
from workbench.scenario.schema import Scenario

__all__ = ["parse_scenario"]


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
        raise to_scenario_error(e) from None
    check_registries(scenario)
    return scenario
