"""Dynamic averaging (Kamp et al. 2018; the dyn-fed seed): communicate only on drift.

Every client holds its own model x_i and the reference r, the model of the
last full synchronisation (the same on every peer). Each round is ``period``
(b) local steps; then each client checks its divergence from r:

- ``global``: ||x_i - r||^2 over all parameters;
- ``layer_max``: the max over tensors of ||x_i,l - r_l||^2 (dyn-fed's check).

Clients whose divergence exceeds ``threshold`` (Delta) are violators and send
their drift x_i - r to the coordinator. With ``balancing`` the coordinator
then asks further clients, in a random order, one at a time, until the mean
drift of the set B it holds satisfies the same check (the fewest extra
clients in that order), or until it holds everyone; without it, any violation
makes everyone send. Every client in B takes r + mean drift of B; when B is
everyone that is a full synchronisation and r moves there too. A round in
which nobody violates sends nothing and costs nothing.

Delta = 0 is FedAvg with tau = b (every client moves, so every round is a full
synchronisation); Delta = inf never communicates. The random order is each
client's own draw, sent with its drift: the coordinator's reply is one value
for all (the mean drift, the largest priority it took, whether it was a full
sync), from which each client tells whether it was in B. With a
``compressor`` (dyn-fed's ``uniform`` L-level quantization) the drift goes
out compressed; the check itself uses the exact drift. ``switch`` is the
seed's delta switch: once a full sync moves the first tensor (the first
layer) by less than ``switch`` in squared norm, every client sends every
round from then on (a full sync each round: FedAvg with tau = b).
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
    tree_where,
)
from workbench.algorithms.compressed import CompressorSpec, build_compressor
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.exchange import Decision, weighted_mean
from workbench.comm.messages import Coded
from workbench.compression import Compressor
from workbench.errors import ScenarioError

Divergence = Literal["global", "layer_max"]
VIOLATOR = -1.0  # a violator's priority: taken before any other client


class DynState(NamedTuple):
    params: PyTree  # x_i: this client's model
    reference: PyTree  # r: the last full synchronisation (the same everywhere)
    priority: jax.Array  # () this round's place in the balancing order (-1: violator)
    link: PyTree  # the upload compressor's state (its residual; () without one)
    pending: PyTree  # its state after this round's upload, kept only if taken
    switched: jax.Array  # () bool: the delta switch fired (a full sync every round)
    loss: jax.Array  # () mean training loss of the last local steps


class Check(NamedTuple):
    """What a client sends when the coordinator takes it."""

    drift: PyTree  # x_i - r
    priority: jax.Array  # () -1 for a violator, else its draw in [0, 1)


class Reply(NamedTuple):
    drift: PyTree  # the mean drift of the taken clients
    cut: jax.Array  # () the largest priority taken (-2: nobody)
    full: jax.Array  # () bool: everyone was taken (the reference moves)


def divergence(kind: Divergence, drift: PyTree, batch_dims: int = 0) -> jax.Array:
    """The squared norm of ``drift``: global, or the max over its tensors."""
    axes = lambda x: tuple(range(batch_dims, x.ndim))  # noqa: E731
    per_leaf = [jnp.sum(x**2, axis=axes(x)) for x in jax.tree.leaves(drift)]
    if kind == "global":
        return sum(per_leaf)
    return jnp.max(jnp.stack(per_leaf), axis=0)


def coordinator(threshold: float, kind: Divergence, balancing: bool):
    """The coordinator's decision: ``(uploads (m, ...), weights (m,), key)``."""

    def decide(uploads: Check, weights, key):
        del key  # the order is the clients' own draws
        pri = uploads.priority
        m = pri.shape[0]
        n_viol = jnp.sum(pri == VIOLATOR)
        order = jnp.argsort(pri)  # violators first, then the balancing order
        w = weights[order]
        cw = jnp.cumsum(w)

        def prefix_means(leaf):  # (m, ...): mean drift of the first k + 1
            cs = jnp.cumsum(leaf[order] * w.reshape((m,) + (1,) * (leaf.ndim - 1)), 0)
            return cs / cw.reshape((m,) + (1,) * (leaf.ndim - 1))

        means = jax.tree.map(prefix_means, uploads.drift)
        ok = divergence(kind, means, batch_dims=1) <= threshold  # (m,) per k + 1
        sizes = jnp.arange(1, m + 1)
        enough = ok & (sizes >= n_viol) if balancing else sizes == m
        k = jnp.where(jnp.any(enough), jnp.argmax(enough) + 1, m)
        k = jnp.where(n_viol > 0, k, 0)
        cut = jnp.where(k > 0, pri[order][jnp.maximum(k - 1, 0)], -2.0)
        taken = pri <= cut
        c = jnp.where(taken, weights, 0.0)
        mean = weighted_mean(uploads.drift, c / jnp.maximum(jnp.sum(c), 1e-30))
        return Decision(Reply(mean, cut, jnp.all(taken)), taken)

    return decide


def dynamic_averaging(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    threshold: float,
    period: int = 1,
    kind: Divergence = "global",
    balancing: bool = True,
    weighting: Literal["uniform", "data_size"] = "uniform",
    compressor: Compressor | None = None,
    switch: float | None = None,
) -> Algorithm:
    def init(params, key):
        del key
        reference = jax.tree.map(jnp.copy, params)  # its own buffer (donation)
        link = compressor.init(params) if compressor else ()
        no = jnp.zeros((), bool)
        pending = jax.tree.map(jnp.copy, link)
        return DynState(
            params, reference, jnp.zeros(()), link, pending, no, jnp.zeros(())
        )

    def local(state, batches, topo, key):
        del topo
        params, _, loss = local_steps(
            loss_fn, local_opt, state.params, local_opt.init(state.params), batches
        )
        drift = jax.tree.map(jnp.subtract, params, state.reference)
        violates = (divergence(kind, drift) > threshold) | state.switched
        kp, kc = jax.random.split(key)
        pri = jnp.where(violates, VIOLATOR, jax.random.uniform(kp))
        pending = state.pending
        if compressor:
            q, pending, bits = compressor.apply(drift, state.link, kc)
            drift = Coded(q, bits)
        state = state._replace(params=params, priority=pri, pending=pending, loss=loss)
        return state, Check(drift, pri)

    def combine(state, reply: Reply, topo):
        del topo
        synced = jax.tree.map(jnp.add, state.reference, reply.drift)
        taken = state.priority <= reply.cut
        switched = state.switched
        if switch is not None:
            first = jax.tree.leaves(reply.drift)[0]
            switched = switched | (reply.full & (jnp.sum(first**2) < switch))
        return state._replace(
            params=tree_where(taken, synced, state.params),
            reference=tree_where(reply.full, synced, state.reference),
            link=tree_where(
                taken, state.pending, state.link
            ),  # a residual of what was sent
            switched=switched,
        )

    rounds = RoundStructure(period, 1.0, weighting)
    decide = coordinator(threshold, kind, balancing)
    return Algorithm(init, local, combine, "coordinator", rounds, aggregate=decide)


@ALGORITHMS.register("dynamic_averaging")
def _dynamic_averaging(
    loss_fn,
    optimizer,
    *,
    threshold: float,
    period: int = 1,
    divergence: Divergence = "global",
    balancing: bool = True,
    weighting: Literal["uniform", "data_size"] = "uniform",
    compressor: CompressorSpec | None = None,
    switch: float | None = None,
) -> Algorithm:
    if threshold < 0:
        raise ScenarioError("algorithm.threshold", f"must be >= 0, got {threshold}")
    if period < 1:
        raise ScenarioError("algorithm.period", f"must be >= 1, got {period}")
    link = build_compressor(compressor) if compressor is not None else None
    return dynamic_averaging(
        loss_fn, optimizer(period), threshold, period, divergence, balancing,
        weighting, link, switch,
    )  # fmt: skip
