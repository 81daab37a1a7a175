"""Sweeps: a scenario's grid of points over seeds, one run directory per point.

    <sweep>/sweep.json     the resolved base scenario and every point's keys
    <sweep>/sweep.csv      the index: point, its keys, seed, run directory,
                           status, the point whose program it ran in
                           (replica_of), chunk programs compiled and loaded
                           from the cache (a group's, on its first point),
                           compile seconds (a replica's share), final figures
    <sweep>/points/p000/   each point's run directory (``workbench simulate``'s)
    <sweep>/xla_cache/     compiled programs, shared by the points (JAX's
                           persistent cache, unless one is already on): points
                           that differ only in their seed compile once
    <sweep>/report.*       the report (workbench.report)

Points come from the scenario's ``sweep:`` section and the command line's
``--grid``/``--zip``/``--seeds`` (workbench.scenario.sweep). They run in
this process; new points that are one compiled program (they differ only in
their seed, learning rate or SGD momentum) run together as replicas of one
jitted chunk (workbench.replicas), with the numbers of separate runs: up to
``execution.replicas`` of them, and no more than the memory budget holds
twice (as built and as stacked). Rerunning the same sweep continues it: a
finished point is skipped, an interrupted one resumes from its checkpoint,
a failed one (diverged, bad data) is retried; a sweep whose points are all
finished changes no file. The sweep directory is locked while it runs.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from workbench.errors import RunInterrupted, WorkbenchError
from workbench.memory import tree_bytes
from workbench.planner import compilation_cache, memory_budget
from workbench.results import write_json
from workbench.rundir import RUN_MARKER, disk_errors, is_finished, run_lock
from workbench.scenario import load_scenario
from workbench.scenario.sweep import SweepConfig
from workbench.scenario.yaml_io import scenario_to_dict

INDEX, SPEC = "sweep.csv", "sweep.json"
CACHE = "xla_cache"  # the points' compiled programs (JAX's persistent cache)
FIGURES = (
    "final_mean_test_accuracy",
    "final_averaged_model_accuracy",
    "bytes_sent_total",
    "wall_seconds",
)
AUTO_REPLICAS = 32  # execution.replicas: auto, before the memory budget's say
ENTRY_KEYS = ("name", "module")  # applied first: a new entry resets its section


class Point(NamedTuple):
    index: int
    keys: dict[str, Any]  # dotted key -> value (the grid's and the zip's)
    seed: int

    @property
    def name(self) -> str:
        return f"p{self.index:03d}"

    def overrides(self, common: list[str] = ()) -> list[str]:
        """``--set`` strings: the point's entry keys (``.name``) first, then its
        other keys, then ``common`` (every point's ``--set``), then its seed."""
        first = sorted(self.keys, key=lambda k: k.rsplit(".", 1)[-1] not in ENTRY_KEYS)
        sets = [f"{k}={json.dumps(self.keys[k])}" for k in first]
        return [*sets, *common, f"seed={self.seed}", "sweep=null"]


def expand(spec: SweepConfig, default_seed: int) -> list[Point]:
    """The points: grid product (in key order) x zip rows x seeds (innermost)."""
    grid_keys, zip_keys = list(spec.grid), list(spec.zip)
    combos = itertools.product(*(spec.grid[k] for k in grid_keys))
    rows = list(zip(*(spec.zip[k] for k in zip_keys), strict=True)) or [()]
    points = []
    for combo, row in itertools.product(combos, rows):
        keys = {**dict(zip(grid_keys, combo, strict=True)),
                **dict(zip(zip_keys, row, strict=True))}  # fmt: skip
        for seed in spec.seed_list(default_seed):
            points.append(Point(len(points), _plain(keys), seed))
    return points


def _plain(keys: dict) -> dict:
    from workbench.scenario.frozen import plain

    return plain(keys)


def split_values(text: str) -> list[str]:
    """``a,[1, 2],{k: v}`` -> ``["a", "[1, 2]", "{k: v}"]``: commas outside
    brackets and braces separate values."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{(") - (ch in "]})")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def axes_from_cli(items: list[str], flag: str) -> dict[str, list]:
    """``KEY=V1,V2`` strings to ``{KEY: [V1, V2]}`` (values YAML, as ``--set``
    reads them; commas inside brackets stay in their value)."""
    from workbench.scenario.yaml_io import parse_value

    axes = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text:
            raise WorkbenchError(f"bad {flag} {item!r}; expected KEY=V1,V2,...")
        axes[key.strip()] = [parse_value(v, key.strip()) for v in split_values(text)]
    return axes


def sweep_spec(scenario, grid: dict, zip_: dict, seeds) -> SweepConfig:
    """The scenario's ``sweep:`` section with the command line's axes on top."""
    from workbench.scenario.parse import parse_scenario

    base = scenario.sweep or SweepConfig()
    raw = {
        "grid": {**base.grid.to_dict(), **grid},
        "zip": {**base.zip.to_dict(), **zip_},
        "seeds": seeds if seeds is not None else base.seeds,
    }
    if not raw["grid"] and not raw["zip"] and raw["seeds"] is None:
        raise WorkbenchError(
            "nothing to sweep: give --grid, --zip or --seeds, or a sweep: section"
        )
    if isinstance(raw["seeds"], tuple):
        raw["seeds"] = list(raw["seeds"])
    full = {**scenario_to_dict(scenario), "sweep": raw}
    return parse_scenario(full, "sweep").sweep


class Status(NamedTuple):
    point: Point
    run_dir: Path
    status: str  # done, failed: <why>, pending
    summary: dict | None


def _status(point: Point, run_dir: Path, rounds: int) -> Status:
    summary = is_finished(run_dir, rounds)
    return Status(point, run_dir, "done" if summary else "pending", summary)


def index_rows(statuses: list[Status], keys: list[str], root: Path) -> list[dict]:
    rows = []
    for s in statuses:
        summary = s.summary or {}
        row = {"point": s.point.name, **{k: s.point.keys.get(k) for k in keys}}
        row.update(seed=s.point.seed, run_dir=str(s.run_dir.relative_to(root)))
        execution = summary.get("execution") or {}
        row.update(status=s.status, replica_of=execution.get("replica_of"))
        for key in ("compilations", "cached_compilations", "compile_seconds"):
            row[key] = summary.get(key)
        row.update({f: summary.get(f) for f in FIGURES})
        row["virtual_time"] = (summary.get("clock") or {}).get("virtual_time")
        rows.append(row)
    return rows


def csv_text(rows: list[dict]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_if_changed(path: Path, data: str | bytes) -> bool:
    """Writes ``data`` atomically unless the file already holds it."""
    raw = data.encode() if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == raw:
        return False
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(path):
        tmp.write_bytes(raw)
        tmp.replace(path)
    return True


class Sweep(NamedTuple):
    root: Path
    scenario_path: str
    base: Any  # the resolved scenario without its sweep section
    points: list[Point]
    keys: list[str]  # the swept keys, in order
    rounds: dict[str, int]  # each point's rounds (a sweep may vary them)
    common: list[str]  # ``--set`` strings of every point

    def run_dir(self, point: Point) -> Path:
        return self.root / "points" / point.name

    def spec(self) -> dict:
        return {
            "scenario": scenario_to_dict(self.base),
            "points": [p._asdict() for p in self.points],
        }

    def statuses(self) -> list[Status]:
        return [_status(p, self.run_dir(p), self.rounds[p.name]) for p in self.points]


def plan(scenario_path: str, overrides: list[str], grid, zip_, seeds, out) -> Sweep:
    """The sweep of ``scenario_path`` (every point's scenario checked now).

    ``overrides`` apply to every point, after its own keys; a swept key (or
    the seed of a seed sweep) cannot also be set."""
    scenario = load_scenario(scenario_path, overrides)
    spec = sweep_spec(scenario, grid, zip_, seeds)
    swept = {*spec.grid, *spec.zip, *(["seed"] if spec.seeds is not None else [])}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in swept or key == "sweep":
            raise WorkbenchError(f"--set {item!r}: {key} is swept; drop the --set")
    base = scenario.model_copy(update={"sweep": None})
    points = expand(spec, scenario.seed)
    rounds = {}
    for p in points:  # a typo in a key fails before any point runs
        rounds[p.name] = load_scenario(scenario_path, p.overrides(overrides)).rounds
    root = Path(out) if out else Path("sweeps") / scenario.name
    keys = [*spec.grid, *spec.zip]
    return Sweep(root, scenario_path, base, points, keys, rounds, list(overrides))


def _check_same(sweep: Sweep) -> None:
    """A directory holding another sweep is refused, naming what differs."""
    path = sweep.root / SPEC
    if not path.is_file():
        if sweep.root.is_dir() and any(sweep.root.iterdir()):
            raise WorkbenchError(
                f"--out {sweep.root} is not empty and holds no sweep; pick a new "
                "or empty directory"
            )
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise WorkbenchError(f"{path} is unreadable; pick a new --out") from None
    new = json.loads(json.dumps(sweep.spec()))
    if old != new:
        what = [k for k in ("scenario", "points") if old.get(k) != new.get(k)]
        raise WorkbenchError(
            f"{sweep.root} holds a different sweep (its {' and '.join(what)} "
            "changed); rerun the same sweep to continue it, or pick a new --out"
        )


def run_point(sweep: Sweep, point: Point, progress: bool) -> Status:
    """Runs, resumes or skips one point alone; its Status."""
    from workbench.runner import run

    run_dir = sweep.run_dir(point)
    if (run_dir / RUN_MARKER).is_file():
        return _attempt(point, run_dir, lambda: run(None, [], resume=str(run_dir),
                                                    progress=progress))  # fmt: skip
    return _attempt(point, run_dir, lambda: run(
        sweep.scenario_path, point.overrides(sweep.common), out=str(run_dir),
        progress=progress))  # fmt: skip


def _attempt(point: Point, run_dir: Path, go) -> Status:
    """``go()``'s RunResult as a Status: done, or failed with its one line."""
    try:
        result = go()
    except RunInterrupted:
        raise
    except WorkbenchError as e:
        return Status(point, run_dir, f"failed: {e}", None)
    return Status(point, run_dir, "done", result.summary)


def _scenario(sweep: Sweep, point: Point):
    return load_scenario(sweep.scenario_path, point.overrides(sweep.common))


def _replicas(sweep: Sweep) -> int:
    cap = sweep.base.execution.replicas
    return AUTO_REPLICAS if cap == "auto" else cap


def room(sim, cap: int) -> int:
    """How many runs like ``sim`` a group may hold: at most ``cap``, and (with a
    memory budget) as many as fit twice, as built and as stacked."""
    budget = memory_budget(sim.scenario.execution.memory_budget)
    if budget is None:
        return cap
    per_run = 2 * tree_bytes((sim.state, sim.data, sim.eval_data))
    return max(1, min(cap, budget.bytes // max(per_run, 1)))


def _batches(sweep: Sweep, statuses: list[Status], progress: bool) -> Iterator:
    """Runs the unfinished points, consecutive points of one program together
    as replicas (see workbench.replicas); yields lists of Statuses as they end.

    A point started before (a run directory there) resumes alone.
    """
    from workbench.data import resolve_data_dir
    from workbench.engine import build
    from workbench.replicas import program

    cap, group, key, most = _replicas(sweep), [], None, 1
    yield from ([s] for s in statuses if s.status == "done")
    todo = [s for s in statuses if s.status != "done"]
    for s in _run_order(sweep, todo) if cap > 1 else todo:
        if cap == 1 or (s.run_dir / RUN_MARKER).is_file():
            yield [run_point(sweep, s.point, progress)]
            continue
        try:
            scenario = _scenario(sweep, s.point)
            sim = build(scenario, resolve_data_dir(None))
            prog = program(sim)
        except WorkbenchError as e:
            yield [Status(s.point, s.run_dir, f"failed: {e}", None)]
            continue
        if group and (prog is None or prog != key or len(group) == most):
            yield _run_group(group, progress)
            group = []
        if not group:  # the runs built for a group must fit in memory
            most = room(sim, cap)
        group.append((s, sim))
        key = prog
        if prog is None:  # runs alone
            yield _run_group(group, progress)
            group = []
    if group:
        yield _run_group(group, progress)


def _run_order(sweep: Sweep, todo: list[Status]) -> list[Status]:
    """``todo`` with the points that may be one program next to each other:
    those equal but for their seed, learning rate and momentum (in point
    order; ``workbench.replicas.program`` has the last word)."""
    order: dict[str, list[Status]] = {}
    for s in todo:
        raw = scenario_to_dict(_scenario(sweep, s.point))
        raw.pop("seed", None)
        for key in ("lr", "momentum"):
            raw.get("algorithm", {}).pop(key, None)
        order.setdefault(json.dumps(raw, sort_keys=True, default=str), []).append(s)
    return [s for same in order.values() for s in same]


def _run_group(members: list, progress: bool) -> list[Status]:
    """New runs of one program as replicas (halved until they fit the memory
    budget; one runs alone); their Statuses."""
    from workbench.replicas import TooLarge, run_replicas
    from workbench.runner import start

    if len(members) == 1:
        (s, sim), = members  # fmt: skip
        with disk_errors(s.run_dir):
            s.run_dir.mkdir(parents=True, exist_ok=True)
        return [_attempt(s.point, s.run_dir, lambda: start(sim, s.run_dir, progress))]
    sims, dirs = [sim for _, sim in members], [s.run_dir for s, _ in members]
    try:
        results = run_replicas(sims, dirs, progress)
    except TooLarge:
        half = len(members) // 2
        return _run_group(members[:half], progress) + _run_group(
            members[half:], progress
        )
    except RunInterrupted:
        raise
    except WorkbenchError as e:
        return [Status(s.point, s.run_dir, f"failed: {e}", None) for s, _ in members]
    return [
        Status(s.point, s.run_dir, "done", r)
        if isinstance(r, dict)
        else Status(s.point, s.run_dir, f"failed: {r}", None)
        for (s, _), r in zip(members, results, strict=True)
    ]


def run_sweep(sweep: Sweep, progress: bool = True) -> Iterator:
    """Runs the sweep's unfinished points; yields each point's Status as it
    finishes (the index is rewritten after each batch)."""
    _check_same(sweep)
    statuses = sweep.statuses()
    index = sweep.root / INDEX
    if all(s.status == "done" for s in statuses) and (sweep.root / SPEC).is_file():
        text = csv_text(index_rows(statuses, sweep.keys, sweep.root))
        if not index.is_file() or index.read_text() != text:  # repair, locked
            with run_lock(sweep.root):
                write_if_changed(index, text)
        yield from statuses  # finished: nothing else is written
        return
    with disk_errors(sweep.root):
        sweep.root.mkdir(parents=True, exist_ok=True)
    with run_lock(sweep.root), compilation_cache(str(sweep.root / CACHE)):
        if not (sweep.root / SPEC).is_file():
            write_json(sweep.root / SPEC, sweep.spec())
        for batch in _batches(sweep, statuses, progress):
            for s in batch:
                statuses[s.point.index] = s
            rows = index_rows(statuses, sweep.keys, sweep.root)
            write_if_changed(index, csv_text(rows))
            yield from batch
