"""The privacy stage of a run: capture spec, attacks after each chunk, outputs.

The engine builds an :class:`Attacker` when the scenario has a ``privacy:``
section; the runner hands it each chunk's captured messages and writes what it
returns to ``privacy.csv`` (round, victim, attacker, attack, metrics) and
``privacy_roc.png`` and the points in ``privacy_roc.csv`` (log-log ROC of each
attack pooled over the last attacked
round's messages). ``rerun`` does the same from the messages a finished run
saved (``workbench privacy RUN_DIR``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from workbench.errors import ScenarioError, WorkbenchError
from workbench.privacy.messages import Received, load_all, received, record, save
from workbench.privacy.metrics import plot_roc, roc
from workbench.privacy.run import (
    PRIVACY_FIELDS,
    AttackContext,
    AttackResult,
    Pool,
    pool_of,
    run_attacks,
    tables_of,
)
from workbench.results import CsvLog, read_csv
from workbench.rounds import Capture
from workbench.scenario.privacy import PrivacyConfig

PRIVACY_CSV, ROC_PNG = "privacy.csv", "privacy_roc.png"
ROC_CSV = "privacy_roc.csv"  # the plotted points: attack, fpr, tpr


def check_privacy(cfg: PrivacyConfig, n: int, rounds: int) -> None:
    """One-line ScenarioErrors for victims, rounds or attackers out of range."""
    if isinstance(cfg.victims, tuple) and max(cfg.victims) >= n:
        raise ScenarioError(
            "privacy.victims", f"peer {max(cfg.victims)} does not exist (peers: {n})"
        )
    if cfg.at is not None and max(cfg.at) > rounds:
        raise ScenarioError(
            "privacy.at", f"round {max(cfg.at)} is past the last round ({rounds})"
        )
    if cfg.marginalized and cfg.victims != "all":
        raise ScenarioError(
            "privacy.marginalized",
            "the marginalized attacker needs every in-neighbour's message: "
            "use victims: all",
        )
    for i, group in enumerate(cfg.colluding):
        if not group or min(group) < 0 or max(group) >= n:
            raise ScenarioError(
                f"privacy.colluding[{i}]", f"expected peers in 0..{n - 1}, got {group}"
            )


def check_marginalized(
    cfg: PrivacyConfig, algorithm, name: str, dynamic: bool = False
) -> None:
    """A one-line ScenarioError if the algorithm has no gossip step 1 to invert
    (or the graph changes: the inversion uses round 0's W)."""
    if not cfg.marginalized:
        return
    if dynamic:
        raise ScenarioError(
            "privacy.marginalized",
            "the marginalized attacker inverts with a fixed W; this topology "
            "changes every round (use a static graph)",
        )
    if algorithm.rounds.gossip_steps < 2 or algorithm.exchange != "average":
        raise ScenarioError(
            "privacy.marginalized",
            f"'{name}' sends one averaged message per round; the marginalized "
            "attacker inverts gossip step 1 (multi_gossip, muffliato with "
            "gossip_steps >= 2)",
        )


@dataclasses.dataclass
class Attacker:
    """What the privacy stage needs from the simulation (built by the engine)."""

    config: PrivacyConfig
    capture: Capture
    apply_fn: Callable
    init_fn: Callable
    params_like: Any  # one model's parameters (structure and shapes)
    eval_data: Any  # the engine's EvalData (members and non-members)
    table: tuple[np.ndarray, np.ndarray]  # (n, k) in-neighbour idx and W, round 0
    num_peers: int
    num_classes: int
    seed: int
    train: dict  # optimizer (optax), batch_size, local_steps, rounds of the peers
    runs: Any = None  # shadow_runs.RunSetup: decentralized shadow runs
    cache: dict = dataclasses.field(default_factory=dict)  # attacks' shared state
    _pool: Pool | None = None

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = pool_of(self.eval_data)
        return self._pool

    def record(self, captured):
        return record(captured, self.capture.peers, self.params_like, *self.table)

    def receive(self, captured) -> Received:
        """One chunk's captured buffer as the messages under attack."""
        return self.messages([self.record(captured)])

    def messages(self, records) -> Received:
        cfg = self.config
        parts = [received(r, cfg.colluding, cfg.marginalized) for r in records]
        parts = [p for p in parts if len(p.round)]
        if not parts:
            return Received(None, np.zeros(0, int), np.zeros(0, int), [])
        model = jax.tree.map(lambda *xs: np.concatenate(xs), *(p.model for p in parts))
        return Received(
            model,
            np.concatenate([p.round for p in parts]),
            np.concatenate([p.victim for p in parts]),
            sum((p.attacker for p in parts), []),
        )

    def attack(self, records, specs=None) -> AttackResult:
        """Runs the attacks (``specs``, default the scenario's) on the records."""
        rec = self.messages(records)
        if not len(rec.round):
            return AttackResult([], {})
        tables = tables_of(
            self.apply_fn, jax.tree.map(np.asarray, rec.model), self.pool
        )
        ctx = AttackContext(
            rec,
            self.pool,
            tables,
            self.num_peers,
            self.num_classes,
            self.seed,
            self.apply_fn,
            self.init_fn,
            self.train,
            self.cache,
            self.runs,
            self.receive,
        )
        return run_attacks(ctx, specs if specs is not None else self.config.attacks)

    def capture_bytes(self, length: int, per_edge_rows: int) -> int:
        """Bytes the capture buffer of a chunk of ``length`` rounds holds."""
        leaves = jax.tree.leaves(self.params_like)
        model = sum(x.size * x.dtype.itemsize for x in leaves)
        rows = per_edge_rows + (1 if self.capture.second else 0)  # + step 1's
        return self.capture.slots(length) * len(self.capture.peers) * model * rows


class PrivacyLog:
    """privacy.csv and privacy_roc.png of a run, written as the run goes."""

    def __init__(self, run_dir: Path, attacker: Attacker):
        self.run_dir, self.attacker = run_dir, attacker
        self.csv = CsvLog(run_dir / PRIVACY_CSV, PRIVACY_FIELDS)
        self.seconds, self.messages = 0.0, 0

    def truncate_after(self, round_: int) -> None:
        self.csv.truncate_after(round_)

    def chunk(self, captured) -> None:
        """Attacks one chunk's captured messages; appends their rows."""
        t0 = time.perf_counter()
        rec = self.attacker.record(captured)
        if not (rec.rounds >= 0).any():
            return
        if self.attacker.config.save_messages:
            save(self.run_dir, rec)
        result = self.attacker.attack([rec])
        self.csv.write(result.rows)
        write_roc(self.run_dir / ROC_PNG, result)
        self.messages += result.messages
        self.seconds += time.perf_counter() - t0


def write_roc(path: Path, result: AttackResult, merge: bool = False) -> None:
    """The pooled ROC curves of the last attacked round: the PNG at ``path``
    and its points in privacy_roc.csv beside it (``merge``: the points of
    attacks not in ``result`` are kept)."""
    if not result.curves:
        return
    curves = {name: roc(*scores) for name, scores in result.curves.items()}
    rounds = max(r["round"] for r in result.rows)
    plot_roc(curves, path, f"membership attacks, round {rounds}, all victims")
    table = path.with_name(ROC_CSV)
    kept = []
    if merge and table.is_file():
        kept = [r for r in read_csv(table) if r["attack"] not in curves]
    points = kept + [
        {"attack": name, "fpr": float(f), "tpr": float(t)}
        for name, (fpr, tpr) in curves.items()
        for f, t in zip(fpr, tpr, strict=True)
    ]
    tmp = path.with_name(ROC_CSV + ".tmp")
    if tmp.exists():
        tmp.unlink()
    CsvLog(tmp, ["attack", "fpr", "tpr"]).write(points)
    tmp.replace(table)


def rerun(sim, run_dir: Path, specs=None) -> AttackResult:
    """Attacks a finished run's saved messages again; rewrites its privacy files.

    With ``specs`` (attack entries), only those attacks run and their rows
    replace the rows of the same attacks in privacy.csv; the others are kept.
    """
    attacker = sim.attacker
    if attacker is None:
        raise WorkbenchError(f"{run_dir}: its scenario has no privacy: section")
    records = load_all(run_dir)
    if not records:
        raise WorkbenchError(
            f"{run_dir}: no saved messages under privacy/ (was privacy.save_messages "
            "off, or did the run stop before its first attacked round?)"
        )
    # record by record, as the run attacked them: the same rows in the same order
    results = [attacker.attack([rec], specs) for rec in records]
    result = AttackResult(
        [row for res in results for row in res.rows],
        results[-1].curves,
        sum(res.messages for res in results),
    )
    names = {r["attack"] for r in result.rows}
    path = run_dir / PRIVACY_CSV
    kept = []
    if specs is not None and path.is_file():
        kept = [r for r in read_csv(path) if r["attack"] not in names]
    tmp = run_dir / (PRIVACY_CSV + ".tmp")
    if tmp.exists():
        tmp.unlink()
    log = CsvLog(tmp, PRIVACY_FIELDS)
    log.write(kept + result.rows)
    tmp.replace(path)
    write_roc(run_dir / ROC_PNG, result, merge=specs is not None)
    return result
