"""Compression against bytes: test accuracy against MiB sent for D-SGD
(uncompressed) and CHOCO-SGD with top-1%, top-10%, QSGD (256 levels per
tensor) and uniform 4-bit messages, 16 peers on a 4x4 torus (the choco_topk
scenario). (QSGD with 16 levels is too noisy for CHOCO's gamma 0.05 here.)

    python paper_figures/compression_bytes.py [--quick] [--out DIR]

Full: 300 rounds, 3 seeds; --quick: 100 rounds, one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from paper_figures.common import Series, accuracy_figure, arguments, run_series

NAME = "compression_bytes"
SCENARIO = "scenarios/choco_topk.yaml"
SERIES = [
    Series("D-SGD (no compression)", SCENARIO,
           ("algorithm.name=dsgd", "algorithm.lr=0.05", "algorithm.momentum=0.9")),
    Series("CHOCO top-1%", SCENARIO),
    Series("CHOCO top-10%", SCENARIO, ("algorithm.compressor.fraction=0.1",)),
    Series("CHOCO QSGD 256 levels", SCENARIO,
           ("algorithm.compressor={name: qsgd, levels: 256, per_tensor: true}",)),
    Series("CHOCO uniform 4-bit", SCENARIO,
           ("algorithm.compressor={name: uniform, levels: 16}",)),
]  # fmt: skip


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    series = [s._replace(sets=(*s.sets, "eval_every=10")) for s in SERIES]
    runs = run_series(NAME, series, args, quick=("rounds=100",))
    accuracy_figure(NAME, args, runs, xs=("bytes_sent_total", "round"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
