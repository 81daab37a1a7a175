"""FedAvg / local SGD with a server (McMahan et al. 2017; FedOpt-style server lr).

Each round the sampled clients run tau local steps from the global model and
send their models; the server takes the weighted mean (uniform or by data size,
the default) and moves the global model towards it with
``server_lr`` (1.0 = plain FedAvg). Clients are stateless: their local optimizer
state restarts every round, as in FedJAX and Flower.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
)
from workbench.algorithms.registry import ALGORITHMS


class FedAvgState(NamedTuple):
    params: PyTree  # the global model as this client last received it
    loss: jax.Array  # () mean training loss of the last local steps


def fedavg(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    server_lr: float = 1.0,
    steps: int = 1,
    client_fraction: float = 1.0,
    weighting: Literal["uniform", "data_size"] = "data_size",
) -> Algorithm:
    """FedAvg: ``steps`` local steps on a ``client_fraction`` of the clients, whose
    models the server averages with ``weighting`` (data size: n_i / sum n)."""

    def init(params, key):
        del key
        return FedAvgState(params, jnp.zeros(()))

    def local(state, batches, topo, key):
        del topo, key
        params, _, loss = local_steps(
            loss_fn, local_opt, state.params, local_opt.init(state.params), batches
        )
        return state._replace(loss=loss), params

    def combine(state, inbox, topo):
        del topo
        params = jax.tree.map(
            lambda g, avg: g + server_lr * (avg - g), state.params, inbox
        )
        return state._replace(params=params)

    rounds = RoundStructure(steps, client_fraction, weighting)
    return Algorithm(init, local, combine, "server", rounds)


@ALGORITHMS.register("fedavg")
def _fedavg(
    loss_fn,
    optimizer,
    *,
    local_steps: int = 1,
    server_lr: float = 1.0,
    client_fraction: float = 1.0,
    weighting: Literal["uniform", "data_size"] = "data_size",
) -> Algorithm:
    return fedavg(
        loss_fn,
        optimizer(local_steps),
        server_lr=server_lr,
        steps=local_steps,
        client_fraction=client_fraction,
        weighting=weighting,
    )
