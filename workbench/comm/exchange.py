"""Simulated exchange: outbox -> inbox for each ``Algorithm.exchange`` kind, and
the number of model-sized messages each peer sent (for the bytes-sent metric).

- ``average``: inbox_i = sum_j W_ij outbox_j, computed by a mixing kernel.
- ``server``:  inbox_i = sum_j c_j outbox_j / sum_j c_j for every i, over the
  sampled peers j, with c_j their aggregation weight (uniform or data size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.comm.arrays import Dense, KernelArrays, Mean, Roll, Segment, Table
from workbench.comm.kernels import mix


def average(outbox, arrays: KernelArrays, weights: jax.Array, n: int):
    del weights, n
    return mix(arrays, outbox)


def server(outbox, arrays: KernelArrays, weights: jax.Array, n: int):
    """Weighted mean of the m senders' outboxes (m, ...), broadcast to n peers."""
    del arrays
    c = weights / jnp.sum(weights)

    def agg(leaf):
        avg = jnp.tensordot(c.astype(leaf.dtype), leaf, axes=1)
        return jnp.broadcast_to(avg, (n,) + avg.shape)

    return jax.tree.map(agg, outbox)


EXCHANGES = {"average": average, "server": server}


def exchange(kind: str, outbox, arrays: KernelArrays, weights: jax.Array, n: int):
    """The inbox (n, ...) of every peer from the senders' outboxes and weights."""
    return EXCHANGES[kind](outbox, arrays, weights, n)


# ------------------------------------------------------- message accounting


def _sent_mean(arrays: Mean, n: int) -> jax.Array:
    return jnp.full((n,), n - 1, jnp.float32)


def _sent_dense(arrays: Dense, n: int) -> jax.Array:
    off = (arrays.W != 0) & ~jnp.eye(n, dtype=bool)
    return jnp.sum(off, axis=0).astype(jnp.float32)


def _sent_roll(arrays: Roll, n: int) -> jax.Array:
    real = (arrays.weights != 0) & (arrays.shifts % n != 0)
    return jnp.full((n,), jnp.sum(real), jnp.float32)


def _sent_table(arrays: Table, n: int) -> jax.Array:
    self_idx = jnp.arange(n)[:, None]
    real = ((arrays.weight != 0) & (arrays.idx != self_idx)).astype(jnp.float32)
    return jax.ops.segment_sum(real.reshape(-1), arrays.idx.reshape(-1), n)


def _sent_segment(arrays: Segment, n: int) -> jax.Array:
    real = (arrays.weight != 0) & (arrays.senders != arrays.receivers)
    return jax.ops.segment_sum(real.astype(jnp.float32), arrays.senders, n)


_SENT = {
    Mean: _sent_mean,
    Dense: _sent_dense,
    Roll: _sent_roll,
    Table: _sent_table,
    Segment: _sent_segment,
}


def _sent_average(arrays: KernelArrays, active: jax.Array, n: int):
    del active
    return _SENT[type(arrays)](arrays, n), jnp.zeros(())


def _sent_server(arrays: KernelArrays, active: jax.Array, n: int):
    del arrays, n
    uploads = (active > 0).astype(jnp.float32)
    return uploads, jnp.sum(uploads)  # the server sends each uploader the model


SENT_BY_EXCHANGE = {"average": _sent_average, "server": _sent_server}


def messages_sent(kind: str, arrays: KernelArrays, active: jax.Array, n: int):
    """Per-peer sent message counts (n,) and the server's sent count ().

    Args:
      active: (n,) aggregation weight of each peer this round, 0 if not sampled.
    """
    return SENT_BY_EXCHANGE[kind](arrays, active, n)
