"""Shared types of the topology library: the registry, builder results, Topology.

A registry entry builds one of three things from its scenario keys (plus the
engine's ``n`` and ``seed``):

- ``Static``:   one host mixing matrix W (and its graph, for diagnostics);
- ``Periodic``: one period of host matrices, indexed by ``t % period`` in jit;
- ``Sampler``:  a jittable ``at(data, t, key)`` that samples W_t from ``key``.

``build_topology`` (workbench.topology.build) turns any of them into the
``Topology`` the engine consumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

import jax
import networkx as nx
import numpy as np
import scipy.sparse as sp

from workbench.errors import ScenarioError
from workbench.registry import Registry

TOPOLOGIES = Registry("topology", context=("n", "seed"))
PATH = "topology"  # scenario path of the topology section, for messages


class Static(NamedTuple):
    """A static topology: one mixing matrix."""

    W: sp.csr_array  # (n, n) row i = weights peer i gives to each peer
    graph: nx.Graph  # the communication graph (DiGraph when directed)


class Periodic(NamedTuple):
    """A periodic sequence W_0, W_1, ... (round t uses W_{t % period})."""

    Ws: tuple[sp.csr_array, ...]  # period x (n, n)


class Sampler(NamedTuple):
    """A random dynamic topology sampled inside jit each round."""

    at: Callable  # (data, t, key) -> kernel arrays; hashable, jittable
    data: Any  # pytree of arrays the sampler reads (may be ())
    doubly_stochastic: bool  # whether every W_t preserves the mean


@dataclasses.dataclass(frozen=True)
class Topology:
    """What the engine needs: kernel arrays per round and diagnostics.

    The engine calls ``topo.at(topo.data, t, key)`` inside ``lax.scan`` and
    mixes with ``workbench.comm.mix(arrays, params)``. ``data`` is an argument
    of the jitted step, so a new graph with the same shapes never recompiles.
    """

    n: int
    kernel: str  # "mean" | "dense" | "roll" | "table" | "segment"
    data: Any  # pytree of jnp arrays (kernel arrays, stacked, or sampler data)
    at: Callable  # static, jittable: (data, t: int32 scalar, key) -> KernelArrays
    W: np.ndarray | sp.csr_array | None  # host W (static; sparse when n > 4096)
    info: dict  # diagnostics (rho, spectral_gap, ...), JSON-serializable


def static_at(data, t, key):
    """Round-t arrays of a static topology: always the same arrays."""
    del t, key
    return data


def periodic_at(data, t, key):
    """Round-t arrays of a periodic stack: ``data[t % period]``."""
    del key
    return jax.tree.map(lambda a: a[t % a.shape[0]], data)


def circulant(n: int, offsets: dict[int, float]) -> sp.csr_array:
    """Circulant W with ``W[i, (i + s) % n] = offsets[s]`` (shifts may repeat mod n)."""
    rows = np.tile(np.arange(n), len(offsets))
    cols = np.concatenate([(np.arange(n) + s) % n for s in offsets])
    vals = np.repeat(np.asarray(list(offsets.values()), np.float64), n)
    return sp.csr_array((vals, (rows, cols)), shape=(n, n))


def fail(key: str, message: str) -> NoReturn:
    """Raises ``ScenarioError("topology.<key>", message)`` (``key`` may be "")."""
    raise ScenarioError(f"{PATH}.{key}" if key else PATH, message)


def require(ok: bool, key: str, message: str) -> None:
    """``fail(key, message)`` unless ``ok``."""
    if not ok:
        fail(key, message)
