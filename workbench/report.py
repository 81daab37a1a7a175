"""``workbench report SWEEP_DIR``: a sweep's figures across seeds, per point.

    report.csv   one row per point (its swept keys; seeds pooled): how many
                 seeds finished, and each final figure's mean and std
    report.md    the same table in Markdown
    report.png   mean test accuracy (over peers) against rounds, bytes sent
                 and, for clocked runs, virtual time: the mean over seeds,
                 with a band of one std

std is the sample standard deviation across seeds (ddof 1; 0 for one seed).
Reads only the sweep's index and its runs' ``metrics.csv``; files are
rewritten only when their content changes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError
from workbench.results import read_csv
from workbench.sweep import FIGURES, INDEX, SPEC, csv_text, write_if_changed

REPORT_FIGURES = (*FIGURES, "virtual_time")
CURVE_X = {
    "round": "round",
    "bytes_sent_total": "MiB sent (all peers)",
    "virtual_time": "virtual time (s)",
}


def swept_keys(root: Path) -> list[str]:
    """The sweep's keys, in order (from its sweep.json)."""
    try:
        points = json.loads((root / SPEC).read_text())["points"]
    except (OSError, ValueError, KeyError):
        raise WorkbenchError(
            f"{root}: no readable {SPEC}; expected a sweep directory"
        ) from None
    return list(points[0]["keys"]) if points else []


def seed_std(x: np.ndarray, axis=None):
    """The sample std across seeds (ddof 1); 0 for a single seed."""
    x = np.asarray(x, np.float64)
    n = x.shape[0] if axis == 0 else x.size
    return x.std(axis=axis, ddof=1) if n > 1 else np.zeros_like(x.mean(axis=axis))


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else np.nan


def groups(root: Path) -> tuple[list[str], dict[tuple, list[dict]]]:
    """The swept keys, and the index rows of each point (seeds pooled), in order."""
    keys = swept_keys(root)
    if not (root / INDEX).is_file():
        raise WorkbenchError(f"{root}: no {INDEX} yet; run the sweep first")
    out: dict[tuple, list[dict]] = {}
    for row in read_csv(root / INDEX):
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return keys, out


def aggregate(root: Path) -> list[dict]:
    """One row per point: its keys, ``seeds`` finished, ``<figure>_mean`` and
    ``<figure>_std`` over them (empty when no seed finished)."""
    keys, by_point = groups(root)
    table = []
    for values, rows in by_point.items():
        done = [r for r in rows if r["status"] == "done"]
        row = {**dict(zip(keys, values, strict=True)), "seeds": len(done)}
        for fig in REPORT_FIGURES:
            x = np.array([_number(r[fig]) for r in done], np.float64)
            x = x[~np.isnan(x)]
            row[f"{fig}_mean"] = float(x.mean()) if x.size else None
            row[f"{fig}_std"] = float(seed_std(x)) if x.size else None
        table.append(row)
    return table


def _shown(row: dict, fig: str) -> str:
    mean, std = row[f"{fig}_mean"], row[f"{fig}_std"]
    if mean is None:
        return "-"
    if fig == "bytes_sent_total":
        return f"{mean / 2**20:.2f} ± {std / 2**20:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def _columns(table: list[dict]) -> list[str]:
    """Figures that some point has (virtual time only for clocked runs)."""
    return [f for f in REPORT_FIGURES if any(r[f"{f}_mean"] is not None for r in table)]


HEADERS = {
    "final_mean_test_accuracy": "test acc",
    "final_averaged_model_accuracy": "avg-model acc",
    "bytes_sent_total": "MiB sent",
    "wall_seconds": "wall s",
    "virtual_time": "virtual s",
}


def markdown(table: list[dict], keys: list[str]) -> str:
    figs = _columns(table)
    head = [*keys, "seeds", *(HEADERS[f] for f in figs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [str(row[k]) for k in keys] + [str(row["seeds"])]
        cells += [_shown(row, f) for f in figs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rich_table(table: list[dict], keys: list[str], title: str):
    from rich.table import Table

    figs = _columns(table)
    out = Table(title=title)
    for k in [*keys, "seeds"]:
        out.add_column(k)
    for f in figs:
        out.add_column(HEADERS[f], justify="right")
    for row in table:
        cells = [str(row[k]) for k in keys] + [str(row["seeds"])]
        out.add_row(*cells, *(_shown(row, f) for f in figs))
    return out


def _curves(root: Path, rows: list[dict]) -> dict[str, np.ndarray] | None:
    """(seeds, evaluations) arrays of the finished runs, cut to the shortest."""
    runs = [
        read_csv(root / r["run_dir"] / "metrics.csv")
        for r in rows
        if r["status"] == "done"
    ]
    runs = [r for r in runs if r]
    if not runs:
        return None
    length = min(len(r) for r in runs)
    cols = ("test_acc_mean", *CURVE_X)
    return {
        c: np.array([[_number(row.get(c, "")) for row in r[:length]] for r in runs])
        for c in cols
    }


def figure_png(root: Path) -> bytes | None:
    """report.png's bytes: one panel per x axis, one curve and band per point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, by_point = groups(root)
    curves = {v: _curves(root, rows) for v, rows in by_point.items()}
    curves = {v: c for v, c in curves.items() if c is not None}
    if not curves:
        return None
    clocked = any(r["virtual_time"] for rows in by_point.values() for r in rows)
    xs = [x for x in CURVE_X if x != "virtual_time" or clocked]
    fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
    for values, c in curves.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        acc = c["test_acc_mean"]
        mean, std = acc.mean(0), seed_std(acc, axis=0)
        for ax, x in zip(axes[0], xs, strict=True):
            at = c[x].mean(0) / (2**20 if x == "bytes_sent_total" else 1)
            (line,) = ax.plot(at, mean, label=label or "run")
            band = (mean - std, mean + std)
            ax.fill_between(at, *band, alpha=0.2, color=line.get_color())
    seeds = max(len(c["test_acc_mean"]) for c in curves.values())
    for ax, x in zip(axes[0], xs, strict=True):
        ax.set(xlabel=CURVE_X[x], ylabel="test accuracy (mean over peers)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{root.name}: mean and ± 1 std over up to {seeds} seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_report(root: Path) -> tuple[list[dict], list[str]]:
    """Writes report.csv, report.md and report.png (when changed); the table."""
    keys, _ = groups(root)
    table = aggregate(root)
    write_if_changed(root / "report.csv", csv_text(table))
    write_if_changed(root / "report.md", markdown(table, keys))
    png = figure_png(root)
    if png is not None:
        write_if_changed(root / "report.png", png)
    return table, keys


def print_report(root: Path, console=None) -> list[dict]:
    """Writes the report files (when changed) and prints the table."""
    from rich.console import Console

    table, keys = write_report(root)
    console = console or Console()
    console.print(rich_table(table, keys, f"{root}: mean ± std across seeds"))
    console.print(f"report: {root / 'report.csv'}, {root / 'report.md'}, "
                  f"{root / 'report.png'}")  # fmt: skip
    return table
