"""Algorithm registry: a scenario's ``algorithm`` section names an entry.

Builders take the engine-supplied ``loss_fn`` and ``local_opt`` plus their own
static keyword arguments from the scenario; ``local_steps``, ``client_fraction``
and ``weighting`` are round-structure options read by the engine.
"""

from __future__ import annotations

from typing import Literal

from workbench.algorithms.base import Algorithm, local_steps
from workbench.algorithms.dsgd import dsgd
from workbench.algorithms.fedavg import fedavg
from workbench.registry import Registry

ALGORITHMS = Registry("algorithm", context=("loss_fn", "local_opt"))


@ALGORITHMS.register("dsgd")
def _dsgd(
    loss_fn, local_opt, *, order: Literal["atc", "cta"] = "atc", local_steps: int = 1
) -> Algorithm:
    del local_steps  # read by the engine (round structure)
    return dsgd(loss_fn, local_opt, order=order)


@ALGORITHMS.register("fedavg")
def _fedavg(
    loss_fn,
    local_opt,
    *,
    local_steps: int = 1,
    server_lr: float = 1.0,
    client_fraction: float = 1.0,
    weighting: Literal["uniform", "data_size"] = "data_size",
) -> Algorithm:
    del local_steps, client_fraction, weighting  # read by the engine
    return fedavg(loss_fn, local_opt, server_lr=server_lr)


__all__ = ["ALGORITHMS", "Algorithm", "dsgd", "fedavg", "local_steps"]
