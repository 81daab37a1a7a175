"""Push-sum SGD: Stochastic Gradient Push (SGP, Assran et al. 2019, arXiv 1811.10792).

For directed graphs whose mixing is only row-stochastic (``el_local``, any
digraph with unequal in- and out-degrees), where D-SGD's average drifts.
Each peer i keeps a numerator x_i and a weight w_i (w_i = 1 at the start) and
deploys the de-biased model z_i = x_i / w_i (its ``params``). One round:

    x_i <- x_i - eta grad F_i(z_i)      (each local optax step: the gradient
                                         is taken at z_i = x_i / w_i and the
                                         update applied to x_i)
    p_i  = 1 / (out_degree_i + 1)        (the sender's own share)
    send (p_i x_i, p_i w_i) to every out-neighbour, keep the same share
    x_i <- p_i x_i + sum_{j -> i} p_j x_j
    w_i <- p_i w_i + sum_{j -> i} p_j w_j
    z_i  = x_i / w_i

The mixing matrix P_ij = p_j (j = i or j -> i) is column-stochastic, so
sum_i x_i and sum_i w_i = n are kept exactly and, on a sequence of graphs that
is jointly strongly connected, every z_i tends to sum_i x_i / n: with learning
rate 0 this is push-sum averaging (Kempe et al. 2003), reaching the exact
average of the initial models. The out-neighbours are the round's graph
(the pattern of W: j -> i when W_ij != 0); W's own weights are not used.
On a graph with equal in- and out-degree and uniform weights (the directed
``exponential`` graph) P = W, w_i stays 1 and SGP is D-SGD (adapt-then-combine).

The ``gather`` exchange delivers the in-neighbours' messages, already
scaled by their sender (who knows its ``topo.out_degree``); ``combine`` sums
the masked inbox and adds its own share. ``gossip_steps`` > 1 repeats the
push-sum mixing step within a round (``resend`` sends the new shares).
An optax transformation that reads the parameters (weight decay) sees z_i.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import Algorithm, LossFn, PyTree, RoundStructure
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError


class SGPState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked: z = x / w
    x: PyTree  # push-sum numerator, like params
    w: jax.Array  # () push-sum weight, 1 at the start
    opt_state: PyTree  # the local optimizer's state, like params
    loss: jax.Array  # () mean training loss of the last local steps


def _debias(x, w):
    return jax.tree.map(lambda v: v / w.astype(v.dtype), x)


def _scale(tree, c):
    return jax.tree.map(lambda v: v * c.astype(v.dtype), tree)


def sgp(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    *,
    steps: int = 1,
    gossip_steps: int = 1,
) -> Algorithm:
    """Stochastic Gradient Push with ``steps`` local steps per round.

    Args:
      steps: local optax steps per round (gradients at z = x / w).
      gossip_steps: push-sum mixing steps per round.
    """
    if gossip_steps < 1:
        raise ValueError(f"gossip_steps must be >= 1, got {gossip_steps}")

    def init(params, key):
        del key
        x = jax.tree.map(jnp.copy, params)  # its own buffers (donated chunks)
        return SGPState(params, x, jnp.ones(()), local_opt.init(params), jnp.zeros(()))

    def share(topo):
        return 1.0 / (topo.out_degree + 1).astype(jnp.result_type(float))

    def outbox(state, topo):
        p = share(topo)
        return _scale(state.x, p), state.w * p.astype(state.w.dtype)

    def local(state, batches, topo, key):
        del key

        def step(carry, batch):
            x, opt_state = carry
            z = _debias(x, state.w)
            loss, grads = jax.value_and_grad(loss_fn)(z, batch)
            updates, opt_state = local_opt.update(grads, opt_state, z)
            return (optax.apply_updates(x, updates), opt_state), loss

        (x, opt_state), losses = jax.lax.scan(step, (state.x, state.opt_state), batches)
        new = state._replace(
            params=_debias(x, state.w), x=x, opt_state=opt_state, loss=losses.mean()
        )
        return new, outbox(new, topo)

    def combine(state, inbox, topo):
        p = share(topo)
        mask = inbox.mask

        def gather(own, received):
            m = mask.astype(received.dtype)
            return own * p.astype(own.dtype) + jnp.tensordot(m, received, axes=1)

        xs, ws = inbox.messages
        x = jax.tree.map(gather, state.x, xs)
        w = gather(state.w, ws)
        return state._replace(params=_debias(x, w), x=x, w=w)

    rounds = RoundStructure(local_steps=steps, gossip_steps=gossip_steps)
    return Algorithm(
        init,
        local,
        combine,
        "gather",
        rounds,
        resend=outbox,
        uses_topology=True,
    )


@ALGORITHMS.register("sgp")
def _sgp(
    loss_fn, optimizer, *, local_steps: int = 1, gossip_steps: int = 1
) -> Algorithm:
    if gossip_steps < 1:
        raise ScenarioError(
            "algorithm.gossip_steps", f"must be >= 1, got {gossip_steps}"
        )
    return sgp(
        loss_fn, optimizer(local_steps), steps=local_steps, gossip_steps=gossip_steps
    )
