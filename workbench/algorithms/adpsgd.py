"""AD-PSGD: asynchronous decentralized parallel SGD (Lian et al. 2018, 1710.06952).

A worker reads its model when a step starts, computes the gradient there
(``snapshot``), and when the step ends averages its *current* model with one
random neighbour (both sides: x_i, x_j <- (x_i + x_j) / 2) and applies the
gradient: x_i <- (x_i + x_j) / 2 - eta g(snapshot). Between start and end
its model may have been averaged by busy neighbours: that is the gradient's
staleness. With ``local_steps`` = tau, the update is the one tau optax steps
from the snapshot make.

On the virtual clock (``clock.mode: async``) each tick pairs every peer that
finished a step with a free random neighbour (``RoundStructure.pairwise``;
workbench.clock.pairing); the partner averages too, even when idle. Without
a ``clock:`` section every peer finishes every round. With learning rate 0
it is randomized pairwise gossip (Boyd et al. 2006).
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
    local_steps,
)
from workbench.algorithms.registry import ALGORITHMS


class ADPSGDState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked: current model
    opt_state: PyTree  # the local optimizer's state
    snapshot: PyTree  # the model when the current step started, like params
    update: PyTree  # the finished step's update, applied at the next average
    fresh: jax.Array  # () bool: a step just finished (its update is pending)
    loss: jax.Array  # () mean training loss of the last local steps


def adpsgd(
    loss_fn: LossFn, local_opt: optax.GradientTransformation, steps: int = 1
) -> Algorithm:
    """AD-PSGD with ``steps`` local optax steps per event."""

    def init(params, key):
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ADPSGDState(
            params,
            local_opt.init(params),
            jax.tree.map(jnp.copy, params),
            zeros,
            jnp.zeros((), bool),
            jnp.zeros(()),
        )

    def local(state, batches, topo, key):
        del topo, key
        moved, opt_state, loss = local_steps(
            loss_fn, local_opt, state.snapshot, state.opt_state, batches
        )
        update = jax.tree.map(jnp.subtract, moved, state.snapshot)
        new = state._replace(
            opt_state=opt_state, update=update, fresh=jnp.ones((), bool), loss=loss
        )
        return new, state.params

    def combine(state, inbox, topo):
        del topo
        fresh = state.fresh
        params = jax.tree.map(
            lambda avg, u: avg + jnp.where(fresh, u, jnp.zeros_like(u)),
            inbox,
            state.update,
        )
        snapshot = jax.tree.map(
            lambda new, old: jnp.where(fresh, new, old), params, state.snapshot
        )
        zeros = jax.tree.map(jnp.zeros_like, state.update)
        return state._replace(
            params=params, snapshot=snapshot, update=zeros, fresh=jnp.zeros((), bool)
        )

    def resend(state, topo):
        del topo
        return state.params

    rounds = RoundStructure(local_steps=steps, undirected=True, pairwise=True)
    return Algorithm(init, local, combine, "average", rounds, resend=resend)


@ALGORITHMS.register("adpsgd")
def _adpsgd(loss_fn, optimizer, *, local_steps: int = 1) -> Algorithm:
    return adpsgd(loss_fn, optimizer(local_steps), steps=local_steps)
