"""Dynamic against static topologies: test accuracy against rounds for D-SGD
on static graphs (ring, exponential) and on graphs redrawn every round
(one-peer exponential, a random matching, Epidemic Learning's s = 2 random
out-neighbours), on the quickstart's digits split label-skewed (Dirichlet
alpha 0.1).

    python paper_figures/dynamic_topologies.py [--quick] [--out DIR]

Full: 16 peers, 300 rounds, 3 seeds; --quick: 100 rounds, one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_figures.common import Series, accuracy_figure, arguments, run_series

NAME = "dynamic_topologies"
GRAPHS = {
    "ring (static)": "{name: ring}",
    "exponential (static)": "{name: exponential}",
    "one-peer exponential (dynamic)": "{name: one_peer_exponential}",
    "random matching (dynamic)": "{name: random_matching}",
    "epidemic, s = 2 (dynamic)": "{name: el_oracle, s: 2}",
}


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    skew = "data.partition={name: dirichlet, alpha: 0.1}"
    series = [
        Series(
            label,
            "scenarios/quickstart.yaml",
            (f"topology={graph}", skew, "eval_every=10"),
        )  # fmt: skip
        for label, graph in GRAPHS.items()
    ]
    runs = run_series(NAME, series, args, quick=("rounds=100",))
    accuracy_figure(NAME, args, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
