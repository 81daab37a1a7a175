"""Dynamic topologies: a new mixing matrix every round, never a recompilation.

Periodic ones are host stacks indexed by ``t % period`` inside jit; random ones
sample W_t inside jit from the round key (the engine derives it from the seed).

- ``one_peer_exponential``: W_t = (I + P^(2^(t mod tau)))/2, tau = ceil(log2 n);
  the period product is J exactly iff n is a power of two.
- ``peer_sampler``: a fresh random d-regular graph per round (decentralizepy's
  peer sampler): a random relabelling of the circulant C_n(1..d/2) (+ n/2 if d
  is odd), weights 1/(d+1).
- ``random_matching``: synchronous pairwise gossip; one random perfect
  matching per round, matched pairs average (odd n: one peer sits out).
- ``el_oracle``: Epidemic Learning's s-regular random digraph per round
  (a random relabelling of i -> i+1..i+s), weights 1/(s+1), doubly stochastic.
- ``el_local``: each peer sends to s uniform random others; a receiver
  averages its own and the received models: row-stochastic, the mean drifts.
- ``link_failures``: a static base graph whose undirected edges drop
  independently with probability p per round; the dropped weight moves to the
  diagonal, so W_t stays symmetric and doubly stochastic.
- ``random_edge``: pairwise gossip (Boyd et al. 2006); one uniform random
  edge {i, j} of a static base graph per round, x_i, x_j <- (x_i + x_j)/2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from workbench.comm import Segment, Table, from_matrix
from workbench.comm.arrays import weight_dtype
from workbench.errors import ScenarioError
from workbench.topology.base import (
    PATH,
    TOPOLOGIES,
    Periodic,
    Sampler,
    Static,
    circulant,
    fail,
    require,
)


@TOPOLOGIES.register("one_peer_exponential")
def one_peer_exponential(n: int, seed: int):
    """One-peer exponential graph (arXiv 2110.13363), period ceil(log2 n)."""
    del seed
    tau = max((n - 1).bit_length(), 1)
    return Periodic(tuple(circulant(n, {0: 0.5, 2**k % n: 0.5}) for k in range(tau)))


def permuted_circulant(key, n: int, offsets: tuple[int, ...]):
    """(n, 1 + len(offsets)) table: column 0 self, then perm[(pos(i) + o) % n]."""
    perm = jax.random.permutation(key, n).astype(jnp.int32)
    pos = jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
    shifts = jnp.asarray((0, *offsets), jnp.int32)
    return perm[(pos[:, None] + shifts[None, :]) % n]


@dataclasses.dataclass(frozen=True)
class PermutedCirculant:
    """Round sampler: a random relabelling of a circulant graph, uniform weights."""

    n: int
    offsets: tuple[int, ...]  # receive from perm[pos + o] for each offset o

    def __call__(self, data, t, key) -> Table:
        del data, t
        idx = permuted_circulant(key, self.n, self.offsets)
        weight = jnp.full(idx.shape, 1.0 / idx.shape[1], weight_dtype())
        return Table(idx, weight)


@TOPOLOGIES.register("peer_sampler")
def peer_sampler(n: int, seed: int, d: int = 4):
    """A random d-regular graph every round, weights 1/(d+1)."""
    del seed
    require(0 < d < n, "d", f"needs 0 < d < n={n}, got d={d}")
    require(
        n * d % 2 == 0, "d", f"n*d must be even for a d-regular graph, got n={n}, d={d}"
    )
    half = [s for k in range(1, d // 2 + 1) for s in (k, n - k)]
    offsets = tuple(half + ([n // 2] if d % 2 else []))
    return Sampler(PermutedCirculant(n, offsets), (), doubly_stochastic=True)


@TOPOLOGIES.register("el_oracle")
def el_oracle(n: int, seed: int, s: int = 2):
    """EL-Oracle: a random s-regular digraph per round, weights 1/(s+1)."""
    del seed
    require(0 < s < n, "s", f"needs 0 < s < n={n}, got s={s}")
    offsets = tuple(n - c for c in range(1, s + 1))  # receive from pos - c
    return Sampler(PermutedCirculant(n, offsets), (), doubly_stochastic=True)


@dataclasses.dataclass(frozen=True)
class RandomMatching:
    """Round sampler: peers at positions 2i, 2i+1 of a random permutation pair up."""

    n: int

    def __call__(self, data, t, key) -> Table:
        del data, t
        n = self.n
        perm = jax.random.permutation(key, n).astype(jnp.int32)
        pos = jnp.zeros(n, jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32))
        mate = pos ^ 1  # partner's position; n when n is odd and i is last
        self_idx = jnp.arange(n, dtype=jnp.int32)
        partner = jnp.where(mate < n, perm[jnp.minimum(mate, n - 1)], self_idx)
        idx = jnp.stack([self_idx, partner], axis=1)
        return Table(idx, jnp.full((n, 2), 0.5, weight_dtype()))


@TOPOLOGIES.register("random_matching")
def random_matching(n: int, seed: int):
    """Synchronous randomized pairwise gossip: x_i, x_j <- (x_i + x_j)/2."""
    del seed
    return Sampler(RandomMatching(n), (), doubly_stochastic=True)


def distinct_offsets(key, n: int, s: int):
    """(n, s) offsets in 1..n-1, distinct per row, uniform (Floyd's algorithm)."""
    m = n - 1
    chosen = jnp.zeros((n, s), jnp.int32)
    for j, key_j in enumerate(jax.random.split(key, s)):
        top = m - s + j  # draw from 0..top inclusive
        draw = jax.random.randint(key_j, (n,), 0, top + 1, dtype=jnp.int32)
        taken = jnp.any(chosen[:, :j] == draw[:, None], axis=1)
        chosen = chosen.at[:, j].set(jnp.where(taken, top, draw))
    return chosen + 1


@dataclasses.dataclass(frozen=True)
class ELLocal:
    """Round sampler: every peer pushes to s random others; receivers average."""

    n: int
    s: int

    def __call__(self, data, t, key) -> Segment:
        del data, t
        n, s = self.n, self.s
        peers = jnp.arange(n, dtype=jnp.int32)
        targets = (peers[:, None] + distinct_offsets(key, n, s)) % n
        senders = jnp.concatenate([peers, jnp.repeat(peers, s)])
        receivers = jnp.concatenate([peers, targets.reshape(-1)])
        order = jnp.argsort(receivers, stable=True)
        senders, receivers = senders[order], receivers[order]
        count = jnp.zeros(n, weight_dtype()).at[receivers].add(1.0)  # 1 + #received
        return Segment(senders, receivers, 1.0 / count[receivers])


@TOPOLOGIES.register("el_local")
def el_local(n: int, seed: int, s: int = 2):
    """EL-Local: push to s random peers; row-stochastic only (mean not kept)."""
    del seed
    require(0 < s < n, "s", f"needs 0 < s < n={n}, got s={s}")
    return Sampler(ELLocal(n, s), (), doubly_stochastic=False)


@dataclasses.dataclass(frozen=True)
class LinkFailures:
    """Round sampler: drop each undirected edge of a base table w.p. ``p``."""

    n: int
    p: float

    def __call__(self, base: Table, t, key) -> Table:
        del t
        i = jnp.arange(self.n, dtype=jnp.int32)[:, None]
        pair = jnp.minimum(i, base.idx) * self.n + jnp.maximum(i, base.idx)
        draw = jax.vmap(lambda e: jax.random.uniform(jax.random.fold_in(key, e)))
        up = draw(pair.reshape(-1)).reshape(pair.shape) >= self.p
        kept = jnp.where(up, base.weight, 0.0).at[:, 0].set(0.0)
        diag = 1.0 - jnp.sum(kept, axis=1)
        return Table(base.idx, kept.at[:, 0].set(diag))


def static_base(n: int, seed: int, graph: dict[str, Any] | None, who: str) -> Static:
    """The static base graph ``topology.graph`` (default ring) of a sampler."""
    spec = dict(graph or {"name": "ring"})
    where = f"{PATH}.graph"
    try:
        base = TOPOLOGIES.build(spec, where, n=n, seed=seed)
    except ScenarioError as e:  # blame topology.graph.<key>, not topology.<key>
        path = e.path if e.path.startswith(where) else where + e.path[len(PATH) :]
        raise ScenarioError(path, e.message) from None
    if not isinstance(base, Static):
        fail(
            "graph", f"'{spec.get('name')}' is dynamic; {who} needs a static base graph"
        )
    return base


@TOPOLOGIES.register("link_failures")
def link_failures(
    n: int, seed: int, p: float = 0.1, graph: dict[str, Any] | None = None
):
    """Bernoulli(p) link failures per round on a static base graph (default ring)."""
    require(0.0 <= p < 1.0, "p", f"needs 0 <= p < 1, got {p}")
    W = sp.csr_array(static_base(n, seed, graph, "link_failures").W)
    require(
        abs(W - W.T).max() < 1e-12,
        "graph",
        "link_failures needs an undirected base graph (symmetric W)",
    )
    table = from_matrix("table", W)
    return Sampler(LinkFailures(n, float(p)), table, doubly_stochastic=True)


@dataclasses.dataclass(frozen=True)
class RandomEdge:
    """Round sampler: one uniform random edge {i, j} of a base graph averages."""

    n: int

    def __call__(self, edges, t, key) -> Table:
        del t
        pick = edges[jax.random.randint(key, (), 0, edges.shape[0])]
        i, j = pick[0], pick[1]
        peers = jnp.arange(self.n, dtype=jnp.int32)
        partner = jnp.where(peers == i, j, jnp.where(peers == j, i, peers))
        paired = (partner != peers)[:, None]
        half = jnp.full((self.n, 2), 0.5, weight_dtype())
        alone = jnp.asarray([1.0, 0.0], weight_dtype())[None, :]
        return Table(
            jnp.stack([peers, partner], axis=1), jnp.where(paired, half, alone)
        )


@TOPOLOGIES.register("random_edge")
def random_edge(n: int, seed: int, graph: dict[str, Any] | None = None):
    """Pairwise gossip (Boyd et al. 2006): one uniform random edge per round.

    W_t = I - (e_i - e_j)(e_i - e_j)^T / 2 for the edge {i, j} drawn uniformly
    from the undirected edges E of a static base graph (default ring; only its
    pattern counts), so E[W_t] = I - L / (2|E|) with L the graph Laplacian.
    Peers off the edge keep their model (Table column 1 is self, weight 0).
    """
    base = static_base(n, seed, graph, "random_edge")
    A = sp.csr_array(sp.csr_array(base.W) != 0, dtype=np.int8)
    A.setdiag(0)
    A.eliminate_zeros()
    require(
        (A != A.T).nnz == 0,
        "graph",
        "random_edge needs an undirected base graph (symmetric pattern)",
    )
    rows, cols = sp.triu(A, k=1).nonzero()
    require(len(rows) > 0, "graph", "random_edge needs a base graph with an edge")
    edges = jnp.asarray(np.stack([rows, cols], axis=1), jnp.int32)  # (|E|, 2)
    return Sampler(RandomEdge(n), edges, doubly_stochastic=True)
