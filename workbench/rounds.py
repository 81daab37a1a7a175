"""The jitted core: one round, a chunk of rounds under ``lax.scan``, evaluation.

Everything here is a pure function of arrays. Topology arrays and data are
arguments (never captured constants), so a new graph or dataset of the same
shape never recompiles. Random draws use ``fold_in(seed, round, purpose, peer)``
so every execution strategy gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from workbench.algorithms.base import Algorithm
from workbench.comm.exchange import exchange, messages_sent
from workbench.keys import (  # noqa: F401  (re-exported)
    KEY_IMPL,
    LOCAL,
    PARTICIPATION,
    TOPOLOGY,
    root_key,
    round_key,
)
from workbench.objective import Batch, EvalSums, eval_sums


class PeerData(NamedTuple):
    x: jax.Array  # (n, m_max, *input_shape) float32, zero padded
    y: jax.Array  # (n, m_max) int32
    size: jax.Array  # (n,) int32 true number of examples


class EvalData(NamedTuple):
    train: PeerData  # (n, m_eval, ...) first examples of each peer's train set
    val: PeerData  # (n, m_val, ...)
    test_x: jax.Array  # (m_test, *input_shape), padded to the eval batch
    test_y: jax.Array  # (m_test,)
    test_mask: jax.Array  # (m_test,) float32


class RoundSpec(NamedTuple):
    """Static structure of a round."""

    algorithm: Algorithm
    topology_at: Callable  # (topo_data, t, key) -> kernel arrays
    lift: Callable  # per-peer fn -> stacked fn (execution strategy)
    num_peers: int
    local_steps: int
    batch_size: int
    participants: int  # peers sampled per round (== num_peers: everyone)


def sample_batches(key, x, y, size, steps: int, batch_size: int) -> Batch:
    """``steps`` batches drawn uniformly (with replacement) from one peer's data."""
    idx = jax.random.randint(key, (steps, batch_size), 0, jnp.maximum(size, 1))
    return Batch(x[idx], y[idx], jnp.ones((steps, batch_size), jnp.float32))


def sample_peers(key, n: int, m: int) -> jax.Array:
    """(m,) int32 sorted indices of m distinct peers drawn uniformly; all if m >= n."""
    if m >= n:
        return jnp.arange(n, dtype=jnp.int32)
    return jnp.sort(jax.random.permutation(key, n)[:m]).astype(jnp.int32)


def make_round(spec: RoundSpec, seed: int) -> Callable:
    """``round(state, t, data, topo, weights) -> state, (sent (n,), server ())``.

    Only the ``spec.participants`` sampled peers run ``local`` (the others are
    not computed at all); partial participation needs a ``server`` exchange.
    """
    alg, n, m = spec.algorithm, spec.num_peers, spec.participants
    if m < n and alg.exchange != "server":
        raise ValueError(
            f"partial participation needs a server exchange, not '{alg.exchange}'"
        )

    def peer_local(state, x, y, size, peer, t):
        key = jax.random.fold_in(round_key(seed, t, LOCAL), peer)
        kb, kl = jax.random.split(key)
        batches = sample_batches(kb, x, y, size, spec.local_steps, spec.batch_size)
        return alg.local(state, batches, kl)

    def one_round(state, t, data: PeerData, topo_data, weights):
        peers = sample_peers(round_key(seed, t, PARTICIPATION), n, m)
        take = (lambda tree: tree) if m >= n else _taker(peers)
        sub, outbox = spec.lift(peer_local)(
            take(state), *take(tuple(data)), peers, jnp.broadcast_to(t, (m,))
        )
        state = sub if m >= n else _scatter(state, sub, peers)
        arrays = spec.topology_at(topo_data, t, round_key(seed, t, TOPOLOGY))
        inbox = exchange(alg.exchange, outbox, arrays, take(weights), n)
        state = spec.lift(alg.combine)(state, inbox)
        active = jnp.zeros((n,), weights.dtype).at[peers].set(take(weights))
        return state, messages_sent(alg.exchange, arrays, active, n)

    return one_round


def _taker(peers: jax.Array) -> Callable:
    return lambda tree: jax.tree.map(lambda a: a[peers], tree)


def _scatter(full, part, peers: jax.Array):
    return jax.tree.map(lambda a, b: a.at[peers].set(b), full, part)


def make_chunk(spec: RoundSpec, seed: int) -> Callable:
    """``chunk(state, data, topo_data, weights, start, length)``: rounds start..+length.

    Returns (state, per-peer messages sent (n,), server messages sent ()).
    """
    one_round = make_round(spec, seed)

    def chunk(state, data, topo_data, weights, start, length: int):
        def body(st, t):
            return one_round(st, t, data, topo_data, weights)

        state, (sent, server) = jax.lax.scan(
            body, state, start + jnp.arange(length, dtype=jnp.int32)
        )
        return state, jnp.sum(sent, axis=0), jnp.sum(server)

    return jax.jit(chunk, static_argnames="length", donate_argnums=0)


class Evaluation(NamedTuple):
    train: EvalSums  # leaves (n,)
    val: EvalSums  # leaves (n,)
    test: EvalSums  # leaves (n,)
    averaged: EvalSums  # leaves (): the averaged model on the test set
    consensus: jax.Array  # () (1/n) sum_i ||x_i - xbar||^2
    finite: jax.Array  # () bool: every parameter is finite


def make_evaluate(apply_fn: Callable, lift: Callable, batch_size: int) -> Callable:
    """``evaluate(params (n, ...), data: EvalData) -> Evaluation`` (jitted)."""

    def own(params, x, y, size):
        mask = (jnp.arange(x.shape[0]) < size).astype(jnp.float32)
        return eval_sums(apply_fn, params, x, y, mask, batch_size)

    def evaluate(params, data: EvalData):
        n = data.train.size.shape[0]

        def peer(p, tx, ty, ts, vx, vy, vs):
            test = eval_sums(
                apply_fn, p, data.test_x, data.test_y, data.test_mask, batch_size
            )
            return own(p, tx, ty, ts), own(p, vx, vy, vs), test

        train, val, test = lift(peer)(params, *data.train, *data.val)
        mean = jax.tree.map(lambda p: jnp.mean(p, axis=0), params)
        averaged = eval_sums(
            apply_fn, mean, data.test_x, data.test_y, data.test_mask, batch_size
        )
        leaves = zip(jax.tree.leaves(params), jax.tree.leaves(mean), strict=True)
        consensus = sum(jnp.sum((p - m[None]) ** 2) for p, m in leaves) / n
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)])
        )
        return Evaluation(train, val, test, averaged, consensus, finite)

    return jax.jit(evaluate)
