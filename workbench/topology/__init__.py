"""Topologies: static graphs, mixing weights, dynamic schedules, diagnostics.

``build_topology(spec, n, seed)`` turns a scenario section such as
``{name: random_regular, d: 4, weights: metropolis}`` into a ``Topology``:
kernel arrays for ``workbench.comm.mix`` (``topo.at(topo.data, t, key)`` each
round, inside jit) plus diagnostics in ``topo.info``.
"""

from workbench.topology import (  # noqa: F401
    base_k,
    dynamic,
    equitopo,
    fileio,
    graphs,
    hyperedges,
)
from workbench.topology.base import (
    TOPOLOGIES,
    Periodic,
    Sampler,
    Static,
    Topology,
    periodic_at,
    static_at,
)
from workbench.topology.build import build_topology
from workbench.topology.fileio import read_graph, write_graph
from workbench.topology.weights import WEIGHTS

__all__ = [
    "TOPOLOGIES",
    "WEIGHTS",
    "Periodic",
    "Sampler",
    "Static",
    "Topology",
    "build_topology",
    "periodic_at",
    "read_graph",
    "static_at",
    "write_graph",
]
