"""Graph files (decentralizepy formats), file-based and user-defined topologies.

Edges format: first line n, then one ``u v`` pair per line, 0-indexed; each
line is an undirected edge and listing both directions is allowed.
Adjacency format: first line n, then line i lists the neighbours of node i.
Blank lines and ``#`` comments are ignored. Self-loops are dropped.

Scenario sections::

    {name: file, path: topologies/ring16.edges}                # format by suffix
    {name: file_sequence, paths: [a.edges, b.edges]}           # periodic
    {name: user, fn: "mypkg.graphs:make", kwargs: {k: 3}}      # -> nx.Graph
"""

from __future__ import annotations

import functools
import importlib
import inspect
from pathlib import Path
from typing import Any, Literal

import networkx as nx

from workbench.errors import DataError
from workbench.topology.base import TOPOLOGIES, Periodic, fail, require
from workbench.topology.weights import (
    adjacency,
    check_connected,
    mixing_matrix,
    static,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".adj": "adjacency", ".adjacency": "adjacency"}  # otherwise edges
Format = Literal["auto", "edges", "adjacency"]


def resolve(path: str | Path) -> Path:
    """``path`` as given, else relative to the repository (shipped topologies/)."""
    given = Path(path).expanduser()
    for candidate in (given, REPO_ROOT / given):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"topology file not found: {path} (looked in the current "
        f"directory and {REPO_ROOT})"
    )


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the non-empty lines, comments stripped."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            out.append((number, tokens))
    return out


def _node(token: str, n: int, where: str) -> int:
    try:
        node = int(token)
    except ValueError:
        raise DataError(f"{where}: expected a node index, got {token!r}") from None
    if not 0 <= node < n:
        raise DataError(f"{where}: node {node} out of range 0..{n - 1}")
    return node


def read_graph(path: str | Path, format: Format = "auto") -> nx.Graph:
    """Reads an edges or adjacency file into an undirected graph on 0..n-1."""
    path = resolve(path)
    if format == "auto":
        format = SUFFIXES.get(path.suffix, "edges")
    lines = _lines(path)
    if not lines or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise DataError(f"{path}:1: expected the number of nodes on the first line")
    n = int(lines[0][1][0])
    G = nx.empty_graph(n)
    body = lines[1:]
    if format == "adjacency" and len(body) > n:
        raise DataError(f"{path}: {len(body)} adjacency lines for n={n} nodes")
    for row, (number, tokens) in enumerate(body):
        where = f"{path}:{number}"
        if format == "edges" and len(tokens) != 2:
            raise DataError(f"{where}: expected 'u v', got {' '.join(tokens)!r}")
        u = _node(tokens[0], n, where) if format == "edges" else row
        for token in tokens[1 if format == "edges" else 0 :]:
            v = _node(token, n, where)
            if u != v:
                G.add_edge(u, v)
    return G


def write_graph(G: nx.Graph, path: str | Path, format: Format = "auto") -> None:
    """Writes ``G`` (nodes 0..n-1) as an edges (each edge once) or adjacency file."""
    path = Path(path)
    if format == "auto":
        format = SUFFIXES.get(path.suffix, "edges")
    n = G.number_of_nodes()
    if format == "edges":
        pairs = sorted({(min(u, v), max(u, v)) for u, v in G.edges() if u != v})
        body = [f"{u} {v}" for u, v in pairs]
    else:
        body = [" ".join(map(str, sorted(G.neighbors(i)))) for i in range(n)]
    path.write_text("\n".join([str(n), *body]) + "\n")


def _graph_for(path: str, format: Format, n: int, key: str) -> nx.Graph:
    G = read_graph(path, format)
    require(
        G.number_of_nodes() == n,
        key,
        f"{path} has {G.number_of_nodes()} nodes but the scenario has n={n} peers",
    )
    return G


@TOPOLOGIES.register("file")
def from_file(
    n: int,
    seed: int,
    path: str,
    format: Format = "auto",
    weights: str = "metropolis",
    lazy: bool = False,
):
    """A graph from an edges/adjacency file (decentralizepy format)."""
    del seed
    return static(_graph_for(path, format, n, "path"), n, weights, lazy)


@TOPOLOGIES.register("file_sequence")
def file_sequence(
    n: int,
    seed: int,
    paths: list[str],
    format: Format = "auto",
    weights: str = "metropolis",
    lazy: bool = False,
):
    """A periodic sequence of graph files: round t uses ``paths[t % len(paths)]``.

    Each graph may be disconnected; their union must be connected.
    """
    del seed
    require(len(paths) > 0, "paths", "needs at least one graph file")
    graphs = [_graph_for(p, format, n, "paths") for p in paths]
    check_connected(adjacency(nx.compose_all(graphs), n), directed=False, key="paths")
    Ws = tuple(mixing_matrix(G, n, weights, lazy, connected=False) for G in graphs)
    return Periodic(Ws)


@TOPOLOGIES.register("user")
def user(
    n: int,
    seed: int,
    fn: str,
    kwargs: dict[str, Any] | None = None,
    weights: str = "metropolis",
    lazy: bool = False,
):
    """A graph returned by the user function ``"package.module:function"``.

    The function receives ``n`` and ``seed`` when its signature names them,
    plus ``kwargs``; it must return an ``nx.Graph`` on nodes 0..n-1.
    """
    func = _import(fn)
    accepted = inspect.signature(func).parameters
    context = {k: v for k, v in (("n", n), ("seed", seed)) if k in accepted}
    try:
        G = func(**context, **(kwargs or {}))
    except TypeError as e:
        fail("kwargs", f"calling {fn}: {e}")
    require(
        isinstance(G, nx.Graph),
        "fn",
        f"{fn} returned {type(G).__name__}, expected a networkx.Graph",
    )
    require(
        set(G.nodes) == set(range(n)),
        "fn",
        f"{fn} must return a graph on "
        f"nodes 0..{n - 1}, got {G.number_of_nodes()} nodes",
    )
    return static(G, n, weights, lazy)


def _import(spec: str):
    module_name, _, attr = spec.partition(":")
    require(
        bool(module_name and attr),
        "fn",
        f"expected 'package.module:function', got {spec!r}",
    )
    try:
        module = importlib.import_module(module_name)
        return functools.reduce(getattr, attr.split("."), module)
    except (ImportError, AttributeError) as e:
        fail("fn", f"cannot load {spec!r}: {e}")
