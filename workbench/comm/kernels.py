"""Simulated mixing kernels: weighted neighbour averages over the peer axis.

Every kernel computes ``out_i = sum_j W_ij x_j`` for a stacked pytree ``x``
whose leaves have a leading peer axis ``n``. They differ in how ``W`` is held
(see ``workbench.comm.arrays``):

- ``Mean``:    W = J (complete graph, uniform weights); one (1, n) matmul.
- ``Roll``:    circulant W (ring, exponential, one-peer exponential); k row
  gathers with scalar weights (shifts may be traced: dynamic graphs).
- ``Table``:   padded in-neighbour table (bounded degree); k row gathers.
- ``Segment``: edge list sorted by receiver, gather + ``segment_sum``.
- ``Dense``:   the n x n matrix; a matmul (small n, dense graphs).

All kernels agree with ``Dense`` to rounding (tests/test_comm.py).
``convert`` turns kernel arrays into another kernel inside jit (for kernel
overrides on dynamic topologies and for tests against the dense W_t).
Host-side builders (``from_matrix``, ``choose_kernel``) live in
``workbench.comm.host`` and are re-exported here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.comm.arrays import (
    KERNEL_NAMES,
    NAME_OF,
    Array,
    Dense,
    KernelArrays,
    Mean,
    Roll,
    Segment,
    Table,
    weight_dtype,
)

HIGHEST = jax.lax.Precision.HIGHEST


def _col(w: Array, x: Array) -> Array:
    """Reshapes per-peer weights ``w`` (n,) to broadcast against ``x`` (n, ...)."""
    return w.reshape(w.shape + (1,) * (x.ndim - w.ndim)).astype(x.dtype)


def _rows(x: Array, idx: Array) -> Array:
    return x.at[idx].get(mode="promise_in_bounds", unique_indices=False)


def _mean(arrays: Mean, x: Array) -> Array:
    del arrays
    n = x.shape[0]
    flat = x.reshape(n, -1)
    avg = jnp.matmul(jnp.full((1, n), 1.0 / n, x.dtype), flat, precision=HIGHEST)
    return jnp.broadcast_to(avg, flat.shape).reshape(x.shape)


def _dense(arrays: Dense, x: Array) -> Array:
    flat = x.reshape(x.shape[0], -1)
    out = jnp.matmul(arrays.W.astype(x.dtype), flat, precision=HIGHEST)
    return out.reshape(x.shape)


def _roll(arrays: Roll, x: Array) -> Array:
    n = x.shape[0]
    peers = jnp.arange(n, dtype=jnp.int32)
    out = jnp.zeros_like(x)
    for s in range(arrays.shifts.shape[0]):
        src = (peers + arrays.shifts[s]) % n
        out = out + arrays.weights[s].astype(x.dtype) * _rows(x, src)
    return out


def _table(arrays: Table, x: Array) -> Array:
    out = jnp.zeros_like(x)
    for c in range(arrays.idx.shape[1]):
        out = out + _col(arrays.weight[:, c], x) * _rows(x, arrays.idx[:, c])
    return out


def _segment(arrays: Segment, x: Array) -> Array:
    msgs = _col(arrays.weight, x) * _rows(x, arrays.senders)
    return jax.ops.segment_sum(
        msgs, arrays.receivers, num_segments=x.shape[0], indices_are_sorted=True
    )


KERNELS = {Mean: _mean, Dense: _dense, Roll: _roll, Table: _table, Segment: _segment}


def mix(arrays: KernelArrays, tree):
    """Returns ``W x`` for every leaf of the stacked pytree ``tree``.

    Args:
      arrays: kernel arrays (``Mean | Dense | Roll | Table | Segment``).
      tree: pytree whose leaves have a leading peer axis ``n``.
    """
    kernel = KERNELS[type(arrays)]
    return jax.tree.map(lambda leaf: kernel(arrays, leaf), tree)


def kernel_name(arrays: KernelArrays) -> str:
    """``"mean" | "dense" | "roll" | "table" | "segment"``."""
    return NAME_OF[type(arrays)]


# ---------------------------------------------- conversions (jittable)


def _roll_to_table(arrays: Roll, n: int) -> Table:
    peers = jnp.arange(n, dtype=jnp.int32)[:, None]
    idx = (peers + arrays.shifts[None, :].astype(jnp.int32)) % n
    weight = jnp.broadcast_to(arrays.weights[None, :], idx.shape)
    return Table(idx, weight)


def _table_to_segment(arrays: Table, n: int) -> Segment:
    k = arrays.idx.shape[1]
    receivers = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
    return Segment(arrays.idx.reshape(-1), receivers, arrays.weight.reshape(-1))


def _to_dense(arrays: KernelArrays, n: int) -> Dense:
    if isinstance(arrays, Mean):
        return Dense(jnp.full((n, n), 1.0 / n, weight_dtype()))
    seg = convert(arrays, "segment", n)
    zeros = jnp.zeros((n, n), seg.weight.dtype)
    return Dense(zeros.at[seg.receivers, seg.senders].add(seg.weight))


def _full_table(W: Array, n: int) -> Table:
    """Every peer as a column (k = n), rotated so that column 0 is self."""
    idx = (jnp.arange(n, dtype=jnp.int32)[:, None] + jnp.arange(n)[None, :]) % n
    return Table(idx.astype(jnp.int32), jnp.take_along_axis(W, idx, axis=1))


CONVERSIONS = {
    (Roll, "table"): _roll_to_table,
    (Roll, "segment"): lambda a, n: _table_to_segment(_roll_to_table(a, n), n),
    (Table, "segment"): _table_to_segment,
}


def can_convert(source: type, target: str) -> bool:
    """Whether ``convert`` turns ``source`` kernel arrays into ``target``."""
    return (
        KERNEL_NAMES[target] is source
        or target == "dense"
        or (source, target) in CONVERSIONS
    )


def convert(arrays: KernelArrays, target: str, n: int) -> KernelArrays:
    """Kernel arrays ``arrays`` as the ``target`` kernel (jittable).

    Supported: any -> dense, roll -> table, roll/table -> segment, identity.

    Args:
      arrays: kernel arrays.
      target: kernel name.
      n: number of peers.
    """
    if isinstance(arrays, KERNEL_NAMES[target]):
        return arrays  # includes dense -> dense
    if target == "dense":
        return _to_dense(arrays, n)
    key = (type(arrays), target)
    if key not in CONVERSIONS:
        raise ValueError(f"cannot convert {kernel_name(arrays)} arrays to {target}")
    return CONVERSIONS[key](arrays, n)


def as_table(arrays: KernelArrays, n: int) -> Table:
    """Any kernel arrays as an in-neighbour table, column 0 = self (jittable).

    Roll and table arrays keep their width; mean, dense and segment arrays
    become a full n-column table (what a per-neighbour exchange needs, never
    a mixing kernel choice).
    """
    if isinstance(arrays, Table | Roll):
        return convert(arrays, "table", n)
    return _full_table(convert(arrays, "dense", n).W, n)
