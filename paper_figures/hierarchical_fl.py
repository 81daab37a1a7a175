"""Hierarchical against flat FL: test accuracy against rounds and MiB sent
for HiPS-style hierarchical FL (3 parties, party averages every round,
global every 2, the 2-bit party-to-global link with error feedback), the same
with a plain link, and flat FedAvg (one party), 12 peers on the digits.

    python paper_figures/hierarchical_fl.py [--quick] [--out DIR]

Full: 200 rounds, 3 seeds; --quick: one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_figures.common import Series, accuracy_figure, arguments, run_series

NAME = "hierarchical_fl"
SCENARIO = "scenarios/hips_cpu.yaml"
SERIES = [
    Series("hierarchical, 2-bit link", SCENARIO),
    Series("hierarchical, plain link", SCENARIO,
           ("algorithm.compressor.name=identity",)),
    Series("flat FedAvg (one party)", SCENARIO,
           ("algorithm.parties=1", "algorithm.kappa2=1",
            "algorithm.compressor.name=identity")),
]  # fmt: skip


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    runs = run_series(NAME, SERIES, args)
    accuracy_figure(NAME, args, runs, xs=("round", "bytes_sent_total"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
