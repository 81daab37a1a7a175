"""Dynamic averaging traffic (dyn-fed): test accuracy against MiB sent for
FedAvg (5 local steps a round), dynamic averaging (a client sends only when
its drift from the last sync exceeds Delta = 0.1 or 0.3, checked every 5
steps) and per-client periods from the data's singular values (100
communications), 16 clients on label-skewed digits; the table gives the
final accuracy and the traffic.

    python paper_figures/dynamic_averaging.py [--quick] [--out DIR]

Full: 400 rounds, 3 seeds; --quick: one seed.
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
    mean_std,
    run_series,
    summaries,
)

NAME = "dynamic_averaging"
SCENARIO = "scenarios/dynfed_cpu.yaml"
SERIES = [
    Series("FedAvg", SCENARIO, ("algorithm.name=fedavg", "algorithm.local_steps=5",
                                "algorithm.weighting=uniform")),
    Series("dynamic averaging, Delta = 0.1", SCENARIO),
    Series("dynamic averaging, Delta = 0.3", SCENARIO, ("algorithm.threshold=0.3",)),
    Series("per-client periods (svd)", "scenarios/dynfed_periods_cpu.yaml"),
]  # fmt: skip


def table(runs: dict) -> str:
    lines = ["| method | seeds | final test acc | averaged model acc | MiB sent |",
             "|---|---|---|---|---|"]  # fmt: skip
    for label, dirs in runs.items():
        s = summaries(dirs)
        acc = mean_std([x["final_mean_test_accuracy"] for x in s])
        avg = mean_std([x["final_averaged_model_accuracy"] for x in s])
        mib = mean_std([x["bytes_sent_total"] / 2**20 for x in s])
        lines.append(
            f"| {label} | {len(s)} | {acc[0]:.4f} ± {acc[1]:.4f} | "
            f"{avg[0]:.4f} ± {avg[1]:.4f} | {mib[0]:.1f} ± {mib[1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    runs = run_series(NAME, SERIES, args)
    png, _ = accuracy_figure(NAME, args, runs, xs=("bytes_sent_total", "round"))
    text = table(runs)
    (png.parent / f"{NAME}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
