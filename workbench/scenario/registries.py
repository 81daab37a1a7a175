"""Which registry checks which scenario section, imported on first use.

The registries live in modules that build models, graphs and optimizers; they
are imported only when a scenario is validated, so that importing the schema
stays cheap and cannot import those modules in a cycle. ``data`` is not here:
:class:`~workbench.data.config.DataConfig` checks its own name, options and
partition.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["registry"]

# kind -> (module, attribute)
_REGISTRIES = {
    "model": ("workbench.models", "MODELS"),
    "topology": ("workbench.topology", "TOPOLOGIES"),
    "algorithm": ("workbench.algorithms", "ALGORITHMS"),
    "optimizer": ("workbench.optim", "OPTIMIZERS"),
    "schedule": ("workbench.optim", "SCHEDULES"),
}


def registry(kind: str) -> Any:
    """The registry of ``kind`` ("model", "topology", "algorithm", ...)."""
    module, attribute = _REGISTRIES[kind]
    return getattr(importlib.import_module(module), attribute)
