"""FedAvg / local SGD with a server (McMahan et al. 2017; FedOpt-style server lr).

Each round the sampled clients run tau local steps from the global model and
send their models; the server takes the weighted mean (uniform or by data size:
the engine supplies the weights) and moves the global model towards it with
``server_lr`` (1.0 = plain FedAvg). Clients are stateless: their local optimizer
state restarts every round, as in FedJAX and Flower.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import Algorithm, LossFn, PyTree, local_steps


class FedAvgState(NamedTuple):
    params: PyTree  # the global model as this client last received it
    loss: jax.Array  # () mean training loss of the last local steps


def fedavg(
    loss_fn: LossFn, local_opt: optax.GradientTransformation, server_lr: float = 1.0
) -> Algorithm:
    """FedAvg; the client fraction and weighting live in the server exchange."""

    def init(params, key):
        del key
        return FedAvgState(params, jnp.zeros(()))

    def local(state, batches, key):
        del key
        params, _, loss = local_steps(
            loss_fn, local_opt, state.params, local_opt.init(state.params), batches
        )
        return state._replace(loss=loss), params

    def combine(state, inbox):
        params = jax.tree.map(
            lambda g, avg: g + server_lr * (avg - g), state.params, inbox
        )
        return state._replace(params=params)

    return Algorithm(init, local, combine, exchange="server")
