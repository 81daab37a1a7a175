"""ZeroSum / Zip-DL (arXiv 2403.11795): per-edge noise that cancels in the average.

After its local steps, peer a draws Y_{a->v} ~ N(0, sigma^2 I) for every v in
its closed neighbourhood (itself included when W_aa > 0; d_a members) and
sends neighbour v

    x_a + Z_{a->v},   Z_{a->v} = Y_{a->v} - (1 / (d_a W_av)) sum_j W_aj Y_{a->j}

(``form: paper``), so sum_v W_av Z_{a->v} = 0: on a symmetric W every receiver
weighs a's message by W_va = W_av and the global mean is unchanged, while no
neighbour sees a's model without noise. ``form: code`` is the decentralizepy
code's version: the d_a noises have std sigma sqrt(d_a / (d_a - 1)) and their
plain mean is subtracted (Z = Y - mean Y; the self noise counts as a virtual
neighbour); it cancels exactly only for uniform weights 1/d_a.
``gossip_steps`` T averaging steps per round (Zip-DL's averaging rounds), each
with fresh zero-sum noise on the current model; messages are per edge
(``PerEdge`` outbox, ``edge`` exchange), so each is counted once per edge and
step.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PeerTopo,
    PyTree,
    RoundStructure,
    local_steps,
)
from workbench.algorithms.edges import column_sum, from_neighbours
from workbench.algorithms.noise import gaussian_like
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.messages import PerEdge
from workbench.errors import ScenarioError
from workbench.keys import KEY_IMPL

Form = Literal["paper", "code"]


class ZeroSumState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked
    opt_state: PyTree  # the local optimizer's state, same stacking
    own: PyTree  # x_a + Z_{a->a}: this round's self term of the average, like params
    loss: jax.Array  # () mean training loss of the last local steps
    key: jax.Array  # uint32 raw data of the current averaging step's noise key


def _rows(c: jax.Array, v: jax.Array) -> jax.Array:
    return c.reshape((-1,) + (1,) * (v.ndim - 1)).astype(v.dtype)


def zero_sum_noise(key, topo: PeerTopo, like: PyTree, sigma: float, form: Form):
    """Z_{a->v} for every column of the peer's table: leaves (k, ...), 0 on padding.

    Column 0 is the peer itself; ``sum_c W_c Z_c = 0`` (paper form).
    """
    k = topo.idx.shape[0]
    # (k,) the closed neighbourhood; the peer itself only with a self weight
    # (W_aa = 0 would divide by zero, and its column enters no average)
    real = topo.mask.at[0].set(topo.weight[0] > 0)
    d = jnp.sum(real).astype(jnp.float32)
    w = jnp.where(real, topo.weight, 0.0)
    stacked = jax.tree.map(lambda x: jnp.zeros((k,) + x.shape, x.dtype), like)
    if form == "code":
        std = sigma * jnp.sqrt(d / jnp.maximum(d - 1.0, 1.0))
        y = gaussian_like(key, stacked, 1.0)

        def centre(v):
            v = v * _rows(real, v) * std.astype(v.dtype)
            mean = jnp.sum(v, axis=0) / d.astype(v.dtype)
            return (v - mean[None]) * _rows(real, v)

        return jax.tree.map(centre, y)
    y = gaussian_like(key, stacked, sigma)
    total = column_sum(y, w)  # sum_j W_aj Y_{a->j}
    scale = jnp.where(real, 1.0 / (d * jnp.where(real, w, 1.0)), 0.0)

    def subtract(v, s):
        return (v - _rows(scale, v) * s[None]) * _rows(real, v)

    return jax.tree.map(subtract, y, total)


def zerosum(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    *,
    sigma: float,
    form: Form = "paper",
    steps: int = 1,
    gossip_steps: int = 1,
) -> Algorithm:
    """D-SGD (adapt-then-combine) whose messages carry zero-sum per-edge noise.

    With ``gossip_steps`` T > 1 every averaging step draws fresh noise from the
    step's key (kept in the state, advanced by each combine); the combine then
    redraws its own column from that key instead of storing it from ``resend``.
    """

    def noisy(params, topo, key):  # leaves (k, ...): x_a + Z_{a->c} per column
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        z = zero_sum_noise(key, topo, params, sigma, form)
        return jax.tree.map(lambda x, e: x[None] + e, params, z)

    def init(params, key):
        own = jax.tree.map(jnp.zeros_like, params)  # set by local before combine
        del key  # local sets the step key before any use
        raw = jax.random.key_data(jax.random.key(0, impl=KEY_IMPL))  # plain array
        return ZeroSumState(params, local_opt.init(params), own, jnp.zeros(()), raw)

    def local(state, batches, topo, key):
        params, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        sent = noisy(params, topo, key)
        own = jax.tree.map(lambda v: v[0], sent)
        new = ZeroSumState(params, opt_state, own, loss, jax.random.key_data(key))
        return new, PerEdge(from_neighbours(sent))

    def resend(state, topo):
        return PerEdge(from_neighbours(noisy(state.params, topo, state.key)))

    def message(outbox, sender, receiver, key):
        del sender, receiver, key
        return outbox.value

    def combine(state, inbox, topo):
        c = jnp.where(inbox.mask, inbox.weight, 0.0)
        others = column_sum(inbox.messages, c)
        w_self = topo.weight[0]
        own = state.own
        if gossip_steps > 1:  # this step's self term, from the step's key
            own = jax.tree.map(lambda v: v[0], noisy(state.params, topo, state.key))
        params = jax.tree.map(lambda o, s: o + w_self.astype(s.dtype) * s, others, own)
        step = jax.random.fold_in(jax.random.wrap_key_data(state.key, impl=KEY_IMPL), 1)
        return state._replace(params=params, key=jax.random.key_data(step))

    rounds = RoundStructure(
        local_steps=steps, gossip_steps=gossip_steps, undirected=True
    )
    return Algorithm(
        init,
        local,
        combine,
        "edge",
        rounds,
        resend=resend if gossip_steps > 1 else None,
        message=message,
        uses_topology=True,
    )


@ALGORITHMS.register("zerosum")
def _zerosum(
    loss_fn,
    optimizer,
    *,
    sigma: float = 0.0,
    form: Form = "paper",
    gossip_steps: Annotated[int, annotated_types.Ge(1)] = 1,
    local_steps: int = 1,
) -> Algorithm:
    if not sigma >= 0:
        raise ScenarioError("algorithm.sigma", f"must be >= 0, got {sigma}")
    return zerosum(
        loss_fn,
        optimizer(local_steps),
        sigma=sigma,
        form=form,
        steps=local_steps,
        gossip_steps=gossip_steps,
    )._replace(privacy={"mechanism": "zerosum", "sigma": sigma})
