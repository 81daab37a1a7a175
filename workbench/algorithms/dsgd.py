"""Decentralized SGD (D-PSGD, arXiv 1705.09056) with tau local steps per round.

adapt-then-combine (ATC):  X <- W (X - eta G(X))
combine-then-adapt (CTA):  X <- W X - eta G(X)
With tau > 1 the adapt part is tau local optax steps. The local optimizer is any
optax transformation (momentum, Adam and weight decay need no new algorithm).
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


class DSGDState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked
    opt_state: PyTree  # the local optimizer's state, same stacking
    update: PyTree  # CTA: pending local update x_adapted - x, like params; ATC: None
    loss: jax.Array  # () mean training loss of the last local steps


def dsgd(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    order: Literal["atc", "cta"] = "atc",
    steps: int = 1,
) -> Algorithm:
    """D-SGD; ``order`` picks adapt-then-combine or combine-then-adapt.

    Args:
      steps: local optax steps (tau) per round.
    """

    def init(params, key):
        del key
        update = jax.tree.map(jnp.zeros_like, params) if order == "cta" else None
        return DSGDState(params, local_opt.init(params), update, jnp.zeros(()))

    def local(state, batches, topo, key):
        del topo, key
        params, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        if order == "atc":
            return state._replace(params=params, opt_state=opt_state, loss=loss), params
        update = jax.tree.map(jnp.subtract, params, state.params)
        new = state._replace(opt_state=opt_state, update=update, loss=loss)
        return new, state.params

    def combine(state, inbox, topo):
        del topo
        if order == "atc":
            return state._replace(params=inbox)
        return state._replace(params=jax.tree.map(jnp.add, inbox, state.update))

    return Algorithm(init, local, combine, "average", RoundStructure(local_steps=steps))


@ALGORITHMS.register("dsgd")
def _dsgd(
    loss_fn, optimizer, *, order: Literal["atc", "cta"] = "atc", local_steps: int = 1
) -> Algorithm:
    return dsgd(loss_fn, optimizer(local_steps), order=order, steps=local_steps)
