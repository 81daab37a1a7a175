"""Host side of the kernels: numpy/scipy W -> kernel arrays, and the kernel choice.

``from_matrix(kernel, W, width)`` accepts a dense ``np.ndarray`` or a
``scipy.sparse`` array (large graphs never need an n x n host matrix).
``width`` pads the kernel's variable axis (roll: k shifts, table: k columns,
segment: e edges) so that several graphs share shapes and one compilation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from workbench.comm.arrays import (
    Dense,
    KernelArrays,
    Mean,
    Roll,
    Segment,
    Table,
    weight_dtype,
)

# Kernel choice: a cost model in units of "one gathered row of x", fitted on
# CPU by tests/benchmarks/bench_mixing.py (100k-parameter models, 2 cores).
# table ~ n * (mean + max in-degree) / 2 (padding gathers the own, cached row);
# dense ~ a table of DENSE_COLUMNS(n) columns; segment (scatter) ~ SEGMENT_COST
# gathered rows per edge.
SEGMENT_COST = 10.0


def dense_columns(n: int) -> float:
    """Table width at which the dense matmul becomes as fast as the table."""
    return max(16.0, 0.07 * n + 6.0)


class Entries(NamedTuple):
    """Nonzero entries of W sorted by (row, column)."""

    n: int
    rows: np.ndarray  # (e,) receiver i of W[i, j]
    cols: np.ndarray  # (e,) sender j
    vals: np.ndarray  # (e,) float64 W[i, j]


def entries(W) -> Entries:
    """Sorted nonzero entries of a dense or scipy.sparse square matrix."""
    if sp.issparse(W):
        coo = sp.coo_array(W)
        coo.sum_duplicates()
        rows, cols, vals = coo.row, coo.col, coo.data.astype(np.float64)
    else:
        W = np.asarray(W, np.float64)
        rows, cols = np.nonzero(W)
        vals = W[rows, cols]
    keep = vals != 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, rows))
    n = W.shape[0]
    return Entries(
        n, rows[order].astype(np.int64), cols[order].astype(np.int64), vals[order]
    )


def circulant_offsets(W, atol: float = 1e-12) -> dict[int, float] | None:
    """``{shift: weight}`` if W is circulant (W[i, (i+s) % n] = w_s), else None."""
    e = W if isinstance(W, Entries) else entries(W)
    shift = (e.cols - e.rows) % e.n
    out = {}
    for s in np.unique(shift):
        vals = e.vals[shift == s]
        if vals.size != e.n or np.ptp(vals) > atol:
            return None
        out[int(s)] = float(vals[0])
    return out


def is_mean(W, atol: float = 1e-12) -> bool:
    """Whether W = 11^T / n."""
    e = W if isinstance(W, Entries) else entries(W)
    return e.vals.size == e.n * e.n and bool(np.all(np.abs(e.vals - 1 / e.n) <= atol))


def to_mean(e: Entries, width: int | None = None) -> Mean:
    if not is_mean(e):
        raise ValueError("the mean kernel needs W = 11^T/n (complete, uniform)")
    return Mean()


def to_dense(e: Entries, width: int | None = None) -> Dense:
    W = np.zeros((e.n, e.n))
    W[e.rows, e.cols] = e.vals
    return Dense(jnp.asarray(W, weight_dtype()))


def to_roll(e: Entries, width: int | None = None) -> Roll:
    offsets = circulant_offsets(e)
    if offsets is None:
        raise ValueError("the roll kernel needs a circulant W")
    k = len(offsets)
    width = _width(width, k, "roll width", "shifts")
    shifts = np.zeros(width, np.int32)
    weights = np.zeros(width)
    shifts[:k] = list(offsets)
    weights[:k] = list(offsets.values())
    return Roll(jnp.asarray(shifts), jnp.asarray(weights, weight_dtype()))


def to_table(e: Entries, width: int | None = None) -> Table:
    """Column 0 holds the self weight W_ii; then in-neighbours by index."""
    n = e.n
    off = e.rows != e.cols
    r, c, v = e.rows[off], e.cols[off], e.vals[off]
    counts = np.bincount(r, minlength=n)
    width = _width(width, int(counts.max(initial=0)) + 1, "table width", "columns")
    pos = np.arange(r.size) - (np.cumsum(counts) - counts)[r] + 1
    idx = np.tile(np.arange(n, dtype=np.int32)[:, None], (1, width))
    weight = np.zeros((n, width))
    idx[r, pos] = c
    weight[r, pos] = v
    diag = ~off
    weight[e.rows[diag], 0] = e.vals[diag]
    return Table(jnp.asarray(idx), jnp.asarray(weight, weight_dtype()))


def to_segment(e: Entries, width: int | None = None) -> Segment:
    """Edges sorted by receiver; padding edges (n-1 -> n-1, weight 0) at the end."""
    width = _width(width, e.vals.size, "segment width", "edges")
    pad = width - e.vals.size
    last = e.n - 1
    return Segment(
        jnp.asarray(np.pad(e.cols, (0, pad), constant_values=last), jnp.int32),
        jnp.asarray(np.pad(e.rows, (0, pad), constant_values=last), jnp.int32),
        jnp.asarray(np.pad(e.vals, (0, pad)), weight_dtype()),
    )


def _width(width: int | None, needed: int, what: str, unit: str) -> int:
    if width is None:
        return needed
    if width < needed:
        raise ValueError(f"{what} {width} < {needed} {unit} needed")
    return width


FROM_MATRIX = {
    "mean": to_mean,
    "dense": to_dense,
    "roll": to_roll,
    "table": to_table,
    "segment": to_segment,
}


def from_matrix(kernel: str, W, width: int | None = None) -> KernelArrays:
    """Kernel arrays for the host matrix ``W`` (dense or scipy.sparse).

    Args:
      kernel: ``"mean" | "dense" | "roll" | "table" | "segment"``.
      W: (n, n) mixing matrix, row i = weights peer i gives to each peer.
      width: pads roll shifts / table columns / segment edges to this size.
    """
    return FROM_MATRIX[kernel](entries(W), width)


def needed_width(kernel: str, W) -> int:
    """The smallest ``width`` that ``from_matrix(kernel, W, width)`` accepts."""
    e = entries(W)
    if kernel == "roll":
        return len(circulant_offsets(e) or {})
    if kernel == "table":
        return int(np.bincount(e.rows[e.rows != e.cols], minlength=e.n).max()) + 1
    if kernel == "segment":
        return int(e.vals.size)
    return 0


def choose_kernel(W) -> str:
    """Picks the fastest kernel for W from its structure (CPU cost model).

    ``mean`` for W = J; else the cheapest of ``table`` (``roll`` when W is
    circulant), ``dense`` and ``segment`` under the cost model above: sparse
    graphs get a table/roll, dense ones a matmul, hubs (star) a scatter.
    """
    e = entries(W)
    if is_mean(e):
        return "mean"
    degree = np.bincount(e.rows, minlength=e.n)  # in-degree incl. self
    costs = {
        "table": e.n * (degree.mean() + degree.max()) / 2,
        "dense": e.n * dense_columns(e.n),
        "segment": SEGMENT_COST * e.vals.size,
    }
    best = min(costs, key=costs.get)
    if best == "table" and circulant_offsets(e) is not None:
        return "roll"
    return best


def _mean_entries(a: Mean, n: int):
    rows, cols = np.divmod(np.arange(n * n), n)
    return rows, cols, np.full(n * n, 1.0 / n)


def _dense_entries(a: Dense, n: int):
    W = np.asarray(a.W, np.float64)
    rows, cols = np.nonzero(W)
    return rows, cols, W[rows, cols]


def _roll_entries(a: Roll, n: int):
    shifts, weights = np.asarray(a.shifts), np.asarray(a.weights)
    peers = np.arange(n)
    cols = (peers[None, :] + shifts[:, None]) % n
    return np.tile(peers, shifts.size), cols.ravel(), np.repeat(weights, n)


def _table_entries(a: Table, n: int):
    idx, weight = np.asarray(a.idx), np.asarray(a.weight)
    return np.repeat(np.arange(n), idx.shape[1]), idx.ravel(), weight.ravel()


def _segment_entries(a: Segment, n: int):
    return np.asarray(a.receivers), np.asarray(a.senders), np.asarray(a.weight)


HOST_ENTRIES = {
    Mean: _mean_entries,
    Dense: _dense_entries,
    Roll: _roll_entries,
    Table: _table_entries,
    Segment: _segment_entries,
}


def to_host(arrays: KernelArrays, n: int) -> sp.csr_array:
    """The host W held by kernel arrays (numpy or jax); inverse of ``from_matrix``.

    Duplicate entries (a shift listed twice, padding) are summed, as ``mix`` does.
    """
    rows, cols, vals = HOST_ENTRIES[type(arrays)](arrays, n)
    vals = np.asarray(vals, np.float64)
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))
