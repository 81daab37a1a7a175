"""Mixing weights for a graph, and the checks every mixing matrix must pass.

Weight rules (registry ``WEIGHTS``; a scenario names one with ``weights:``):

- ``metropolis`` (default): w_ij = 1/(1 + max(d_i, d_j)) on edges, w_ii = rest.
  Symmetric and doubly stochastic on any undirected graph.
- ``max_degree``: W = I - L/(d_max + 1). Symmetric, doubly stochastic.
- ``uniform``: 1/(d_i + 1) over the closed (in-)neighbourhood. Row-stochastic
  only (doubly stochastic on regular graphs); the rule for directed graphs.

``lazy: true`` replaces W by (I + W)/2 (exact diffusion; D^2 wants
lambda_min(W) > -1/3).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from workbench.registry import Registry
from workbench.topology.base import PATH, Static, require

WEIGHTS = Registry("weights")
ATOL = 1e-9


def adjacency(G: nx.Graph, n: int) -> sp.csr_array:
    """0/1 adjacency without self-loops; ``A[u, v] = 1`` for an edge u -> v."""
    require(
        G.number_of_nodes() == n,
        "",
        f"graph has {G.number_of_nodes()} nodes, expected n={n}",
    )
    A = nx.to_scipy_sparse_array(G, nodelist=range(n), weight=None, format="csr")
    A = sp.csr_array(sp.triu(A, 1) + sp.tril(A, -1))
    A.data[:] = 1.0
    return A


def _undirected(G: nx.Graph, rule: str) -> None:
    require(
        not G.is_directed(),
        "weights",
        f"'{rule}' weights need an undirected "
        "graph; use weights: uniform for directed graphs",
    )


@WEIGHTS.register("metropolis")
def metropolis(G: nx.Graph, A: sp.csr_array) -> sp.csr_array:
    """Metropolis-Hastings: w_ij = 1/(1 + max(d_i, d_j))."""
    _undirected(G, "metropolis")
    deg = np.asarray(A.sum(axis=1)).ravel()
    coo = A.tocoo()
    w = 1.0 / (1.0 + np.maximum(deg[coo.row], deg[coo.col]))
    return _with_diagonal(sp.csr_array((w, (coo.row, coo.col)), shape=A.shape))


@WEIGHTS.register("max_degree")
def max_degree(G: nx.Graph, A: sp.csr_array) -> sp.csr_array:
    """W = I - L/(d_max + 1)."""
    _undirected(G, "max_degree")
    d_max = float(A.sum(axis=1).max(initial=0))
    return _with_diagonal(A / (d_max + 1.0))


@WEIGHTS.register("uniform")
def uniform(G: nx.Graph, A: sp.csr_array) -> sp.csr_array:
    """1/(d_i + 1) over i's closed in-neighbourhood (row-stochastic)."""
    incoming = sp.csr_array(A.T)  # row v lists the senders u of edges u -> v
    deg = np.asarray(incoming.sum(axis=1)).ravel()
    W = sp.diags_array(1.0 / (deg + 1.0)) @ (incoming + sp.eye_array(A.shape[0]))
    return sp.csr_array(W)


def _with_diagonal(off: sp.csr_array) -> sp.csr_array:
    """Adds w_ii = 1 - sum_j w_ij."""
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    return sp.csr_array(off + sp.diags_array(diag))


def lazy_matrix(W: sp.csr_array) -> sp.csr_array:
    """(I + W) / 2."""
    return sp.csr_array((W + sp.eye_array(W.shape[0])) / 2.0)


def check_connected(A: sp.spmatrix, directed: bool, key: str = "") -> None:
    """Raises a ScenarioError when the graph cannot reach consensus."""
    connection = "strong" if directed else "weak"
    count, _ = connected_components(A, directed=directed, connection=connection)
    require(
        count == 1,
        key,
        f"the graph is disconnected ({count} components); "
        "peers could never agree: choose a connected graph",
    )


def mixing_matrix(
    G: nx.Graph, n: int, weights: str, lazy: bool, connected: bool = True
) -> sp.csr_array:
    """W of graph ``G`` with the named rule; ``connected`` checks connectivity."""
    rule = WEIGHTS.lookup(weights, f"{PATH}.weights")
    A = adjacency(G, n)
    if connected:
        check_connected(A, G.is_directed())
    W = rule(G, A)
    return lazy_matrix(W) if lazy else W


def static(G: nx.Graph, n: int, weights: str, lazy: bool) -> Static:
    """The ``Static`` topology of graph ``G`` with the named weight rule."""
    return Static(mixing_matrix(G, n, weights, lazy), G)


def validate(W: sp.csr_array, require_doubly_stochastic: bool, key: str = "") -> None:
    """Checks W is (doubly) stochastic; one-line ScenarioError otherwise.

    Args:
      W: (n, n) mixing matrix.
      require_doubly_stochastic: also require column sums of 1 (the average
        is preserved), as most decentralized algorithms do.
      key: scenario key under ``topology`` to blame.
    """
    W = sp.csr_array(W)
    lowest = W.data.min(initial=0.0)
    require(
        lowest >= -ATOL, key, f"mixing weights must be non-negative, got {lowest:.3g}"
    )
    rows = np.asarray(W.sum(axis=1)).ravel()
    require(
        np.allclose(rows, 1.0, atol=ATOL),
        key,
        "mixing weights are not "
        f"row-stochastic (row sums in [{rows.min():.6g}, {rows.max():.6g}])",
    )
    if require_doubly_stochastic:
        cols = np.asarray(W.sum(axis=0)).ravel()
        require(
            np.allclose(cols, 1.0, atol=ATOL),
            key or "weights",
            "mixing "
            "weights are not doubly stochastic (column sums in "
            f"[{cols.min():.6g}, {cols.max():.6g}]) but the algorithm needs "
            "the average preserved: use weights: metropolis",
        )


def is_doubly_stochastic(W: sp.csr_array) -> bool:
    cols = np.asarray(sp.csr_array(W).sum(axis=0)).ravel()
    return bool(np.allclose(cols, 1.0, atol=ATOL))
