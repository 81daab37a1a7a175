"""Accuracy (mean +- std across peers) and bytes sent vs round, from run directories.

    python paper_figures/plot_runs.py runs/quickstart/<stamp> [RUN_DIR ...] -o fig.png
    python paper_figures/plot_runs.py RUN_DIR ... --x virtual_time -o fig.png

``--x virtual_time`` plots against the virtual clock's time (runs with a
``clock:`` section) instead of rounds.

Reads only ``metrics.csv`` and ``scenario.yaml`` of each run; one curve per run,
labelled with the run's scenario name and topology (or ``--labels``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from workbench.results import read_csv  # noqa: E402


def load_curve(run_dir: Path) -> dict[str, np.ndarray]:
    rows = read_csv(run_dir / "metrics.csv")
    if not rows:
        raise SystemExit(f"plot_runs: {run_dir}/metrics.csv has no rows yet")
    cols = ("round", "virtual_time", "test_acc_mean", "test_acc_std")
    cols += ("bytes_sent_total",)
    return {c: np.array([float(r[c]) for r in rows]) for c in cols}


def default_label(run_dir: Path) -> str:
    sc = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    return f"{sc['name']} ({sc['topology']['name']}, {sc['algorithm']['name']})"


X_LABELS = {"round": "round", "virtual_time": "virtual time (s)"}


def plot(run_dirs: list[Path], labels: list[str], out: Path, x: str = "round") -> None:
    fig, (acc_ax, bytes_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for run_dir, label in zip(run_dirs, labels, strict=True):
        c = load_curve(run_dir)
        acc_ax.plot(c[x], c["test_acc_mean"], label=label)
        acc_ax.fill_between(
            c[x],
            c["test_acc_mean"] - c["test_acc_std"],
            c["test_acc_mean"] + c["test_acc_std"],
            alpha=0.2,
        )
        bytes_ax.plot(c[x], c["bytes_sent_total"] / 2**20, label=label)
    acc_ax.set(xlabel=X_LABELS[x], ylabel="test accuracy (mean ± std over peers)")
    bytes_ax.set(xlabel=X_LABELS[x], ylabel="MiB sent (all peers)")
    acc_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="*")
    p.add_argument("-o", "--out", type=Path, default=Path("runs.png"))
    p.add_argument("--x", choices=sorted(X_LABELS), default="round")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        if not (run_dir / "metrics.csv").is_file():
            p.exit(
                2,
                f"plot_runs: {run_dir} has no metrics.csv; expected a run "
                "directory written by `workbench simulate`\n",
            )
    labels = args.labels or [default_label(r) for r in args.runs]
    if len(labels) != len(args.runs):
        p.exit(2, f"plot_runs: {len(labels)} labels for {len(args.runs)} runs\n")
    plot(args.runs, labels, args.out, args.x)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
