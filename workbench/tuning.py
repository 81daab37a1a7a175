"""Picking the execution strategy by timing it: what ``strategy: auto`` does.

The run's own first chunks of rounds are the trials, so nothing is computed
twice: chunk 0 runs the default (full vmap, or the chunking the memory budget
forced). A heavy peer step on a CPU is not tuned: the cost model of
:func:`workbench.execution.default_strategy` runs its peers one at a time. If
timing the other candidates pays (:func:`worth_tuning`: their compilations
cost at most a tenth of the training time still to come, and chunks remain for
the winner), each following chunk runs the next candidate; the fastest per
round runs the rest of the run (within 5% of the fastest, the one that needs
the least memory). Every candidate computes the same numbers up to float
rounding (tests/test_equivalence.py runs each), and the choice is saved in the
run directory (``execution.json``) so a resumed run keeps it; set the strategy
in the scenario to pin it.

Short runs (the quickstart: 0.15 s of training against 2 s per compilation)
never tune; long runs of light steps with many peers, and long runs on an
accelerator, do.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

Strategy = tuple[str, int | None]

TIE = 0.05  # within this fraction of the fastest, the smallest footprint wins
COMPILE_SHARE = 0.10  # trials' compilations may cost this share of training left


def _fields(strategy: Strategy) -> dict:
    kind, k = strategy
    return {"strategy": kind, "peers_per_chunk": k}


def _strategy(fields: dict) -> Strategy:
    return fields["strategy"], fields["peers_per_chunk"]


class Trial(NamedTuple):
    """One candidate: its time per round on one chunk, or why it did not run."""

    strategy: Strategy
    seconds_per_round: float | None  # None: not run (see ``skipped``)
    compile_seconds: float
    estimate_bytes: int  # XLA's peak estimate of the chunk and the evaluation
    skipped: str | None = None

    def to_dict(self) -> dict:
        out = {
            **_fields(self.strategy),
            "seconds_per_round": self.seconds_per_round,
            "compile_seconds": self.compile_seconds,
            "estimate_bytes": self.estimate_bytes,
        }
        return out if self.skipped is None else {**out, "skipped": self.skipped}


def tuning_candidates(num_peers: int) -> list[Strategy]:
    """Full vmap; ``map`` over 64, 16, 4 and 1 peers (at least two chunks);
    the peers unrolled in four vmapped chunks (from 8 peers on)."""
    out: list[Strategy] = [("vmap", None)]
    out += [("map", k) for k in (64, 16, 4, 1) if 2 * k <= num_peers]
    if num_peers >= 8:
        out.append(("unroll", num_peers // 4))
    return out


def worth_tuning(
    trials: int, compile_seconds: float, chunk_seconds: float, chunks_left: int
) -> bool:
    """Whether ``trials`` more candidates are worth compiling and timing.

    Args:
      compile_seconds: what the default's chunk took to compile.
      chunk_seconds: what one chunk of the default took to run.
      chunks_left: full chunks still to run after the one just timed.
    """
    if trials <= 0 or chunks_left <= trials:
        return False
    return trials * compile_seconds <= COMPILE_SHARE * chunk_seconds * chunks_left


def pick(trials: list[Trial]) -> Trial:
    """The fastest trial that ran; within TIE of it, the smallest footprint."""
    ran = [t for t in trials if t.seconds_per_round is not None]
    fastest = min(t.seconds_per_round for t in ran)
    close = [t for t in ran if t.seconds_per_round <= fastest * (1 + TIE)]
    return min(close, key=lambda t: (t.estimate_bytes, t.seconds_per_round))


@dataclasses.dataclass
class Tuning:
    """Which strategy runs the next chunk, and how the run's strategy was chosen.

    ``chosen_by``: ``scenario`` (pinned there), ``default`` (auto, tuning did
    not pay), ``cost model`` (auto, a heavy peer step on a CPU: one peer at a
    time, see workbench.execution.default_strategy), ``memory budget`` (auto,
    the start did not fit) or ``timing`` (the fastest trial).
    """

    strategy: Strategy  # the run's strategy once chosen; the default until then
    chosen_by: str
    pending: list[Strategy] = dataclasses.field(default_factory=list)
    trials: list[Trial] = dataclasses.field(default_factory=list)
    open: bool = False  # the default's first chunk decides whether to tune
    resumed: bool = False  # the choice was read back from the run directory

    @property
    def done(self) -> bool:
        return not self.open and not self.pending

    def next_strategy(self) -> Strategy:
        return self.pending[0] if self.pending else self.strategy

    def first_chunk(
        self,
        trial: Trial,
        candidates: list[Strategy],
        chunk_seconds: float,
        chunks_left: int,
    ) -> None:
        """After the default's first full chunk: start trials if they pay."""
        self.open = False
        self.trials = [trial]
        others = [c for c in candidates if c != self.strategy]
        if worth_tuning(len(others), trial.compile_seconds, chunk_seconds, chunks_left):
            self.pending = others

    def stop(self) -> None:
        """No (more) trials: the strategy so far is the run's."""
        self.open, self.pending = False, []

    def record(self, trial: Trial) -> None:
        """A candidate's trial (run or skipped); after the last one, the pick."""
        self.pending.remove(trial.strategy)
        self.trials.append(trial)
        if not self.pending:
            self.strategy = pick(self.trials).strategy
            self.chosen_by = "timing"

    def to_dict(self) -> dict:
        out = {
            **_fields(self.strategy),
            "chosen_by": self.chosen_by,
            "trials": [t.to_dict() for t in self.trials],
        }
        return {**out, "resumed": True} if self.resumed else out

    @classmethod
    def from_dict(cls, saved: dict) -> Tuning:
        """A choice saved by an earlier process of the same run."""
        trials = [
            Trial(
                _strategy(t),
                t["seconds_per_round"],
                t["compile_seconds"],
                t["estimate_bytes"],
                t.get("skipped"),
            )
            for t in saved.get("trials", [])
        ]
        return cls(_strategy(saved), saved["chosen_by"], trials=trials, resumed=True)
