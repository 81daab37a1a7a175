"""``workbench topology describe SPEC [--json] [--plot FILE.png] [--seed S]``.

SPEC is ``NAME[:key=value,...]`` (``ring:n=16``, ``torus:n=64``,
``random_regular:n=64,d=4,seed=0``; n defaults to 16) or the path of an
edges/adjacency file. Values are parsed as YAML scalars.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import yaml

from workbench.errors import ScenarioError, WorkbenchError, did_you_mean
from workbench.topology.build import build_topology
from workbench.topology.diagnostics import sample_rounds
from workbench.topology.fileio import read_graph

DEFAULT_N = 16
PLOT_SPECTRUM_MAX_N = 1024


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="workbench topology describe", description=__doc__)
    p.add_argument("spec", help="NAME[:key=value,...] or a graph file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="save graph + spectrum (any matplotlib format: png, pdf, svg, ...)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--kernel", default="auto", help="force a mixing kernel")
    return p


def parse_spec(text: str) -> tuple[dict, int, int | None]:
    """``NAME[:k=v,...]`` or a file path -> (topology section, n, seed)."""
    if Path(text).is_file():
        return {"name": "file", "path": text}, read_graph(text).number_of_nodes(), None
    name, _, rest = text.partition(":")
    if not name.isidentifier():
        raise ScenarioError(
            "spec", f"expected NAME[:key=value,...] or a file, got {text!r}"
        )
    spec: dict = {"name": name}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ScenarioError("spec", f"expected key=value, got {item!r}")
        spec[key.strip()] = yaml.safe_load(value)
    n = spec.pop("n", DEFAULT_N)
    seed = spec.pop("seed", None)
    if not isinstance(n, int) or n < 1:
        raise ScenarioError("spec.n", f"expected a positive integer, got {n!r}")
    return spec, n, seed


def _text(info: dict) -> str:
    kind = (
        f"dynamic, period {info['period']}"
        if info["period"]
        else ("dynamic" if info["dynamic"] else "static")
    )
    lines = [
        f"{info['name']}  n={info['n']}  kernel={info['kernel']}  ({kind})",
        f"degree        min {info['degree_min']}  mean {info['degree_mean']:.2f}  "
        f"max {info['degree_max']}",
        f"rho           {info['rho']:.6f}",
        f"spectral gap  {info['spectral_gap']:.6f}  (1 - rho)",
    ]
    if not info["dynamic"]:
        lines.insert(
            1,
            f"edges         {info['num_edges']} "
            f"({'directed' if info['directed'] else 'undirected'})",
        )
        lines += [
            f"lambda2(I-W)  {_num(info['lambda2_I_minus_W'])}",
            f"diameter      {info['diameter']}",
        ]
    else:
        lines += [f"contraction   {info['contraction']:.6f}  (measured per round)"]
        if info["period"]:
            lines += [f"product rho   {info['product_rho']:.3e}  (one period)"]
    ds = "yes" if info["doubly_stochastic"] else "no (mean not preserved)"
    return "\n".join([*lines, f"doubly stoch. {ds}"])


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.6f}"


def _rounds(topo, seed: int) -> list[sp.csr_array]:
    """W (static), one period (periodic) or 4 sampled rounds (random)."""
    if topo.W is not None:
        return [sp.csr_array(topo.W)]
    count = topo.info["period"] or 4
    return sample_rounds(topo.at, topo.data, topo.n, seed, count)


def check_plot_path(path: str) -> None:
    """Fails early, in one line, on a --plot file that cannot be written."""
    from matplotlib.backend_bases import FigureCanvasBase

    file = Path(path)
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    suffix = file.suffix.removeprefix(".").lower()
    if suffix not in formats:
        got = f"unknown image format '{suffix}'" if suffix else "no file extension"
        raise WorkbenchError(
            f"--plot {path}: {got}{did_you_mean(suffix, formats) if suffix else ''}"
            f"; expected a file ending in one of {formats}"
        )
    if not file.parent.is_dir():
        raise WorkbenchError(f"--plot {path}: directory {file.parent} does not exist")
    if file.is_dir():
        raise WorkbenchError(f"--plot {path}: is a directory")


def plot(topo, path: str, seed: int) -> None:
    """Saves the graph (left; union over rounds) and the spectrum (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    Ws = _rounds(topo, seed)
    union = sp.csr_array(sum(abs(W) for W in Ws))
    union.setdiag(0)
    union.eliminate_zeros()
    G = nx.from_scipy_sparse_array(union, create_using=nx.DiGraph)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    layout = nx.circular_layout(G) if topo.n <= 128 else nx.spring_layout(G, seed=0)
    size = max(4, 800 // topo.n)
    nx.draw(G, layout, ax=left, node_size=size, arrows=False, width=0.5)
    left.set_title(
        f"{topo.info['name']} (n={topo.n})"
        + (f", union of {len(Ws)} rounds" if len(Ws) > 1 else "")
    )
    if topo.n <= PLOT_SPECTRUM_MAX_N:
        what = (
            "W"
            if topo.W is not None
            else ("period product" if topo.info["period"] else "W_0")
        )
        P = np.eye(topo.n)
        for W in Ws if topo.info["period"] or topo.W is not None else Ws[:1]:
            P = W @ P
        right.plot(np.sort(np.abs(np.linalg.eigvals(P)))[::-1], ".")
        right.set_ylabel(f"|eigenvalue| of {what}")
        right.set_xlabel("index")
    right.set_title(f"rho = {topo.info['rho']:.4f}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise WorkbenchError(
            f"--plot {path}: cannot write: {e.strerror or e}"
        ) from None
    finally:
        plt.close(fig)


def describe(argv: list[str]) -> int:
    """Prints a topology's diagnostics; returns the exit code (2 on bad input)."""
    try:
        args = _parser().parse_args(argv)
        if args.plot:
            check_plot_path(args.plot)
        spec, n, seed = parse_spec(args.spec)
        seed = args.seed if args.seed is not None else (seed or 0)
        topo = build_topology(spec, n, seed, kernel=args.kernel)
        if args.plot:
            plot(topo, args.plot, seed)
    except (WorkbenchError, _UsageError) as e:
        print(f"workbench topology describe: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(topo.info) if args.json else _text(topo.info))
    if args.plot:  # on stderr with --json, so that stdout stays one JSON object
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(describe(sys.argv[1:]))
