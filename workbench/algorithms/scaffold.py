"""SCAFFOLD (Karimireddy et al. 2020): control variates remove client drift.

Every client keeps a control variate c_i across rounds (client state, unlike
FedAvg's stateless clients); every peer holds a copy of the server's model x
and control c. A sampled client runs K local steps from x on the corrected
gradient ``g(y) - c_i + c``, then (the paper's option II)

    c_i+ = c_i - c + (x - y) / (sum of the K step sizes)

and uploads (y, c_i+ - c_i). The server averages both over the m sampled
clients: x <- x + eta_g (mean y - x), c <- c + (m / n) mean(c_i+ - c_i). The
correction assumes plain SGD local steps (option II divides by the step
sizes), so other local optimizers are refused.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    cohort_size,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError


class ScaffoldState(NamedTuple):
    params: PyTree  # x: the server's model as this client last received it
    control: PyTree  # c: the server's control variate (the same on every peer)
    own: PyTree  # c_i: this client's control variate (kept across rounds)
    loss: jax.Array  # () mean training loss of the last local steps


class Upload(NamedTuple):
    model: PyTree  # y: the client's model after its local steps
    control: PyTree  # c_i+ - c_i


def scaffold(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    lr: optax.Schedule,
    steps: int = 1,
    client_fraction: float = 1.0,
    num_clients: int = 1,
    server_lr: float = 1.0,
) -> Algorithm:
    """SCAFFOLD with ``steps`` local SGD steps of sizes ``lr(0..steps-1)``."""
    lr_sum = float(sum(float(lr(k)) for k in range(steps)))
    share = 1.0  # m / n
    if client_fraction < 1:
        share = cohort_size(client_fraction, num_clients) / num_clients

    def init(params, key):
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaffoldState(params, zeros, zeros, jnp.zeros(()))

    def local(state, batches, topo, key):
        del topo, key
        correction = jax.tree.map(jnp.subtract, state.control, state.own)

        def step(carry, batch):
            y, opt_state = carry
            loss, g = jax.value_and_grad(loss_fn)(y, batch)
            g = jax.tree.map(jnp.add, g, correction)
            updates, opt_state = local_opt.update(g, opt_state, y)
            return (optax.apply_updates(y, updates), opt_state), loss

        init_carry = (state.params, local_opt.init(state.params))
        (y, _), losses = jax.lax.scan(step, init_carry, batches)
        own = jax.tree.map(
            lambda ci, c, x, yy: ci - c + (x - yy) / lr_sum,
            state.own,
            state.control,
            state.params,
            y,
        )
        delta = jax.tree.map(jnp.subtract, own, state.own)
        return state._replace(own=own, loss=losses.mean()), Upload(y, delta)

    def combine(state, inbox, topo):
        del topo
        params = jax.tree.map(
            lambda x, y: x + server_lr * (y - x), state.params, inbox.model
        )
        control = jax.tree.map(lambda c, d: c + share * d, state.control, inbox.control)
        return state._replace(params=params, control=control)

    rounds = RoundStructure(steps, client_fraction, "uniform", server_copies=True)
    return Algorithm(init, local, combine, "server", rounds)


@ALGORITHMS.register("scaffold")
def _scaffold(
    loss_fn,
    optimizer,
    graph: dict | None = None,
    *,
    local_steps: int = 1,
    client_fraction: float = 1.0,
    server_lr: float = 1.0,
) -> Algorithm:
    config = getattr(optimizer, "config", {})
    if config.get("name", "sgd") != "sgd" or config.get("momentum"):
        raise ScenarioError(
            "algorithm.optimizer",
            "scaffold's control variates assume plain SGD local steps "
            "(optimizer: sgd, momentum: 0)",
        )
    return scaffold(
        loss_fn,
        optimizer(local_steps),
        optimizer.learning_rate(local_steps),
        local_steps,
        client_fraction,
        graph["n"] if graph else 1,  # only read when client_fraction < 1
        server_lr,
    )
