"""EquiTopo graphs (Song et al., NeurIPS 2022, "Communication-efficient topologies
for decentralized learning with O(1) consensus rate").

Basis: W_a = (1/n) I + ((n-1)/n) P^a, with (P^a x)_i = x_{(i+a) % n}.

- ``d_equistatic``: W = (1/M) sum_m W_{a_m}, M random offsets (directed, static).
- ``u_equistatic``: W = (1/2M) sum_m (W_{a_m} + W_{a_m}^T) (undirected, static).
- ``od_equidyn``: W_t = (1-eta) I + eta W_{a_t}, a random offset per round
  (one-peer directed; roll kernel with a traced shift).
- ``ou_equidyn``: W_t = (1-eta) I + eta ((1/n) I + ((n-1)/n) M_t), M_t a
  random matching along the cycles of i -> i + a_t (one-peer undirected).

Offsets are drawn from ``1..n-1`` (or, with ``M``, from a fixed random basis
of M offsets, as the reference code's ``Ms``). M defaults to ceil(log2 n), the
degree of the exponential graph. eta = 1 degrades the per-round contraction of
the dynamic variants to about 1 - 2/n; 0.5 is the default.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from workbench.comm import Roll, Table
from workbench.comm.arrays import weight_dtype
from workbench.topology.base import (
    TOPOLOGIES,
    Sampler,
    Static,
    circulant,
    fail,
    require,
)
from workbench.topology.graphs import directed_circulant
from workbench.topology.weights import adjacency, check_connected, lazy_matrix


def _default_m(n: int, M: int | None) -> int:
    M = max(1, math.ceil(math.log2(n))) if M is None else M
    require(M >= 1, "M", f"must be >= 1, got {M}")
    return M


def _offsets(n: int, seed: int, M: int, tries: int = 100) -> list[int]:
    """M random offsets in 1..n-1 whose circulant graph is connected."""
    require(n >= 2, "", f"EquiTopo graphs need n >= 2, got n={n}")
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        offsets = rng.integers(1, n, size=M)
        if math.gcd(n, *map(int, offsets)) == 1:  # the circulant is connected
            return [int(a) for a in offsets]
    fail("M", f"no connected draw of M={M} offsets for n={n}: raise M")


def _equistatic(n: int, seed: int, M: int, lazy: bool, undirected: bool) -> Static:
    offsets = _offsets(n, seed, M)
    weights: Counter = Counter({0: 1.0 / n})
    share = (n - 1) / n / M / (2 if undirected else 1)
    for a in offsets:
        weights[a] += share
        if undirected:
            weights[n - a] += share
    W = circulant(n, dict(weights))
    unique = sorted(set(offsets))
    G = nx.circulant_graph(n, unique) if undirected else directed_circulant(n, unique)
    check_connected(adjacency(G, n), G.is_directed())
    return Static(lazy_matrix(W) if lazy else W, G)


@TOPOLOGIES.register("d_equistatic")
def d_equistatic(n: int, seed: int, M: int | None = None, lazy: bool = False):
    """D-EquiStatic: mean of M random directed one-peer bases (M out-neighbours)."""
    return _equistatic(n, seed, _default_m(n, M), lazy, undirected=False)


@TOPOLOGIES.register("u_equistatic")
def u_equistatic(n: int, seed: int, M: int | None = None, lazy: bool = False):
    """U-EquiStatic: symmetrised D-EquiStatic (up to 2M neighbours)."""
    return _equistatic(n, seed, _default_m(n, M), lazy, undirected=True)


@dataclasses.dataclass(frozen=True)
class ODEquiDyn:
    """Round sampler: W_t = (1 - eta) I + eta W_a, a drawn from ``data``."""

    n: int
    eta: float

    def __call__(self, basis, t, key) -> Roll:
        del t
        a = basis[jax.random.randint(key, (), 0, basis.shape[0])]
        step = self.eta * (self.n - 1) / self.n
        shifts = jnp.stack([jnp.zeros((), jnp.int32), a])
        return Roll(shifts, jnp.asarray([1.0 - step, step], weight_dtype()))


@dataclasses.dataclass(frozen=True)
class OUEquiDyn:
    """Round sampler: one-peer undirected matching along the cycles of i -> i+a."""

    n: int
    eta: float

    def __call__(self, basis, t, key) -> Table:
        del t
        n = self.n
        k_offset, k_start = jax.random.split(key)
        a = basis[jax.random.randint(k_offset, (), 0, basis.shape[0])]
        length = n // jnp.gcd(a, n)  # every cycle of i -> i + a has this length
        k = jnp.arange(n, dtype=jnp.int32)
        node = (k // length + (k % length) * a % n) % n  # cycle k // length
        pos = jnp.zeros(n, jnp.int32).at[node].set(k % length)
        start = jax.random.randint(k_start, (), 0, length)
        p = (pos - start) % length
        alone = (length % 2 == 1) & (p == length - 1)
        partner = jnp.where(p % 2 == 0, k + a, k - a) % n
        partner = jnp.where(alone, k, partner)
        step = self.eta * (n - 1) / n
        weight = jnp.stack([jnp.full(n, 1.0 - step), jnp.full(n, step)], axis=1)
        return Table(jnp.stack([k, partner], axis=1), weight.astype(weight_dtype()))


def _dynamic(n, seed, M, eta, sampler_cls) -> Sampler:
    require(n >= 2, "", f"EquiTopo graphs need n >= 2, got n={n}")
    require(0.0 < eta <= 1.0, "eta", f"needs 0 < eta <= 1, got {eta}")
    basis = np.arange(1, n) if M is None else _offsets(n, seed, M)
    data = jnp.asarray(basis, jnp.int32)
    return Sampler(sampler_cls(n, float(eta)), data, doubly_stochastic=True)


@TOPOLOGIES.register("od_equidyn")
def od_equidyn(n: int, seed: int, eta: float = 0.5, M: int | None = None):
    """OD-EquiDyn: one random directed peer per round (roll kernel)."""
    return _dynamic(n, seed, M, eta, ODEquiDyn)


@TOPOLOGIES.register("ou_equidyn")
def ou_equidyn(n: int, seed: int, eta: float = 0.5, M: int | None = None):
    """OU-EquiDyn: one random undirected peer per round (table kernel)."""
    return _dynamic(n, seed, M, eta, OUEquiDyn)
