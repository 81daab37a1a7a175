"""The ETRI optimizer table: D-SGD, gossip, ADMM and PDMM (SGD and ISVR
forms) on 3 nodes of a complete graph (K3), each node holding 8 of the 10
digit classes: final test accuracy, the averaged model's, and MiB sent, as a
Markdown table and a bar chart.

    python paper_figures/etri_optimizers.py [--quick] [--out DIR]

Full: 3000 steps, 3 seeds; --quick: 1000 steps, one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib.pyplot as plt  # noqa: E402

from paper_figures.common import (
    Series,
    arguments,
    mean_std,
    run_series,
    summaries,
    write,
)  # noqa: E402, E501

NAME = "etri_optimizers"
OPTIMIZERS = ("dsgd", "gossip", "admm_sgd", "pdmm_sgd", "admm_isvr", "pdmm_isvr")
FIGURES = {
    "final_mean_test_accuracy": "test acc",
    "final_averaged_model_accuracy": "averaged model acc",
    "bytes_sent_total": "MiB sent",
}


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    # a third of every file's steps: D-SGD and gossip run 10 local steps a round
    tenth = ("rounds=100", "eval_every=10")
    series = [
        Series(
            o,
            f"scenarios/etri_k3_cpu/{o}.yaml",
            quick=tenth if o in ("dsgd", "gossip") else None,
        )  # fmt: skip
        for o in OPTIMIZERS
    ]
    runs = run_series(NAME, series, args, quick=("rounds=1000", "eval_every=100"))
    rows = []
    for label, dirs in runs.items():
        s = summaries(dirs)
        row = {"optimizer": label, "seeds": len(s)}
        for key in FIGURES:
            scale = 2**20 if key == "bytes_sent_total" else 1
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std(
                [x[key] / scale for x in s]
            )
        rows.append(row)
    head = " | ".join(FIGURES.values())
    lines = [f"| optimizer | seeds | {head} |", "|---|---|---|---|---|"]
    for r in rows:
        digits = {k: 1 if k == "bytes_sent_total" else 4 for k in FIGURES}
        cells = [
            f"{r[f'{k}_mean']:.{digits[k]}f} ± {r[f'{k}_std']:.{digits[k]}f}"
            for k in FIGURES
        ]
        lines.append(f"| {r['optimizer']} | {r['seeds']} | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(7, 4))
    at = list(range(len(rows)))
    for i, key in enumerate(list(FIGURES)[:2]):  # the two accuracies
        means = [r[f"{key}_mean"] for r in rows]
        stds = [r[f"{key}_std"] for r in rows]
        where = [a + 0.4 * i for a in at]
        ax.bar(where, means, 0.4, yerr=stds, capsize=3, label=FIGURES[key])
    ax.set_xticks([a + 0.2 for a in at], [r["optimizer"] for r in rows])
    low = min(r[f"{k}_mean"] for r in rows for k in list(FIGURES)[:2])
    ax.set(ylabel="final accuracy", ylim=(max(0.0, low - 0.05), 1.0))
    for a, r in zip(at, rows, strict=True):  # each optimizer's traffic
        ax.annotate(f"{r['bytes_sent_total_mean']:.1f} MiB", (a + 0.2, 1.0),
                    xytext=(0, -12), textcoords="offset points", ha="center",
                    fontsize=8)  # fmt: skip
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    png, _ = write(NAME, args, fig, rows)
    text = "\n".join(lines) + "\n"
    (png.parent / f"{NAME}.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
