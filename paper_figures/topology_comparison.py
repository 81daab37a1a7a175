"""Topology comparison: test accuracy against rounds for ring, torus,
exponential, one-peer exponential and complete graphs (D-SGD on the
quickstart's digits, split label-skewed: Dirichlet alpha 0.1, where the graph
matters), with each graph's rho in the legend.

    python paper_figures/topology_comparison.py [--quick] [--out DIR]

Full: 16 peers, 300 rounds, 3 seeds; --quick: 100 rounds, one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_figures.common import (
    Series,
    accuracy_figure,
    arguments,
    run_series,
    summaries,
)

NAME = "topology_comparison"
TOPOLOGIES = ("ring", "torus", "exponential", "one_peer_exponential", "complete")


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    skew = "data.partition={name: dirichlet, alpha: 0.1}"
    series = [
        Series(
            t,
            "scenarios/quickstart.yaml",
            (f"topology.name={t}", skew, "eval_every=10"),
        )  # fmt: skip
        for t in TOPOLOGIES
    ]
    runs = run_series(NAME, series, args, quick=("rounds=100",))
    rho = {label: summaries(dirs)[0]["rho"] for label, dirs in runs.items()}
    accuracy_figure(NAME, args, runs, legend=lambda t: f"{t} (rho = {rho[t]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
