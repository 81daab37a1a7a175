"""Privacy-utility trade-off: attack AUC against test accuracy, one point per defense.

    python paper_figures/privacy_utility.py RUN_DIR... -o privacy_utility.png \
        [--attack threshold] [--table TABLE]

Reads each run's ``summary.json`` (final mean test accuracy), ``privacy.csv``
(the pooled row, victim ``all``, of every attack at the last attacked round)
and ``scenario.yaml`` (the algorithm and its noise). Runs that differ only in
their seed form one group: the table and the error bars give mean and standard
deviation over seeds. Nothing is recomputed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

NOISE_KEYS = ("sigma", "noise_multiplier")  # the knob each defense turns
COLUMNS = ("auc", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct")


def label(scenario: dict) -> str:
    """``algorithm`` or ``algorithm sigma=...`` from a resolved scenario."""
    alg = scenario["algorithm"]
    knobs = [f"{k}={alg[k]}" for k in NOISE_KEYS if k in alg]
    return " ".join([alg["name"], *knobs])


def last_pooled(path: Path) -> dict[str, dict]:
    """{attack: its pooled row at the last attacked round}."""
    with open(path) as f:
        pooled = [
            r for r in csv.DictReader(f) if r["victim"] == "all" and not r["class"]
        ]
    last = max(int(r["round"]) for r in pooled)
    return {r["attack"]: r for r in pooled if int(r["round"]) == last}


def read_run(run: Path) -> tuple[str, dict[str, float]]:
    """(group label, {figure: value}) of one run directory."""
    scenario = yaml.safe_load((run / "scenario.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    values = {"accuracy": float(summary["final_mean_test_accuracy"])}
    for attack, row in last_pooled(run / "privacy.csv").items():
        for col in (*COLUMNS, "top1"):
            if row.get(col):
                values[f"{attack} {col}"] = float(row[col])
    return label(scenario), values


def groups(runs: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """{label: {figure: (seeds,) values}}, labels in first-seen order."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        name, values = read_run(run)
        for key, value in values.items():
            out[name][key].append(value)
    return {g: {k: np.asarray(v) for k, v in d.items()} for g, d in out.items()}


def table(data: dict, attack: str) -> str:
    """A markdown table: accuracy and the attack's figures, mean ± std."""
    cols = ["accuracy", *(f"{attack} {c}" for c in COLUMNS)]
    lines = [
        "| defense | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for name, values in data.items():
        cells = [
            f"{values[c].mean():.3f} ± {values[c].std():.3f}" if c in values else "-"
            for c in cols
        ]
        lines.append(
            f"| {name} | {len(values['accuracy'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(data: dict, attack: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    key = f"{attack} auc"
    for name, values in data.items():
        if key not in values:
            continue
        acc, auc = values["accuracy"], values[key]
        ax.errorbar(
            acc.mean(),
            auc.mean(),
            xerr=acc.std(),
            yerr=auc.std(),
            fmt="o",
            capsize=3,
            label=name,
        )
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("final mean test accuracy")
    ax.set_ylabel(f"{attack} attack AUC (pooled over victims)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("-o", "--out", type=Path, required=True, help="figure path")
    parser.add_argument("--attack", default="threshold", help="attack on the y axis")
    parser.add_argument("--table", type=Path, help="also write the markdown table")
    args = parser.parse_args(argv)
    for run in args.runs:
        for name in ("scenario.yaml", "summary.json", "privacy.csv"):
            if not (run / name).is_file():
                print(
                    f"privacy_utility: {run}: no {name} (a finished run with a "
                    "privacy: section?)",
                    file=sys.stderr,
                )
                return 2
    data = groups(args.runs)
    text = table(data, args.attack)
    print(text, end="")
    if args.table:
        args.table.write_text(text)
    plot(data, args.attack, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
