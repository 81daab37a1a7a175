"""Which message rows go from which node to which, per exchange kind (host side).

A round's messages are stacked arrays whose leading axes index deliveries:
``(m, ...)`` over participants for ``average``, ``gather`` and ``server``;
``(n, k, ...)`` over (receiver, table column) for ``edge``, flattened here to
``n * k`` rows. A route lists, for each (sender rank, receiver rank), the rows
the receiver needs: those whose sender peer the first owns and whose receiver
peer (or, for ``average``/``gather``, any out-neighbour) the second owns.
``server``, ``coordinator`` and ``hierarchy`` rows all go to rank 0, which
runs the exchange and sends each node its peers' part back. Every node
computes the same routes from the same W, so a receiver knows exactly what to
expect from whom.

Faults change W here, aligned with the simulator's neighbour table (same
columns, so per-edge state stays in place): ``surviving`` gives the
Metropolis–Hastings weights of the graph without the dead peers;
``drop_edges`` moves the weight of messages that never came to the receiver's
own (the semantics of link failures in simulation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class Route(NamedTuple):
    rows: dict  # (sender rank, receiver rank) -> (r,) int64 flat rows, sorted
    own: np.ndarray  # (r,) rows this node's peers sent (kept locally)


def _pairs(rows, src, dst, me, live) -> Route:
    cross = np.isin(src, live) & np.isin(dst, live) & (src != dst)
    out = {}
    for s, d in set(zip(src[cross].tolist(), dst[cross].tolist(), strict=True)):
        out[s, d] = np.unique(rows[cross & (src == s) & (dst == d)])
    return Route(out, np.unique(rows[src == me]))


def _senders(idx, weight, peers, owner, me, live) -> Route:
    """average / gather: sender j's row goes to each rank owning an out-neighbour."""
    n, k = idx.shape
    real = (weight != 0) & (idx != np.arange(n)[:, None])
    receivers = np.broadcast_to(np.arange(n)[:, None], (n, k))[real]
    senders = idx[real]
    pos = np.full(n, -1)
    pos[peers] = np.arange(len(peers))
    return _pairs(pos[senders], owner[senders], owner[receivers], me, live)


def _edges(idx, weight, peers, owner, me, live) -> Route:
    """edge: message (i, c) goes from the owner of idx[i, c] to the owner of i."""
    n, k = idx.shape
    real = (weight != 0) & (idx != np.arange(n)[:, None])
    flat = np.arange(n * k).reshape(n, k)
    receivers = np.broadcast_to(np.arange(n)[:, None], (n, k))
    route = _pairs(flat[real], owner[idx[real]], owner[receivers[real]], me, live)
    return route._replace(own=flat[real & (owner[idx] == me)])


def _server(idx, weight, peers, owner, me, live) -> Route:
    """server (coordinator, hierarchy): every participant's row goes to rank 0."""
    pos = np.arange(len(peers))
    src = owner[peers]
    route = _pairs(pos, src, np.zeros_like(src), me, live)
    return route._replace(own=pos[src == me])


ROUTES: dict[str, Callable] = {
    "average": _senders,
    "gather": _senders,
    "edge": _edges,
    "server": _server,
    "coordinator": _server,
    "hierarchy": _server,
}


def route(kind, idx, weight, peers, owner, me, live) -> Route:
    """The round's route for exchange ``kind`` (host arrays; live: ranks)."""
    live = np.asarray(sorted(live))
    return ROUTES[kind](np.asarray(idx), np.asarray(weight), np.asarray(peers),
                        owner, me, live)  # fmt: skip


def surviving(idx: np.ndarray, weight: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights (n, k) on the table's graph without dead peers.

    Edge {i, j} (either direction in the table) between live peers gets
    1 / (1 + max(d_i, d_j)) with d the live degree; column 0 takes the rest
    (a dead peer keeps weight 1 on itself). Same columns as ``idx``.
    """
    n, k = idx.shape
    rows = np.broadcast_to(np.arange(n)[:, None], (n, k))
    real = (weight != 0) & (idx != rows) & alive[rows] & alive[idx]
    # the undirected graph of the live edges, with each edge once per endpoint
    adj = np.zeros((n, n), bool)
    adj[rows[real], idx[real]] = True
    adj |= adj.T
    degree = adj.sum(axis=1)
    out = np.zeros((n, k))
    w = 1.0 / (1.0 + np.maximum(degree[rows], degree[idx]))
    live_edge = (idx != rows) & adj[rows, idx]
    out[live_edge] = w[live_edge]
    # a table lists each in-neighbour once; count it once
    out[:, 0] = 1.0 - out.sum(axis=1)
    return out


def drop_edges(weight: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """(n, k) weights with the ``missing`` (n, k) entries moved to column 0."""
    out = np.where(missing, 0.0, weight)
    out[:, 0] += np.where(missing, weight, 0.0).sum(axis=1)
    return out
