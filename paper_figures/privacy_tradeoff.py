"""Privacy against utility: each defense's membership-attack AUC (loss
threshold and LiRA, pooled over victims at the last attacked round) against
its final test accuracy, and the LiRA ROC curves (log-log); 8 peers on a
ring, digits with 20% of the labels flipped (scenarios/privacy_quick/).

    python paper_figures/privacy_tradeoff.py [--quick] [--out DIR]

Full: 400 rounds, LiRA with 16 shadow runs, 3 seeds; --quick: 200 rounds,
4 shadow runs, one seed. Also writes NAME_roc.csv, the ROC points plotted.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import csv  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from paper_figures.common import (  # noqa: E402
    Series,
    arguments,
    mean_std,
    run_series,
    summaries,
    write,
)
from workbench.results import read_csv  # noqa: E402

NAME = "privacy_tradeoff"
DEFENSES = {
    "no defense": "scenarios/privacy_quick.yaml",
    "ZeroSum": "scenarios/privacy_quick/zerosum.yaml",
    "Muffliato": "scenarios/privacy_quick/muffliato.yaml",
    "DP-SGD": "scenarios/privacy_quick/dpsgd.yaml",
}
ATTACKS = ("threshold", "lira")


def pooled_auc(run_dir: Path, attack: str) -> float:
    """The attack's AUC pooled over every victim at the last attacked round."""
    rows = [
        r
        for r in read_csv(run_dir / "privacy.csv")
        if r["attack"] == attack and r["victim"] == "all" and not r["class"]
    ]
    last = max(int(r["round"]) for r in rows)
    return next(float(r["auc"]) for r in rows if int(r["round"]) == last)


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    shadows = 4 if args.quick else 16
    attacks = f"privacy.attacks=[threshold, {{name: lira, shadows: {shadows}}}]"
    series = [Series(label, path, (attacks,)) for label, path in DEFENSES.items()]
    runs = run_series(NAME, series, args, quick=("rounds=200",))
    fig, (trade, curves) = plt.subplots(1, 2, figsize=(11, 4.6))
    rows, points = [], []
    for (label, dirs), color in zip(runs.items(), plt.cm.tab10.colors, strict=False):
        acc = mean_std([s["final_mean_test_accuracy"] for s in summaries(dirs)])
        row = {"defense": label, "seeds": len(dirs), "accuracy_mean": acc[0],
               "accuracy_std": acc[1]}  # fmt: skip
        for attack, marker in zip(ATTACKS, "os", strict=True):
            auc = mean_std([pooled_auc(d, attack) for d in dirs])
            row[f"{attack}_auc_mean"], row[f"{attack}_auc_std"] = auc
            trade.errorbar(acc[0], auc[0], xerr=acc[1], yerr=auc[1], fmt=marker,
                           color=color, capsize=3)  # fmt: skip
        rows.append(row)
        roc = [
            r for r in read_csv(dirs[0] / "privacy_roc.csv") if r["attack"] == "lira"
        ]
        fpr = np.array([float(r["fpr"]) for r in roc])
        tpr = np.array([float(r["tpr"]) for r in roc])
        floor = 1e-3
        curves.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=color,
                    label=f"{label} (AUC {np.trapezoid(tpr, fpr):.3f})")  # fmt: skip
        points += [
            {"defense": label, "fpr": f, "tpr": t}
            for f, t in zip(fpr, tpr, strict=True)
        ]
    trade.axhline(0.5, color="grey", lw=0.8, ls="--")
    trade.set(xlabel="final test accuracy (mean over peers)",
              ylabel="attack AUC, pooled over victims")  # fmt: skip
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, lw=6, label=label)
        for label, c in zip(runs, plt.cm.tab10.colors, strict=False)
    ]
    handles += [Line2D([], [], color="k", marker=m, ls="", label=f"{a} attack")
                for a, m in zip(ATTACKS, "os", strict=True)]  # fmt: skip
    trade.legend(handles=handles, fontsize=7)
    trade.grid(alpha=0.3)
    curves.plot([1e-3, 1], [1e-3, 1], "k--", lw=0.8, label="chance")
    curves.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1),
               xlabel="false positive rate", ylabel="true positive rate",
               title="LiRA ROC (first seed, last attacked round)")  # fmt: skip
    curves.legend(fontsize=7, loc="lower right")
    png, _ = write(NAME, args, fig, rows)
    with (png.parent / f"{NAME}_roc.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["defense", "fpr", "tpr"])
        writer.writeheader()
        writer.writerows(points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
