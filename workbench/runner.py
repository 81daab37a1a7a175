"""The run loop: chunks of rounds, evaluation rows, checkpoints, resume, progress.

``simulate(scenario, run_dir)`` writes everything into ``run_dir`` as it goes;
``simulate(..., resume=True)`` restores the last checkpoint in ``run_dir``,
drops the rows written after it and continues: same numbers as an uninterrupted
run, because every random draw depends only on (seed, round, peer, purpose).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

import workbench
from workbench.engine import Simulation
from workbench.errors import DivergenceError, WorkbenchError
from workbench.results import (
    METRICS_FIELDS,
    PEER_FIELDS,
    CsvLog,
    Scalars,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_json,
)
from workbench.rounds import Evaluation


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
    }


def _stats(values: np.ndarray, prefix: str) -> dict:
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
        f"{prefix}_std": float(values.std()),
    }


def _ratio(num, den) -> np.ndarray:
    return np.asarray(num) / np.maximum(np.asarray(den), 1.0)


def rows_from_evaluation(
    ev: Evaluation,
    round_: int,
    wall: float,
    sent: np.ndarray,
    server_sent: float,
    model_bytes: int,
    active: int,
):
    """(metrics row, peer rows) for one evaluation."""
    ev = jax.device_get(ev)
    test_acc, test_loss = (
        _ratio(ev.test.correct, ev.test.count),
        _ratio(ev.test.loss, ev.test.count),
    )
    train_acc, train_loss = (
        _ratio(ev.train.correct, ev.train.count),
        _ratio(ev.train.loss, ev.train.count),
    )
    val_acc, val_loss = (
        _ratio(ev.val.correct, ev.val.count),
        _ratio(ev.val.loss, ev.val.count),
    )
    peer_bytes = sent * model_bytes
    row = {
        "round": round_,
        "virtual_time": float(round_),
        "wall_time": round(wall, 4),
        **_stats(test_acc, "test_acc"),
        **_stats(test_loss, "test_loss"),
        "train_loss_mean": float(train_loss.mean()),
        "val_acc_mean": float(val_acc.mean()),
        "averaged_model_acc": float(_ratio(ev.averaged.correct, ev.averaged.count)),
        "averaged_model_loss": float(_ratio(ev.averaged.loss, ev.averaged.count)),
        "consensus_distance": float(ev.consensus),
        "bytes_sent_total": float(peer_bytes.sum() + server_sent * model_bytes),
        "bytes_sent_per_peer": float(peer_bytes.mean()),
        "active_peers": active,
    }
    peers = [
        {
            "round": round_,
            "peer": i,
            "train_loss": float(train_loss[i]),
            "train_acc": float(train_acc[i]),
            "val_loss": float(val_loss[i]),
            "val_acc": float(val_acc[i]),
            "test_loss": float(test_loss[i]),
            "test_acc": float(test_acc[i]),
            "bytes_sent": float(peer_bytes[i]),
        }
        for i in range(len(test_acc))
    ]
    return row, peers


def _aot(jitted, *args, **static):
    """Compiles ``jitted`` ahead of time; returns (executable, seconds)."""
    t = time.perf_counter()
    executable = jitted.lower(*args, **static).compile()
    return executable, time.perf_counter() - t


class Totals(NamedTuple):
    """What a checkpoint carries besides the state; restored on resume."""

    round: int
    sent: np.ndarray  # (n,) model-sized messages sent by each peer so far
    server_sent: float  # messages sent by the server so far
    wall: float  # wall seconds spent before this process


def _payload(state, totals: Totals) -> dict:
    return {
        "round": np.int64(totals.round),
        "state": state,
        "sent": np.asarray(totals.sent),
        "server_sent": np.float64(totals.server_sent),
        "wall": np.float64(totals.wall),
    }


def _restore(run_dir: Path, state, n: int):
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise WorkbenchError(
            f"--resume {run_dir}: no checkpoint in {run_dir}/checkpoints"
        )
    got = load_checkpoint(ckpt, _payload(state, Totals(0, np.zeros(n), 0.0, 0.0)))
    totals = Totals(
        int(got["round"]),
        np.asarray(got["sent"]),
        float(got["server_sent"]),
        float(got["wall"]),
    )
    return jax.tree.map(jnp.asarray, got["state"]), totals


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[acc]}"),
        TextColumn("{task.fields[speed]}"),
        disable=not enabled,
    )


class Timer(NamedTuple):
    compile: float = 0.0
    train: float = 0.0  # seconds inside chunks of rounds
    eval: float = 0.0
    compilations: int = 0


def simulate(
    sim: Simulation, run_dir: Path, resume: bool = False, progress: bool = True
) -> dict:
    """Runs (or resumes) ``sim`` into ``run_dir``; returns the summary dict."""
    sc, n = sim.scenario, sim.scenario.peers
    metrics = CsvLog(run_dir / "metrics.csv", METRICS_FIELDS)
    peers = CsvLog(run_dir / "peers.csv", PEER_FIELDS)
    state, totals = sim.state, Totals(0, np.zeros(n), 0.0, 0.0)
    if resume:
        state, totals = _restore(run_dir, state, n)
        metrics.truncate_after(totals.round)
        peers.truncate_after(totals.round)
    start, t0 = totals.round, time.perf_counter()
    tb = Scalars(run_dir, sc.output.tensorboard)
    evaluate, seconds = _aot(sim.evaluate, state.params, sim.eval_data)
    timer, compiled, row = Timer(compile=seconds), {}, {}
    args = (sim.data, sim.topology.data, sim.weights)
    with _progress_bar(progress) as bar:
        task = bar.add_task(
            "rounds", total=sc.rounds, completed=start, acc="", speed=""
        )
        while totals.round < sc.rounds:
            r = totals.round
            length = min(sc.eval_every, sc.rounds - r)
            if length not in compiled:
                compiled[length], seconds = _aot(
                    sim.chunk, state, *args, jnp.int32(r), length=length
                )
                timer = timer._replace(
                    compile=timer.compile + seconds, compilations=timer.compilations + 1
                )
            c0 = time.perf_counter()
            state, sent, server = jax.block_until_ready(
                compiled[length](state, *args, jnp.int32(r))
            )
            c1 = time.perf_counter()
            ev = jax.block_until_ready(evaluate(state.params, sim.eval_data))
            timer = timer._replace(
                train=timer.train + c1 - c0, eval=timer.eval + time.perf_counter() - c1
            )
            if not bool(ev.finite):
                raise DivergenceError(
                    f"training diverged (NaN/inf parameters) in rounds {r}-{r + length}"
                    f"; the last good checkpoint is kept in {run_dir / 'checkpoints'}"
                )
            totals = Totals(
                r + length,
                totals.sent + np.asarray(sent),
                totals.server_sent + float(server),
                totals.wall,
            )
            wall = totals.wall + time.perf_counter() - t0
            row, peer_rows = rows_from_evaluation(
                ev,
                totals.round,
                wall,
                totals.sent,
                totals.server_sent,
                sim.model_bytes,
                sim.spec.participants,
            )
            metrics.write([row])
            peers.write(peer_rows)
            tb.write(row)
            if sc.output.checkpoint:
                save_checkpoint(
                    run_dir,
                    totals.round,
                    _payload(state, totals._replace(wall=wall)),
                    keep=sc.output.keep_checkpoints,
                )
            speed = _peer_steps(sim, totals.round - start, timer.train)
            bar.update(
                task,
                completed=totals.round,
                acc=f"acc {row['test_acc_mean']:.3f}",
                speed=f"{speed:,.0f} peer-steps/s",
            )
    tb.close()
    sim.state = state
    summary = _summary(sim, row, timer, start, totals.wall + time.perf_counter() - t0)
    write_json(run_dir / "summary.json", summary)
    return summary


def _peer_steps(sim: Simulation, rounds: int, seconds: float) -> float:
    """Local steps actually computed (sampled peers only) per second."""
    return sim.spec.participants * sim.spec.local_steps * rounds / max(seconds, 1e-9)


def _summary(sim: Simulation, row: dict, timer: Timer, start: int, wall: float):
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
        "wall_seconds": wall,
        "compile_seconds": timer.compile,
        "compilations": timer.compilations,
        "train_seconds": timer.train,
        "eval_seconds": timer.eval,
        "peer_steps_per_second": _peer_steps(sim, rounds, timer.train),
        "rounds_per_second": rounds / max(timer.train, 1e-9),
        "execution": {"strategy": sim.strategy[0], "peers_per_chunk": sim.strategy[1]},
        "topology": {"kernel": sim.topology.kernel, **sim.topology.info},
        "rho": sim.topology.info.get("rho"),
        "environment": environment(),
    }


def run(
    scenario_path: str | None,
    overrides: list[str],
    *,
    out: str | None = None,
    data_dir: str | None = None,
    resume: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """CLI entry: load (or reload) the scenario, build, write scenario.yaml, run."""
    from workbench.data import resolve_data_dir
    from workbench.engine import build
    from workbench.results import new_run_dir
    from workbench.scenario import dump_scenario, load_scenario

    if resume:
        run_dir = Path(resume)
        if not (run_dir / "scenario.yaml").is_file():
            raise WorkbenchError(
                f"--resume {run_dir}: no scenario.yaml there; expected a run directory"
            )
        scenario = load_scenario(run_dir / "scenario.yaml")
    else:
        scenario = load_scenario(scenario_path, overrides)
        run_dir = Path(out) if out else new_run_dir("runs", scenario.name)
        if (run_dir / "metrics.csv").exists():
            raise WorkbenchError(
                f"--out {run_dir} already holds a run; use "
                "--resume to continue it or pick a new directory"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in environment().items())
        (run_dir / "scenario.yaml").write_text(header + dump_scenario(scenario))
    sim = build(scenario, resolve_data_dir(data_dir))
    return run_dir, simulate(sim, run_dir, resume=bool(resume), progress=progress)
