"""The run directory: metrics written as the run goes, checkpoints, summary.

    <run>/scenario.yaml   resolved scenario + versions and device
    <run>/metrics.csv     one row per evaluation
    <run>/peers.csv       one row per peer per evaluation
    <run>/summary.json    final figures, throughput, compile time, topology diagnostics
    <run>/checkpoints/    resumable state (flax msgpack serialization, never pickle)
    <run>/tb/             TensorBoard scalars when enabled

Rows are appended and flushed at every evaluation, so a killed run loses at most
one chunk; on resume, rows after the restored round are dropped first.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import flax.serialization

from workbench.errors import WorkbenchError

METRICS_FIELDS = [
    "round",
    "virtual_time",
    "wall_time",
    "test_acc_mean",
    "test_acc_min",
    "test_acc_max",
    "test_acc_std",
    "test_loss_mean",
    "test_loss_min",
    "test_loss_max",
    "test_loss_std",
    "train_loss_mean",
    "val_acc_mean",
    "averaged_model_acc",
    "averaged_model_loss",
    "consensus_distance",
    "bytes_sent_total",
    "bytes_sent_per_peer",
    "active_peers",
]
PEER_FIELDS = [
    "round",
    "peer",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "bytes_sent",
]


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """``root/name/<timestamp>`` (a suffix keeps two runs in one second apart)."""
    base = Path(root) / name / time.strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    path.mkdir(parents=True)
    return path


class CsvLog:
    """Appends dict rows to a CSV with a fixed header, flushing each write."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writerows(rows)

    def truncate_after(self, last_round: int) -> None:
        """Drops rows whose ``round`` is greater than ``last_round``."""
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["round"]) <= last_round]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)


# ------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, round_: int, payload: Any, keep: int = 2) -> Path:
    """Writes ``payload`` (a pytree) atomically as checkpoints/round_<r>.msgpack."""
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    path = ckpt_dir / f"round_{round_:08d}.msgpack"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(flax.serialization.to_bytes(payload))
    os.replace(tmp, path)
    for old in sorted(ckpt_dir.glob("round_*.msgpack"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("round_*.msgpack"))
    return found[-1] if found else None


def load_checkpoint(path: Path, target: Any) -> Any:
    """Restores a checkpoint into the structure of ``target``."""
    try:
        return flax.serialization.from_bytes(target, path.read_bytes())
    except Exception as e:  # corrupt or from another scenario
        raise WorkbenchError(
            f"cannot restore checkpoint {path}: {type(e).__name__}: {e}; expected one "
            "written by the same scenario"
        ) from None


# -------------------------------------------------------------- tensorboard


class Scalars:
    """TensorBoard scalars (tensorboardX) when enabled; a no-op otherwise."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

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
