"""Simulated mixing kernels: weighted neighbour averages over the peer axis.

Every kernel computes ``out_i = sum_j W_ij x_j`` for a stacked pytree ``x``
whose leaves have a leading peer axis ``n``. They differ in how ``W`` is held:

- ``Mean``:    W = J (complete graph, uniform weights); O(n d).
- ``Roll``:    circulant W (ring, exponential, one-peer exponential); k rolls.
- ``Table``:   padded in-neighbour table (bounded degree); k gathers.
- ``Segment``: padded edge list, gather + ``segment_sum`` (irregular degrees).
- ``Dense``:   the n x n matrix; a matmul (small n, dense graphs).

Kernel arrays are pytrees passed as arguments of the jitted step, so a new graph
of the same kernel and shape never recompiles. ``from_matrix`` builds them from
a host-side numpy W; ``choose_kernel`` picks one from W's structure.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Mean(NamedTuple):
    """W = 11^T / n. No arrays."""


class Dense(NamedTuple):
    W: Array  # (n, n) row i holds the weights peer i gives to every peer


class Roll(NamedTuple):
    shifts: Array  # (k,) int32: out_i += weights[s] * x[(i + shifts[s]) % n]
    weights: Array  # (k,) float32


class Table(NamedTuple):
    idx: Array  # (n, k) int32 in-neighbour indices (padding: own index)
    weight: Array  # (n, k) float32 weights (padding: 0)


class Segment(NamedTuple):
    senders: Array  # (e,) int32 source peer of each edge (padding: 0)
    receivers: Array  # (e,) int32 target peer of each edge (padding: 0)
    weight: Array  # (e,) float32 W[receiver, sender] (padding: 0)


KernelArrays = Mean | Dense | Roll | Table | Segment


def _bcast(w: Array, x: Array) -> Array:
    """Reshapes ``w`` (leading axes of x) to broadcast against ``x``."""
    return w.reshape(w.shape + (1,) * (x.ndim - w.ndim)).astype(x.dtype)


def _mean(arrays: Mean, x: Array) -> Array:
    del arrays
    return jnp.broadcast_to(jnp.mean(x, axis=0, keepdims=True), x.shape)


def _dense(arrays: Dense, x: Array) -> Array:
    flat = x.reshape(x.shape[0], -1)
    return (arrays.W.astype(x.dtype) @ flat).reshape(x.shape)


def _roll(arrays: Roll, x: Array) -> Array:
    out = jnp.zeros_like(x)
    for s in range(arrays.shifts.shape[0]):
        out = out + arrays.weights[s].astype(x.dtype) * jnp.roll(
            x, -arrays.shifts[s], axis=0
        )
    return out


def _table(arrays: Table, x: Array) -> Array:
    out = jnp.zeros_like(x)
    for c in range(arrays.idx.shape[1]):
        out = out + _bcast(arrays.weight[:, c], x) * x[arrays.idx[:, c]]
    return out


def _segment(arrays: Segment, x: Array) -> Array:
    msgs = _bcast(arrays.weight, x) * x[arrays.senders]
    return jax.ops.segment_sum(msgs, arrays.receivers, num_segments=x.shape[0])


KERNELS = {Mean: _mean, Dense: _dense, Roll: _roll, Table: _table, Segment: _segment}
KERNEL_NAMES = {"mean": Mean, "dense": Dense, "roll": Roll, "table": Table,
                "segment": Segment}


def mix(arrays: KernelArrays, tree):
    """Returns ``W x`` for every leaf of the stacked pytree ``tree``."""
    kernel = KERNELS[type(arrays)]
    return jax.tree.map(lambda leaf: kernel(arrays, leaf), tree)


def gather(arrays: Table, tree):
    """In-neighbour messages ``(n, k, ...)`` per leaf, for non-linear combines."""
    return jax.tree.map(lambda leaf: leaf[arrays.idx], tree)


# ---------------------------------------------------------------- host side


def circulant_offsets(W: np.ndarray, atol: float = 1e-12) -> dict[int, float] | None:
    """``{shift: weight}`` if W is circulant (W[i, i+s] constant), else None."""
    n = W.shape[0]
    first = W[0]
    rows = np.stack([np.roll(first, i) for i in range(n)])
    if not np.allclose(rows, W, atol=atol):
        return None
    return {int(s): float(first[s]) for s in np.flatnonzero(np.abs(first) > atol)}


def to_mean(W: np.ndarray, width: int | None = None) -> Mean:
    n = W.shape[0]
    if not np.allclose(W, 1.0 / n):
        raise ValueError("the mean kernel needs W = 11^T/n (complete, uniform)")
    return Mean()


def to_dense(W: np.ndarray, width: int | None = None) -> Dense:
    return Dense(jnp.asarray(W, jnp.float32))


def to_roll(W: np.ndarray, width: int | None = None) -> Roll:
    offsets = circulant_offsets(W)
    if offsets is None:
        raise ValueError("the roll kernel needs a circulant W")
    shifts, weights = _pad_pairs(list(offsets.items()), width, (0, 0.0))
    return Roll(jnp.asarray(shifts, jnp.int32), jnp.asarray(weights, jnp.float32))


def to_table(W: np.ndarray, width: int | None = None) -> Table:
    n = W.shape[0]
    k = int(max(np.count_nonzero(W, axis=1).max(), 1))
    width = k if width is None else width
    if width < k:
        raise ValueError(f"table width {width} < max in-degree {k}")
    idx = np.tile(np.arange(n)[:, None], (1, width))
    weight = np.zeros((n, width))
    for i in range(n):
        nz = np.flatnonzero(W[i])
        idx[i, : nz.size] = nz
        weight[i, : nz.size] = W[i, nz]
    return Table(jnp.asarray(idx, jnp.int32), jnp.asarray(weight, jnp.float32))


def to_segment(W: np.ndarray, width: int | None = None) -> Segment:
    receivers, senders = np.nonzero(W)
    e = senders.size if width is None else width
    if e < senders.size:
        raise ValueError(f"segment width {width} < number of edges {senders.size}")
    pad = e - senders.size
    return Segment(
        jnp.asarray(np.pad(senders, (0, pad)), jnp.int32),
        jnp.asarray(np.pad(receivers, (0, pad)), jnp.int32),
        jnp.asarray(np.pad(W[receivers, senders], (0, pad)), jnp.float32),
    )


def _pad_pairs(pairs, width, fill):
    width = len(pairs) if width is None else width
    if width < len(pairs):
        raise ValueError(f"width {width} < {len(pairs)} entries")
    pairs = pairs + [fill] * (width - len(pairs))
    return [p[0] for p in pairs], [p[1] for p in pairs]


FROM_MATRIX = {"mean": to_mean, "dense": to_dense, "roll": to_roll,
               "table": to_table, "segment": to_segment}


def from_matrix(kernel: str, W: np.ndarray, width: int | None = None) -> KernelArrays:
    """Kernel arrays for the host matrix ``W``; ``width`` pads k (or e)."""
    return FROM_MATRIX[kernel](np.asarray(W, np.float64), width)


def choose_kernel(W: np.ndarray) -> str:
    """Picks the kernel for W from its structure (tuned by the mixing benchmark)."""
    n = W.shape[0]
    if np.allclose(W, 1.0 / n):
        return "mean"
    degree = np.count_nonzero(W, axis=1)
    if n <= 32 or degree.mean() > n / 4:
        return "dense"
    offsets = circulant_offsets(W)
    if offsets is not None:
        return "roll"
    if degree.max() <= 2 * degree.mean():
        return "table"
    return "segment"
