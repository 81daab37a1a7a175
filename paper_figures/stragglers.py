"""Stragglers against virtual time: test accuracy against the virtual clock
for synchronous D-SGD (every round waits for the slowest peer), D-SGD whose
rounds wait at most 2 s, and AD-PSGD (each peer averages with a random
neighbour when its own step ends); 16 peers, two of them 10x slower.

    python paper_figures/stragglers.py [--quick] [--out DIR]

The same ~800 virtual seconds in both modes; full: 3 seeds, --quick: one.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_figures.common import Series, accuracy_figure, arguments, run_series

NAME = "stragglers"
SERIES = [
    Series("synchronous D-SGD", "scenarios/stragglers/sync.yaml"),
    Series("D-SGD, 2 s timeout", "scenarios/stragglers/timeout.yaml"),
    Series("AD-PSGD", "scenarios/stragglers/adpsgd.yaml"),
]


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    runs = run_series(NAME, SERIES, args)
    accuracy_figure(NAME, args, runs, xs=("virtual_time",))
    return 0


if __name__ == "__main__":
    sys.exit(main())
