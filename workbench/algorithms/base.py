"""The algorithm interface: pure per-peer functions that the engine vmaps.

An algorithm is written for ONE peer. Peers interact only through the exchange
between ``local`` and ``combine``:

    init(params, key)              -> state
    local(state, batches, key)     -> state, outbox     (compute, no communication)
    combine(state, inbox)          -> state             (uses what neighbours sent)

``exchange`` names how an outbox becomes an inbox (see EXCHANGES in
workbench/exchange.py): ``"average"`` gives each peer the W-weighted average of
its in-neighbours' outboxes (self included), ``"server"`` gives every peer the
weighted mean of the participating peers' outboxes. Every state has a
``params`` field: the model the peer would deploy, used for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]  # (params, batch) -> scalar


class Algorithm(NamedTuple):
    init: Callable[[PyTree, jax.Array], PyTree]
    local: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree]]
    combine: Callable[[PyTree, PyTree], PyTree]
    exchange: str  # "average" | "server"


def local_steps(
    loss_fn: LossFn, opt: optax.GradientTransformation, params, opt_state, batches
):
    """Runs one optax step per leading entry of ``batches`` (tau, ...).

    Returns:
      (params, opt_state, mean loss over the steps).
    """

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, losses.mean()
