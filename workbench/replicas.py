"""Replicas: runs that are one compiled program, stacked in one jitted chunk.

Runs that differ only in array values compile to the same program: their
seed is an argument of the chunk (workbench.rounds) and, with a constant
schedule, the learning rate (and SGD's momentum) is optimizer state
(workbench.optim). A sweep's seeds, learning rates and momenta are such
runs. ``run_replicas`` runs S of them as one program: ``lax.map`` over a
leading replica axis of their states, data, topology arrays, weights and
seeds, so they compile once and take one dispatch per chunk and one
evaluation call between chunks.

Each run's numbers are bit for bit those of its separate run: ``lax.map``
runs the separate run's chunk once per replica, where ``vmap`` batches the
matrix products and changes float rounding, and was no faster on this 2-core
CPU (quickstart, 9 replicas, 50 rounds: lax.map 10.9 ms, vmap 12.1 ms per
replica, a separate run 14 to 15 ms; vmap's parameters 1.7e-4 away after
300 rounds). The quickstart is compute-bound there, so stacking saves the
compilations, dispatches and evaluation calls, not the arithmetic.

Each run still writes its own run directory as it goes (rows, checkpoints,
summary): a group that is interrupted resumes as separate runs, with the
same numbers. Each summary reports the run's share of the group's wall,
training, evaluation and compile seconds (their sum is the group's).

``program`` says whether two runs are one program: their chunks' jaxprs
(constants included) are equal, and so are their evaluations' model,
metrics, strategy and input shapes. Runs with a privacy stage or split over
devices always run alone. Runs whose peer data differ in shape (a Dirichlet
partition's largest peer depends on the seed) are different programs: their
data is not padded to a common size, since redistribution on the clock
indexes it by its padded width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.algorithms.base import take_rows
from workbench.allocator import release_free_memory
from workbench.engine import Simulation
from workbench.errors import DivergenceError, RunInterrupted, WorkbenchError
from workbench.planner import Footprint, footprint, memory_budget, peak_memory
from workbench.progress import RunProgress
from workbench.rounds import chunk_body
from workbench.rundir import disk_errors, run_lock
from workbench.runner import RunLog, Timer, aot, mark
from workbench.tuning import Tuning


class Program(NamedTuple):
    """What makes two runs one compiled program (see ``program``)."""

    chunk: str  # the jaxpr of a chunk of eval_every rounds, seed traced
    evaluate: str  # what the evaluation is built from, and its inputs' shapes
    consts: str  # digest of the chunk's constants
    rounds: int
    eval_every: int


class TooLarge(WorkbenchError):
    """The stacked replicas need more memory than the budget (split them)."""


def _digest(consts) -> str:
    h = hashlib.sha256()
    for c in consts:
        a = np.asarray(c)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def program(sim: Simulation) -> Program | None:
    """The run's program, traced only; None for a run that must run alone."""
    if sim.attacker is not None or sim.mesh is not None:
        return None
    sc = sim.scenario

    def chunk(state, data, topo_data, weights, start, seed):
        return chunk_body(sim.spec, seed)(
            state, data, topo_data, weights, start, sc.eval_every
        )

    args = (sim.state, sim.data, sim.topology.data, sim.weights)
    c = jax.make_jaxpr(chunk)(*args, jnp.int32(0), np.uint32(0))
    # the evaluation is built from the model, the metrics and the strategy
    # alone (no seed, no optimizer): those and its inputs' shapes decide it
    inputs = (sim.state.params, sim.eval_data)
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(inputs)]
    built = (jax.tree.structure(inputs), shapes, sc.model, sc.evaluation)
    evaluate = repr((*built, sim.strategy))
    digest = _digest(c.consts)
    return Program(str(c.jaxpr), evaluate, digest, sc.rounds, sc.eval_every)


def stack(trees):
    """Trees of equal structure -> one tree, leaves with a leading replica axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def replica_chunk(sim: Simulation):
    """``chunk(states, data, topo_data, weights, start, seeds, length)``, every
    argument but ``start`` with a leading replica axis (jitted)."""

    def chunk(states, data, topo_data, weights, start, seeds, length: int):
        def one(args):
            state, data, topo_data, weights, seed = args
            return chunk_body(sim.spec, seed)(
                state, data, topo_data, weights, start, length
            )

        return jax.lax.map(one, (states, data, topo_data, weights, seeds))

    return jax.jit(chunk, static_argnames="length", donate_argnums=0)


def replica_evaluate(sim: Simulation):
    """``evaluate(params, eval_data)`` over a leading replica axis (jitted)."""
    return jax.jit(lambda params, data: jax.lax.map(lambda a: sim.evaluate(*a),
                                                    (params, data)))  # fmt: skip


class Group(NamedTuple):
    """The stacked arrays of S runs and their compiled programs."""

    state: object  # the algorithm's state, leaves (S, n, ...)
    args: tuple  # (PeerData, topology arrays, weights (S, n)), leaves (S, ...)
    eval_data: object  # EvalData, leaves (S, ...)
    seeds: jax.Array  # (S,) uint32
    chunk: object  # jitted replica chunk
    evaluate: object  # compiled replica evaluation
    footprint: Footprint


def compile_group(sims: list[Simulation], bar: RunProgress, timer: Timer):
    """Stacks the runs and compiles evaluation and first chunk; (Group, Timer,
    first chunk executable). Raises TooLarge over the memory budget."""
    sim, sc = sims[0], sims[0].scenario
    state = stack([s.state for s in sims])
    args = (
        stack([s.data for s in sims]),
        stack([s.topology.data for s in sims]),
        stack([s.weights for s in sims]),
    )
    eval_data = stack([s.eval_data for s in sims])
    seeds = jnp.asarray([s.scenario.seed for s in sims], jnp.uint32)
    bar.compiling(f"the evaluation of {len(sims)} replicas")
    evaluate, s1, _ = aot(replica_evaluate(sim), state.params, eval_data)
    chunk = replica_chunk(sim)
    length = min(sc.eval_every, sc.rounds)
    bar.compiling(f"a chunk of {length} rounds for {len(sims)} replicas")
    first, s2, cached = aot(chunk, state, *args, jnp.int32(0), seeds, length=length)
    fp = footprint(first, evaluate, sim.strategy)
    budget = memory_budget(sc.execution.memory_budget)
    if budget is not None and fp.peak > budget.bytes:
        raise TooLarge(f"{len(sims)} replicas need {fp.describe()}")
    timer = timer.compiled(s1 + s2, cached)
    return Group(state, args, eval_data, seeds, chunk, evaluate, fp), timer, first


def _execution(sim: Simulation, runs: int, i: int, first: Path) -> dict:
    """A single run's execution record (replicas do not tune), plus the group."""
    group = {"replicas": runs, "replica": i, "replica_of": first.name}
    return {**Tuning(sim.strategy, sim.chosen_by).to_dict(), **group}


def run_replicas(
    sims: list[Simulation], run_dirs: list[Path], progress: bool = True, console=None
) -> list[dict | str]:
    """Runs new runs of one program (see ``program``) as replicas, each into
    its run directory (made, locked and marked once the group has compiled
    within the memory budget); each run's summary, or why it failed
    (diverged). Raises TooLarge, with nothing written, over the budget."""
    sc, n, started = sims[0].scenario, len(sims), time.perf_counter()
    with RunProgress(sc.rounds, 0, progress, console) as bar, ExitStack() as locks:
        group, timer, first = compile_group(sims, bar, Timer())
        release_free_memory()  # what loading the data and compiling left
        for i, (sim, run_dir) in enumerate(zip(sims, run_dirs, strict=True)):
            with disk_errors(run_dir):
                run_dir.mkdir(parents=True, exist_ok=True)
            locks.enter_context(run_lock(run_dir))
            mark(sim.scenario, run_dir)
            print(f"workbench: run directory {run_dir} (replica {i + 1} of {n})")
        sim = sims[0]  # one program: one evaluation's shapes for every log
        shapes = jax.eval_shape(sim.evaluate, sim.state.params, sim.eval_data)
        logs = [RunLog(s, d, None, shapes) for s, d in zip(sims, run_dirs, strict=True)]
        for log in logs:  # a run's wall time counts the group's compilation
            log.t0 = started
        try:
            state, timer, failed = _run(group, first, logs, bar, timer)
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted; the {n} replicas' run directories ({run_dirs[0]} "
                "...) are kept up to their last checkpoints; rerunning the sweep "
                "continues them"
            ) from None
        finally:
            for log in logs:
                log.close()
    memory = {**group.footprint.to_dict(), **peak_memory()}
    wall = time.perf_counter() - started
    out: list[dict | str] = []
    for i, log in enumerate(logs):
        if failed[i] is not None:
            out.append(failed[i])
            continue
        sim = dataclasses.replace(log.sim, state=take_rows(state, i))
        execution = _execution(sim, n, i, run_dirs[0])
        execution["group_wall_seconds"] = wall
        out.append(log.finish(sim, sim.state, share(timer, n, i), execution,
                              memory, wall / n))  # fmt: skip
    return out


def share(timer: Timer, runs: int, i: int) -> Timer:
    """Replica ``i``'s share of the group's times (summed over the runs: the
    group's); the first also counts the group's compilations."""
    part = Timer(timer.compile / runs, timer.train / runs, timer.eval / runs)
    if i > 0:
        return part
    return part._replace(compilations=timer.compilations, cached=timer.cached)


def _run(group: Group, first, logs: list[RunLog], bar: RunProgress, timer: Timer):
    """The chunks of rounds, each replica's rows written after each chunk;
    (stacked state, Timer, why each replica failed or None)."""
    sc, n = logs[0].sim.scenario, len(logs)
    state, chunks = group.state, {min(sc.eval_every, sc.rounds): first}
    failed: list[str | None] = [None] * n
    for r in range(0, sc.rounds, sc.eval_every):
        length = min(sc.eval_every, sc.rounds - r)
        start = jnp.int32(r)
        if length not in chunks:
            bar.compiling(f"a chunk of {length} rounds for {n} replicas")
            args = (state, *group.args, start, group.seeds)
            chunks[length], s, cached = aot(group.chunk, *args, length=length)
            timer = timer.compiled(s, cached)
        c0 = time.perf_counter()
        state, traffic = jax.block_until_ready(
            chunks[length](state, *group.args, start, group.seeds)
        )
        c1 = time.perf_counter()
        ev = jax.block_until_ready(group.evaluate(state.params, group.eval_data))
        timer = timer._replace(
            train=timer.train + c1 - c0, eval=timer.eval + time.perf_counter() - c1
        )
        # on the host once, sliced per replica there (the checkpoints need it)
        kept = state if sc.output.checkpoint else None
        host = jax.device_get((kept, traffic, ev.values, ev.finite))
        for i, log in enumerate(logs):
            if failed[i] is None:
                failed[i] = _record(log, *host, i, length)
        accuracy = np.mean([log.row.get("test_acc_mean", 0.0) for log in logs])
        speed = sum(log.steps for log in logs) / max(timer.train, 1e-9)
        bar.advance(r + length, float(accuracy), speed)
    return state, timer, failed


def _record(log: RunLog, state, traffic, values, finite, i: int, length: int):
    """Writes replica i's chunk to its run directory; why it failed, or None."""
    try:
        log.check(finite[i], length)
    except DivergenceError as e:
        return str(e)
    state = None if state is None else take_rows(state, i)
    log.record(state, take_rows(traffic, i), None, take_rows(values, i), length)
    return None
