"""Algorithms: one module per family, each registering its builders in ALGORITHMS.

Importing the package imports every family module (so a new family is one new
file); a scenario's ``algorithm`` section names an entry.
"""

from __future__ import annotations

import importlib
import pkgutil

from workbench.algorithms.base import Algorithm, RoundStructure, local_steps
from workbench.algorithms.dsgd import dsgd
from workbench.algorithms.fedavg import fedavg
from workbench.algorithms.registry import AGGREGATORS, ALGORITHMS, SERVER_OPTIMIZERS

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AGGREGATORS",
    "ALGORITHMS",
    "SERVER_OPTIMIZERS",
    "Algorithm",
    "RoundStructure",
    "dsgd",
    "fedavg",
    "local_steps",
]
