"""Static graphs from networkx generators, weighted by a rule from ``weights``.

Scenario sections look like ``{name: random_regular, d: 4, weights: metropolis}``.
Every builder takes the engine's ``n`` and ``seed`` and returns a ``Static``.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from workbench.topology.base import TOPOLOGIES, fail, require
from workbench.topology.weights import static


def _integers(G: nx.Graph) -> nx.Graph:
    """Relabels nodes 0..n-1 in sorted order (grid tuples row-major, bits)."""
    return nx.convert_node_labels_to_integers(G, ordering="sorted")


@TOPOLOGIES.register("ring")
def ring(n: int, seed: int, weights: str = "metropolis", lazy: bool = False):
    """Cycle graph; MH weights 1/3."""
    del seed
    return static(nx.cycle_graph(n), n, weights, lazy)


@TOPOLOGIES.register("torus")
def torus(
    n: int,
    seed: int,
    rows: int | None = None,
    cols: int | None = None,
    weights: str = "metropolis",
    lazy: bool = False,
):
    """2-D periodic grid, ``rows x cols = n`` (default square, n = m * m)."""
    del seed
    if rows is None and cols is None:
        rows = cols = math.isqrt(n)
        require(rows * cols == n, "rows", f"n={n} is not a square: give rows and cols")
    rows = rows or n // cols
    cols = cols or n // rows
    require(rows * cols == n, "rows", f"rows x cols = {rows} x {cols} != n={n}")
    G = nx.grid_2d_graph(rows, cols, periodic=True)
    return static(_integers(G), n, weights, lazy)


@TOPOLOGIES.register("complete")
def complete(n: int, seed: int, weights: str = "metropolis", lazy: bool = False):
    """All-to-all; MH weights give W = J (the mean kernel)."""
    del seed
    return static(nx.complete_graph(n), n, weights, lazy)


@TOPOLOGIES.register("star")
def star(n: int, seed: int, weights: str = "metropolis", lazy: bool = False):
    """Node 0 is the hub; rho = 1 - 1/n with MH weights."""
    del seed
    return static(nx.star_graph(n - 1), n, weights, lazy)


@TOPOLOGIES.register("hypercube")
def hypercube(n: int, seed: int, weights: str = "metropolis", lazy: bool = False):
    """log2(n)-dimensional hypercube (n a power of two); node = bit string."""
    del seed
    k = n.bit_length() - 1
    require(n >= 1 and 1 << k == n, "", f"hypercube needs n a power of 2, got n={n}")
    return static(_integers(nx.hypercube_graph(k)), n, weights, lazy)


@TOPOLOGIES.register("exponential")
def exponential(n: int, seed: int, weights: str = "uniform", lazy: bool = False):
    """Static exponential graph (arXiv 2110.13363): i -> i + 2^j mod n.

    Directed circulant, j = 0..floor(log2(n-1)); uniform weights give
    1/(ceil(log2 n) + 1) everywhere (doubly stochastic).
    """
    del seed
    offsets = [2**j for j in range((n - 1).bit_length())] if n > 1 else []
    return static(directed_circulant(n, offsets), n, weights, lazy)


def directed_circulant(n: int, offsets: list[int]) -> nx.DiGraph:
    """Edges i -> (i + s) % n (nx.circulant_graph adds both directions)."""
    G = nx.empty_graph(n, create_using=nx.DiGraph)
    G.add_edges_from((i, (i + s) % n) for s in offsets for i in range(n))
    G.remove_edges_from(nx.selfloop_edges(G))
    return G


@TOPOLOGIES.register("erdos_renyi")
def erdos_renyi(
    n: int,
    seed: int,
    p: float | None = None,
    c: float = 2.0,
    max_tries: int = 100,
    weights: str = "metropolis",
    lazy: bool = False,
):
    """G(n, p), p = c ln(n)/n by default, redrawn until connected."""
    p = min(1.0, c * math.log(max(n, 2)) / n) if p is None else p
    require(0.0 <= p <= 1.0, "p", f"must be a probability, got {p}")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        G = nx.gnp_random_graph(n, p, seed=int(rng.integers(2**31)))
        if nx.is_connected(G):
            return static(G, n, weights, lazy)
    fail(
        "p",
        f"G(n={n}, p={p:.4g}) was disconnected in {max_tries} draws: raise p (or c)",
    )


@TOPOLOGIES.register("random_regular")
def random_regular(
    n: int,
    seed: int,
    d: int = 4,
    max_tries: int = 100,
    weights: str = "metropolis",
    lazy: bool = False,
):
    """Uniform random d-regular graph (an expander), redrawn until connected."""
    require(0 < d < n, "d", f"needs 0 < d < n={n}, got d={d}")
    require(
        n * d % 2 == 0, "d", f"n*d must be even for a d-regular graph, got n={n}, d={d}"
    )
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        G = nx.random_regular_graph(d, n, seed=int(rng.integers(2**31)))
        if nx.is_connected(G):
            return static(G, n, weights, lazy)
    fail(
        "d",
        f"random {d}-regular graphs on n={n} were disconnected in "
        f"{max_tries} draws: raise d",
    )


@TOPOLOGIES.register("small_world")
def small_world(
    n: int,
    seed: int,
    k: int = 4,
    p: float = 0.1,
    weights: str = "metropolis",
    lazy: bool = False,
):
    """Connected Watts-Strogatz graph: ring lattice of k neighbours, rewired w.p. p."""
    require(2 <= k < n, "k", f"needs 2 <= k < n={n}, got k={k}")
    require(0.0 <= p <= 1.0, "p", f"must be a probability, got {p}")
    try:
        G = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
    except nx.NetworkXError:
        fail("p", f"no connected Watts-Strogatz graph with k={k}, p={p}")
    return static(G, n, weights, lazy)
