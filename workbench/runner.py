"""The run loop: chunks of rounds, evaluation rows, checkpoints, resume, progress.

``simulate(sim, run_dir)`` writes everything into ``run_dir`` as it goes;
given a checkpoint it restores it, drops the rows written after it and
continues: same numbers as an uninterrupted run, because every random draw
depends only on (seed, round, peer, purpose). ``run`` is the CLI's entry: it
guards the run directory (see rundir.py) and checks what a resume resumes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import workbench
from workbench.allocator import huge_pages_state, release_free_memory
from workbench.checkpoint import (
    Checkpoint,
    changed_keys,
    latest_good,
    restore,
    save_checkpoint,
)
from workbench.engine import Simulation
from workbench.errors import DivergenceError, RunInterrupted, WorkbenchError, warn
from workbench.evaluation import columns, rows
from workbench.interrupts import deferred
from workbench.memory import out_of_memory_guard
from workbench.planner import (
    Budget,
    cache_hits,
    fit,
    footprint,
    memory_budget,
    peak_memory,
    use_compilation_cache,
)
from workbench.privacy.stage import PrivacyLog
from workbench.progress import RunProgress
from workbench.results import CsvLog, Scalars, read_csv, write_json
from workbench.rundir import (
    RUN_MARKER,
    check_out_dir,
    disk_errors,
    is_finished,
    new_run_dir,
    run_lock,
)
from workbench.scenario import dump_scenario, load_scenario, scenario_to_dict
from workbench.tuning import Trial, Tuning, tuning_candidates

EXECUTION_FILE = "execution.json"  # the strategy auto chose, kept for a resume


def environment() -> dict:
    """Versions and device, saved with every run."""
    dev = jax.devices()[0]
    return {
        "workbench": workbench.__version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{dev.device_kind}",
        "device_count": jax.device_count(),
        "huge_pages": huge_pages_state(),
    }


def aot(jitted, *args, **static):
    """Compiles ``jitted`` ahead of time; (executable, seconds, whether the
    persistent compilation cache served it instead of XLA)."""
    hits, t = cache_hits(), time.perf_counter()
    executable = jitted.lower(*args, **static).compile()
    return executable, time.perf_counter() - t, cache_hits() > hits


class Totals(NamedTuple):
    """What a checkpoint carries besides the state; restored on resume."""

    round: int
    sent: np.ndarray  # (n,) float64 bits sent by each peer so far
    server_sent: float  # bits sent by the server so far
    wall: float  # wall seconds spent before this process


def _payload(state, totals: Totals) -> dict:
    return {
        "round": np.int64(totals.round),
        "state": state,
        "sent": np.asarray(totals.sent),
        "server_sent": np.float64(totals.server_sent),
        "wall": np.float64(totals.wall),
    }


def _initial(sim: Simulation, ckpt: Checkpoint | None):
    """(state, totals) at the start: fresh, or restored from ``ckpt``."""
    n = sim.scenario.peers
    totals = Totals(0, np.zeros(n), 0.0, 0.0)
    if ckpt is None:
        return sim.state, totals
    got = restore(ckpt, _payload(sim.state, totals))
    totals = Totals(
        int(got["round"]),
        np.asarray(got["sent"]),
        float(got["server_sent"]),
        float(got["wall"]),
    )
    return sim.place(jax.tree.map(jnp.asarray, got["state"])), totals


class Timer(NamedTuple):
    compile: float = 0.0  # seconds compiling (or loading) chunks and evaluation
    train: float = 0.0  # seconds inside chunks of rounds
    eval: float = 0.0
    compilations: int = 0  # chunk programs XLA compiled
    cached: int = 0  # chunk programs the persistent compilation cache served

    def compiled(self, seconds: float, cached: bool) -> Timer:
        """With one more chunk program (and ``seconds`` more compiling)."""
        return self._replace(
            compile=self.compile + seconds,
            compilations=self.compilations + (not cached),
            cached=self.cached + cached,
        )


def _diverged(first: int, last: int, kept: Path | None, enabled: bool) -> str:
    if kept is not None:
        keep = f"the last good checkpoint is kept: {kept}"
    elif not enabled:
        keep = "no checkpoint was kept (output.checkpoint is off)"
    else:
        keep = "there is no checkpoint: it diverged before the first one"
    return (
        f"training diverged (NaN/inf parameters) in rounds {first}-{last}; {keep}; "
        "try a lower learning rate"
    )


def _interrupted(run_dir: Path, round_: int, kept: Path | None, sc) -> str:
    if kept is not None:
        return (
            f"interrupted at round {round_}; {run_dir} is kept up to round "
            f"{_round_of(kept)}; continue with: workbench simulate --resume {run_dir}"
        )
    if sc.output.checkpoint:
        return (
            f"interrupted before the first checkpoint; start it over with: "
            f"workbench simulate --resume {run_dir}"
        )
    return (
        f"interrupted at round {round_}; output.checkpoint is off, so {run_dir} "
        "cannot be resumed (its rows are kept)"
    )


def _activity(sim: Simulation, traffic) -> tuple[float, float | None]:
    """(active peers per round, virtual time at the chunk's end)."""
    if traffic.time is None:
        return sim.spec.participants, None
    active = round(float(np.asarray(traffic.active, np.float64).mean()), 4)
    return (int(active) if active.is_integer() else active), float(traffic.time[-1])


def _round_of(ckpt: Path) -> int:
    return int(ckpt.stem.split("_")[-1])


class RunLog:
    """One run's files as it goes: rows, TensorBoard, checkpoints, its totals.

    A driver (``simulate``, or replicas of one program) runs the chunks and
    hands each chunk's outputs to ``record``; ``finish`` writes summary.json.
    """

    def __init__(
        self, sim: Simulation, run_dir: Path, checkpoint: Checkpoint | None, shapes=None
    ):
        """``shapes``: the evaluation's outputs (``jax.eval_shape``), if known."""
        sc = sim.scenario
        self.sim, self.run_dir = sim, run_dir
        self.state, self.totals = _initial(sim, checkpoint)
        if shapes is None:
            shapes = jax.eval_shape(sim.evaluate, self.state.params, sim.eval_data)
        shapes = shapes.values
        metric_cols, peer_cols = columns(shapes)
        self.metrics = CsvLog(run_dir / "metrics.csv", metric_cols)
        self.peers = CsvLog(run_dir / "peers.csv", peer_cols)
        self.metrics.truncate_after(self.totals.round)
        self.peers.truncate_after(self.totals.round)
        self.privacy = self.report = None
        if sim.attacker is not None:
            self.privacy = PrivacyLog(run_dir, sim.attacker)
            self.privacy.truncate_after(self.totals.round)
            from workbench.privacy.guarantees import ACCOUNTING_JSON, accounting

            self.report = accounting(sim)  # dp-accounting loads for privacy runs only
            if self.report is not None:
                write_json(run_dir / ACCOUNTING_JSON, self.report)
        self.kept = checkpoint.path if checkpoint else None
        self.start, self.t0 = self.totals.round, time.perf_counter()
        self.scenario = scenario_to_dict(sc)
        self.tb = Scalars(run_dir, sc.output.tensorboard)
        self.row: dict = {}
        self.steps = 0.0  # local steps the peers finished in this process

    def wall(self) -> float:
        return self.totals.wall + time.perf_counter() - self.t0

    def check(self, finite, length: int) -> None:
        """Raises DivergenceError if the chunk just run left non-finite params."""
        if not bool(finite):
            r, sc = self.totals.round, self.sim.scenario
            raise DivergenceError(
                _diverged(r + 1, r + length, self.kept, sc.output.checkpoint)
            )

    def record(self, state, traffic, captured, values: dict, length: int) -> dict:
        """Writes one chunk's rows, privacy results and checkpoint; the row."""
        sc, totals = self.sim.scenario, self.totals
        sent = np.asarray(traffic.sent, np.float64).sum(axis=0)
        server = float(np.asarray(traffic.server, np.float64).sum())
        totals = Totals(
            totals.round + length,
            totals.sent + sent,
            totals.server_sent + server,
            totals.wall,
        )
        self.totals, wall = totals, self.wall()
        active = _activity(self.sim, traffic)
        row, peer_rows = rows(
            values, totals.round, wall, totals.sent, totals.server_sent, *active
        )
        with deferred():
            if self.privacy is not None:
                self.privacy.chunk(captured)
            self.metrics.write([row])
            self.peers.write(peer_rows)
            self.tb.write(row)
            if sc.output.checkpoint:
                self.kept = save_checkpoint(
                    self.run_dir,
                    totals.round,
                    _payload(state, totals._replace(wall=wall)),
                    self.scenario,
                    keep=sc.output.keep_checkpoints,
                )
        self.steps += _steps(self.sim, traffic, length)
        self.row = row
        return row

    def interrupted(self) -> str:
        return _interrupted(
            self.run_dir, self.totals.round, self.kept, self.sim.scenario
        )

    def close(self) -> None:
        self.tb.close()

    def finish(
        self,
        sim: Simulation,
        state,
        timer: Timer,
        execution: dict,
        memory: dict,
        wall: float | None = None,
    ) -> dict:
        """Writes and returns summary.json (``sim``: as the run was executed;
        ``wall``: its wall seconds, when it is a share of a group's)."""
        row = self.row or _last_row(self.metrics)
        wall = self.wall() if wall is None else wall
        summary = _summary(sim, row, timer, self.start, wall, self.steps)
        if sim.spec.clock is not None:
            summary["clock"] = _clock_summary(sim, state, row)
        summary["execution"] = execution
        summary["memory"] = memory
        if self.privacy is not None:
            summary["privacy"] = _privacy_summary(sim, self.privacy)
            if self.report is not None:
                summary["privacy"]["accounting"] = self.report
        write_json(self.run_dir / "summary.json", summary)
        return summary


def simulate(
    sim: Simulation,
    run_dir: Path,
    checkpoint: Checkpoint | None = None,
    progress: bool = True,
    console=None,
) -> dict:
    """Runs ``sim`` into ``run_dir`` (from ``checkpoint`` if given); the summary."""
    sc = sim.scenario
    use_compilation_cache(sc.execution.compilation_cache)
    log = RunLog(sim, run_dir, checkpoint)
    state = log.state
    release_free_memory()  # what loading the data left
    try:
        with (
            RunProgress(sc.rounds, log.start, progress, console) as bar,
            out_of_memory_guard(sim.estimate),
        ):
            plan, tuning = _plan(sim, state, log.start, bar, run_dir)
            release_free_memory()  # what compiling left
            args = (sim.data, sim.topology.data, sim.weights)
            while log.totals.round < sc.rounds:
                r = log.totals.round
                length = min(sc.eval_every, sc.rounds - r)
                strategy = tuning.next_strategy()
                chunk = plan.chunk(strategy, length, state, args, r, bar)
                if not tuning.done and plan.over_budget(strategy, length):
                    tuning.record(plan.trial(strategy, None))
                    continue
                c0 = time.perf_counter()
                state, traffic, *captured = jax.block_until_ready(
                    chunk(state, *args, jnp.int32(r))
                )
                c1 = time.perf_counter()
                if not tuning.done:
                    _time_trial(plan, tuning, strategy, c1 - c0, length, r, sc)
                    if tuning.done:
                        write_json(run_dir / EXECUTION_FILE, tuning.to_dict())
                ev = jax.block_until_ready(plan.evaluate(state.params, sim.eval_data))
                plan.timer = plan.timer._replace(
                    train=plan.timer.train + c1 - c0,
                    eval=plan.timer.eval + time.perf_counter() - c1,
                )
                log.check(ev.finite, length)
                values = jax.device_get(ev.values)
                row = log.record(state, traffic, *captured or [None], values, length)
                speed = log.steps / max(plan.timer.train, 1e-9)
                bar.advance(log.totals.round, row["test_acc_mean"], speed)
    except KeyboardInterrupt:
        raise RunInterrupted(log.interrupted()) from None
    finally:
        log.close()
    sim = plan.sim(tuning.strategy)
    sim.state = state
    execution = tuning.to_dict()
    if sim.devices > 1:  # the peers were split over this many devices
        execution["devices"] = sim.devices
    memory = {**plan.footprints[tuning.strategy].to_dict(), **peak_memory()}
    if plan.budget is not None:
        memory["budget_bytes"] = plan.budget.bytes
    return log.finish(sim, state, plan.timer, execution, memory)


@dataclasses.dataclass
class Plan:
    """The compiled run: evaluation, chunks per (strategy, length), footprints."""

    sims: dict  # strategy -> Simulation lifted that way
    evaluate: Any  # the evaluation executable (of the planned strategy)
    chunks: dict  # (strategy, length) -> chunk executable
    footprints: dict  # strategy -> Footprint, for the strategies compiled
    compile_seconds: dict  # strategy -> seconds its first chunk took to compile
    budget: Budget | None
    timer: Timer

    def sim(self, strategy) -> Simulation:
        if strategy not in self.sims:
            self.sims[strategy] = next(iter(self.sims.values())).with_strategy(strategy)
        return self.sims[strategy]

    def chunk(self, strategy, length: int, state, args, round_: int, bar):
        """The executable of a chunk of ``length`` rounds (compiled once)."""
        if (strategy, length) not in self.chunks:
            bar.compiling(f"a chunk of {length} rounds")
            self.chunks[strategy, length], seconds, cached = aot(
                self.sim(strategy).chunk,
                state,
                *args,
                jnp.int32(round_),
                length=length,
            )
            self.timer = self.timer.compiled(seconds, cached)
            self.compile_seconds.setdefault(strategy, seconds)
        return self.chunks[strategy, length]

    def over_budget(self, strategy, length: int) -> bool:
        """Whether a candidate's chunk needs more than the budget (kept)."""
        if strategy not in self.footprints:
            chunk = self.chunks[strategy, length]
            self.footprints[strategy] = footprint(chunk, self.evaluate, strategy)
        fp = self.footprints[strategy]
        return self.budget is not None and fp.peak > self.budget.bytes

    def trial(self, strategy, seconds_per_round: float | None) -> Trial:
        """A timed trial, or (None) one skipped for the budget."""
        fp = self.footprints[strategy]
        skipped = None if seconds_per_round is not None else "over the memory budget"
        compile_s = self.compile_seconds[strategy]
        return Trial(strategy, seconds_per_round, compile_s, fp.peak, skipped)


def _plan(sim: Simulation, state, round_: int, bar: RunProgress, run_dir: Path):
    """Compiles the evaluation and the first chunk for the strategy that fits.

    Returns (Plan, Tuning); nothing has run yet, so a budget failure costs no
    compute. A run resumed after ``auto`` chose its strategy keeps that choice.
    """
    sc = sim.scenario
    length = min(sc.eval_every, sc.rounds - round_)
    auto = sc.execution.strategy == "auto"
    resumed = _saved_choice(run_dir) if auto else None
    if resumed is not None:
        sim = sim.with_strategy(resumed.strategy)
    built: dict = {}
    timer = Timer()

    def compile_for(strategy):
        nonlocal timer
        candidate = sim if strategy == sim.strategy else sim.with_strategy(strategy)
        bar.compiling("the evaluation")
        evaluate, s1, _ = aot(candidate.evaluate, state.params, candidate.eval_data)
        bar.compiling(f"a chunk of {length} rounds")
        args = (candidate.data, candidate.topology.data, candidate.weights)
        start = jnp.int32(round_)
        chunk, s2, cached = aot(candidate.chunk, state, *args, start, length=length)
        timer = timer.compiled(s1 + s2, cached)
        built[strategy] = (candidate, evaluate, chunk, s2)
        return footprint(chunk, evaluate, strategy)

    budget = memory_budget(sc.execution.memory_budget)
    fp = fit(compile_for, sim.strategy, sc.peers, budget, auto)
    chosen, evaluate, chunk, seconds = built[fp.strategy]
    plan = Plan(
        {fp.strategy: chosen},
        evaluate,
        {(fp.strategy, length): chunk},
        {fp.strategy: fp},
        {fp.strategy: seconds},
        budget,
        timer,
    )
    if resumed is not None and resumed.strategy == fp.strategy:
        return plan, resumed
    if not auto:
        return plan, Tuning(fp.strategy, "scenario")
    if fp.strategy != sim.strategy:
        return plan, Tuning(fp.strategy, "memory budget", open=True)
    # the cost model's choice is kept: timing full vmap would need its memory
    return plan, Tuning(fp.strategy, sim.chosen_by, open=sim.chosen_by == "default")


def _saved_choice(run_dir: Path) -> Tuning | None:
    """The strategy ``auto`` chose in an earlier process of this run, if any."""
    path = run_dir / EXECUTION_FILE
    if not path.is_file():
        return None
    try:
        return Tuning.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        warn(f"{path} is unreadable ({e}); choosing the strategy again")
        return None


def _time_trial(plan: Plan, tuning: Tuning, strategy, seconds, length, r, sc):
    """Feeds one chunk's time to the tuning (full-length chunks only)."""
    if length != sc.eval_every:  # the last, shorter chunk: too late to tune
        tuning.stop()
        return
    trial = plan.trial(strategy, seconds / length)
    if tuning.open:
        left = (sc.rounds - r - length) // sc.eval_every
        tuning.first_chunk(trial, tuning_candidates(sc.peers), seconds, left)
    else:
        tuning.record(trial)


def _privacy_summary(sim: Simulation, privacy: PrivacyLog) -> dict:
    """What the privacy stage kept and cost: victims, rounds, capture memory."""
    capture = sim.attacker.capture
    per_edge = sim.spec.algorithm.exchange == "edge"
    rows = sim.attacker.table[0].shape[1] - 1 if per_edge else 1
    return {
        "victims": list(capture.peers),
        "attacked_rounds": [r + 1 for r in capture.rounds],
        "capture_bytes_per_chunk": sim.attacker.capture_bytes(
            sim.scenario.eval_every, rows
        ),
        "messages_attacked": privacy.messages,
        "attack_seconds": privacy.seconds,
    }


def _last_row(metrics: CsvLog) -> dict:
    """The last metrics row as numbers (a resume that had nothing left to run)."""
    rows = metrics.rows()
    return {k: float(v) for k, v in rows[-1].items() if v != ""} if rows else {}


def _steps(sim: Simulation, traffic, rounds: int) -> float:
    """Local steps finished in a chunk: the participants' every round, or on
    the clock the peers that finished a step in each tick."""
    if traffic.active is not None:
        return (
            float(np.asarray(traffic.active, np.float64).sum()) * sim.spec.local_steps
        )
    return float(sim.spec.participants * sim.spec.local_steps * rounds)


def _clock_summary(sim: Simulation, state, row: dict) -> dict:
    """What the virtual clock did: mode, time, steps finished per peer."""
    cfg = sim.spec.clock.config
    steps = np.asarray(jax.device_get(state.clock.steps))
    out = {
        "mode": cfg.mode,
        "virtual_time": row.get("virtual_time"),
        "steps_per_peer_min": int(steps.min()),
        "steps_per_peer_mean": float(steps.mean()),
        "steps_per_peer_max": int(steps.max()),
        "ring_depth": sim.spec.clock.buffer,
        # samples sent to live peers by redistribution (dyn-fed's failures)
        "redistributed_samples": int(np.asarray(state.clock.moved_n).sum()),
    }
    sessions = sim.spec.algorithm.sessions
    if sessions is not None:  # a peer's steps are the sessions it finished
        out["sessions_finished"] = int(steps.sum()) // sessions.uniform
    return out


def _summary(
    sim: Simulation, row: dict, timer: Timer, start: int, wall: float, steps: float
):
    rounds = sim.scenario.rounds - start
    return {
        "rounds": sim.scenario.rounds,
        "num_peers": sim.scenario.peers,
        "num_params": sim.num_params,
        "final_mean_test_accuracy": row.get("test_acc_mean"),
        "final_min_test_accuracy": row.get("test_acc_min"),
        "final_max_test_accuracy": row.get("test_acc_max"),
        "final_averaged_model_accuracy": row.get("averaged_model_acc"),
        "final_consensus_distance": row.get("consensus_distance"),
        "bytes_sent_total": row.get("bytes_sent_total"),
        "bytes_sent_per_peer": row.get("bytes_sent_per_peer"),
        "bytes_per_round_per_peer": row.get("bytes_per_round_per_peer"),
        "wall_seconds": wall,
        "compile_seconds": timer.compile,
        "compilations": timer.compilations,
        "cached_compilations": timer.cached,
        "train_seconds": timer.train,
        "eval_seconds": timer.eval,
        "peer_steps_per_second": steps / max(timer.train, 1e-9),
        "rounds_per_second": rounds / max(timer.train, 1e-9),
        "topology": {"kernel": sim.topology.kernel, **sim.topology.info},
        "rho": sim.topology.info.get("rho"),
        "environment": environment(),
    }


class RunResult(NamedTuple):
    run_dir: Path
    summary: dict
    already_finished: bool = False  # a resumed run that had nothing left to do


def _announce(run_dir: Path, verb: str) -> None:
    print(f"workbench: {verb} {run_dir}", flush=True)


def _resume_point(run_dir: Path, scenario) -> Checkpoint | None:
    """The checkpoint to continue from, after checking it matches scenario.yaml."""
    ckpt = latest_good(run_dir)
    if ckpt is None:
        done = (
            read_csv(run_dir / "metrics.csv")
            if (run_dir / "metrics.csv").is_file()
            else []
        )
        if done:
            raise WorkbenchError(
                f"--resume {run_dir}: no readable checkpoint to continue from; its "
                f"rows up to round {done[-1]['round']} are kept; start a new run"
            )
        warn(f"{run_dir} has no checkpoint yet; starting it from round 0")
        return None
    changed = changed_keys(ckpt.scenario, scenario_to_dict(scenario))
    if changed:
        raise WorkbenchError(
            f"--resume {run_dir}: scenario.yaml was edited after the run started "
            f"({', '.join(changed)} changed); put it back, or start a new run "
            "with the new values"
        )
    return ckpt


def _resume(run_dir: Path, data_dir, progress: bool) -> RunResult:
    from workbench.data import resolve_data_dir
    from workbench.engine import build

    if not (run_dir / RUN_MARKER).is_file():
        raise WorkbenchError(
            f"--resume {run_dir}: no {RUN_MARKER} there; expected a run directory"
        )
    scenario = load_scenario(run_dir / RUN_MARKER)
    summary = is_finished(run_dir, scenario.rounds)
    if summary is not None:
        return RunResult(run_dir, summary, already_finished=True)
    with run_lock(run_dir):
        ckpt = _resume_point(run_dir, scenario)
        sim = build(scenario, resolve_data_dir(data_dir))
        _announce(run_dir, "resuming")
        return RunResult(run_dir, simulate(sim, run_dir, ckpt, progress))


def _start(scenario_path, overrides, out, data_dir, progress: bool) -> RunResult:
    from workbench.data import resolve_data_dir
    from workbench.engine import build

    scenario = load_scenario(scenario_path, overrides)
    if scenario.sweep is not None:
        raise WorkbenchError(
            f"{scenario_path} has a sweep: section; run it with `workbench sweep "
            f"{scenario_path}` (or drop the section)"
        )
    if out:
        check_out_dir(Path(out))
    sim = build(scenario, resolve_data_dir(data_dir))
    if out:
        run_dir = Path(out)
        with disk_errors(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir("runs", scenario.name)
    return start(sim, run_dir, progress)


def start(sim: Simulation, run_dir: Path, progress: bool = True) -> RunResult:
    """A new run of ``sim`` in the existing ``run_dir`` (locked while it runs)."""
    with run_lock(run_dir):
        mark(sim.scenario, run_dir)
        _announce(run_dir, "run directory")
        return RunResult(run_dir, simulate(sim, run_dir, None, progress))


def mark(scenario, run_dir: Path) -> None:
    """Makes ``run_dir`` a run directory of ``scenario`` (its lock held): checks
    it is free, now that no one else can start there, and writes scenario.yaml."""
    check_out_dir(run_dir)
    header = "".join(f"# {k}: {v}\n" for k, v in environment().items())
    with disk_errors(run_dir / RUN_MARKER):
        (run_dir / RUN_MARKER).write_text(header + dump_scenario(scenario))


def run(
    scenario_path: str | None,
    overrides: list[str],
    *,
    out: str | None = None,
    data_dir: str | None = None,
    resume: str | None = None,
    progress: bool = True,
) -> RunResult:
    """CLI entry: start a new run, or resume (or report) the run in ``resume``."""
    if resume:
        return _resume(Path(resume), data_dir, progress)
    return _start(scenario_path, overrides, out, data_dir, progress)
