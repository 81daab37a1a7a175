"""What the figure scripts share: the command line, running (or reusing) the
runs a figure needs, reading their curves back, writing the PNG and the CSV.

    python paper_figures/NAME.py [--quick] [--out DIR] [--seeds N] [--set KEY=VALUE]

Each series of a figure is a sweep over seeds (workbench.sweep) in
``DIR/NAME/<mode>-<seeds>-seeds/<series>/``: a rerun with the same settings
reuses its finished runs and continues an interrupted one (other ``--set``
values need another ``--out``). ``--quick`` is the CPU setting (minutes, one seed);
without it, the study's setting (three seeds). ``--set`` overrides a key of
every run (after the figure's own keys). The figure is ``DIR/NAME/NAME.png``
and the numbers it plots ``DIR/NAME/NAME.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workbench.report import seed_std  # noqa: E402
from workbench.results import read_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent  # scenario paths are from here


class Series(NamedTuple):
    label: str
    scenario: str  # relative to the repository
    sets: tuple[str, ...] = ()  # this series' keys (``--set`` strings)
    quick: tuple[str, ...] | None = None  # its --quick keys (None: the figure's)


def arguments(doc: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the CPU setting (minutes)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    p.add_argument("--seeds", type=int, help="seeds per series (1 quick, 3 full)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of every run (repeatable)",
    )  # fmt: skip
    return p.parse_args(argv)


def slug(label: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", label).strip("_")


def run_series(
    name: str, series: list[Series], args, quick: tuple[str, ...] = ()
) -> dict[str, list[Path]]:
    """Runs (or reuses) each series over the seeds; {label: run directories}.

    ``quick``: keys of every run in ``--quick`` mode."""
    from workbench.errors import WorkbenchError
    from workbench.sweep import plan, run_sweep

    seeds = args.seeds or (1 if args.quick else 3)
    mode = f"{'quick' if args.quick else 'full'}-{seeds}-seeds"
    runs = {}
    for s in series:
        own = quick if s.quick is None else s.quick
        sets = [*s.sets, *(own if args.quick else ()), *args.sets]
        out = args.out / name / mode / slug(s.label)
        try:
            sweep = plan(str(ROOT / s.scenario), sets, {}, {}, seeds, str(out))
            statuses = list(run_sweep(sweep, progress=False))
        except WorkbenchError as e:
            sys.exit(f"{name}: {s.label}: {e}")
        bad = [st for st in statuses if st.status != "done"]
        if bad:
            sys.exit(f"{name}: {s.label}: {bad[0].point.name} {bad[0].status}")
        runs[s.label] = [st.run_dir for st in statuses]
        print(f"{name}: {s.label}: {len(statuses)} run(s) in {out}", flush=True)
    return runs


def summaries(run_dirs: list[Path]) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in run_dirs]


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])


def curve(run_dirs: list[Path], x: str, y: str = "test_acc_mean"):
    """(x mean, y mean, y std) over the seeds' evaluations (cut to the shortest);
    std is the sample std (0 for one seed)."""
    tables = [read_csv(d / "metrics.csv") for d in run_dirs]
    n = min(len(t) for t in tables)
    xs = np.stack([column(t[:n], x) for t in tables])
    ys = np.stack([column(t[:n], y) for t in tables])
    return xs.mean(0), ys.mean(0), seed_std(ys, axis=0)


def band(ax, x, mean, std, label: str) -> None:
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(seed_std(v))


def write(name: str, args, fig, rows: list[dict]) -> tuple[Path, Path]:
    """Saves the figure and the plotted numbers; their paths."""
    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    png, table = folder / f"{name}.png", folder / f"{name}.csv"
    fig.tight_layout()
    fig.savefig(png, dpi=130)
    plt.close(fig)
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{name}: wrote {png} and {table}")
    return png, table


MIB = 2**20
AXES = {  # x column: (axis label, divisor)
    "round": ("round", 1.0),
    "bytes_sent_total": ("MiB sent (all peers)", MIB),
    "virtual_time": ("virtual time (s)", 1.0),
}


def accuracy_figure(name: str, args, runs: dict, xs=("round",), legend=None,
                    title: str = ""):  # fmt: skip
    """Mean test accuracy against each of ``xs`` (a panel each), a std band and
    one curve per series (``legend(label) -> text``); writes PNG and CSV."""
    fig, axes = plt.subplots(1, len(xs), figsize=(6.4 * len(xs), 4.4), squeeze=False)
    rows = []
    for label, dirs in runs.items():
        curves = {x: curve(dirs, x) for x in xs}  # (x, mean, std) per axis
        for ax, x in zip(axes[0], xs, strict=True):
            at, mean, std = curves[x]
            band(ax, at / AXES[x][1], mean, std, legend(label) if legend else label)
        _, mean, std = curves[xs[0]]
        for i in range(len(mean)):
            point = {x: float(curves[x][0][i]) for x in xs}
            acc = {"test_acc_mean": float(mean[i]), "std": float(std[i])}
            rows.append({"series": label, **point, **acc})
    seeds = max(len(d) for d in runs.values())
    for ax, x in zip(axes[0], xs, strict=True):
        ax.set(xlabel=AXES[x][0], ylabel="test accuracy (mean over peers)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(title or f"mean ± 1 std over {seeds} seed(s)", fontsize=10)
    return write(name, args, fig, rows)
