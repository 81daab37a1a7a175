"""The run directory: metrics written as the run goes, checkpoints, summary.

    <run>/scenario.yaml   resolved scenario + versions and device
    <run>/metrics.csv     one row per evaluation
    <run>/peers.csv       one row per peer per evaluation
    <run>/summary.json    final figures, throughput, compile time, topology diagnostics
    <run>/checkpoints/    resumable state (see checkpoint.py; never pickle)
    <run>/tb/             TensorBoard scalars when enabled

Rows are appended and flushed at every evaluation, so a killed run loses at most
one chunk; on resume, rows after the restored round are dropped first.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from workbench.rundir import disk_errors


class CsvLog:
    """Appends dict rows to a CSV with a fixed header, flushing each write."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        if not path.exists():
            with disk_errors(path), path.open("w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, rows: list[dict[str, Any]]) -> None:
        with disk_errors(self.path), self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writerows(rows)

    def rows(self) -> list[dict[str, str]]:
        return read_csv(self.path)

    def truncate_after(self, last_round: int) -> None:
        """Drops rows whose ``round`` is greater than ``last_round`` (atomically)."""
        rows = [r for r in self.rows() if int(r["round"]) <= last_round]
        tmp = self.path.with_suffix(".tmp")
        with disk_errors(self.path):
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.path)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, obj: dict) -> None:
    """Writes ``obj`` to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_suffix(".tmp")
    with disk_errors(path):
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
        os.replace(tmp, path)


# -------------------------------------------------------------- tensorboard


class Scalars:
    """TensorBoard scalars (tensorboardX) when enabled; a no-op otherwise."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            with disk_errors(run_dir / "tb"):
                self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "round" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, int(row["round"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
