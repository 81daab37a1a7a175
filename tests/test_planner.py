"""Execution planning: memory estimates, the budget, peak memory, compile cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from tests.test_engine import TINY, rows, write_scenario
from workbench.cli import main
from workbench.engine import build
from workbench.errors import WorkbenchError
from workbench.planner import Budget, Footprint, candidates, fit, footprint
from workbench.runner import run
from workbench.scenario import parse_scenario

REPO = Path(__file__).resolve().parents[1]
BIGGER = {
    "peers": 8,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [256]},
}


def footprints(changes, strategies=None) -> dict:
    sim = build(parse_scenario({**TINY, **changes}))
    out = {}
    every = [("vmap", None), *candidates(sim.scenario.peers)]
    for strategy in strategies or every:
        other = sim.with_strategy(strategy)
        args = (sim.data, sim.topology.data, sim.weights)
        ev = other.evaluate.lower(sim.state.params, sim.eval_data).compile()
        ch = other.chunk.lower(sim.state, *args, jnp.int32(0), length=2).compile()
        out[strategy] = footprint(ch, ev, strategy)
    return out


def test_candidates_halve_the_chunk_below_the_start():
    assert candidates(16) == [("map", 8), ("map", 4), ("map", 2), ("map", 1)]
    assert candidates(16, ("unroll", 4)) == candidates(16)
    assert candidates(16, ("map", 4)) == [("map", 2), ("map", 1)]
    assert candidates(16, ("map", 1)) == []
    assert candidates(1) == []


def test_summary_reports_the_estimate_and_a_plausible_peak(tmp_path):
    path = write_scenario(tmp_path)
    summary = run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    memory = summary["memory"]
    state_bytes = 4 * (2 * 1210 * 4 + 4)  # 4 peers: params, momentum, loss
    assert memory["resident_bytes"] >= state_bytes
    assert memory["estimate_bytes"] == max(
        memory["resident_bytes"] + memory["chunk_temp_bytes"],
        memory["resident_bytes"] + memory["eval_bytes"],
    )
    assert 50 * 2**20 < memory["peak_rss_bytes"] < 24 * 2**30
    assert memory["estimate_bytes"] < memory["peak_rss_bytes"]


def test_a_fixed_strategy_over_budget_fails_before_any_round(tmp_path, capsys):
    path = write_scenario(
        tmp_path, execution={"strategy": "vmap", "memory_budget": 0.0001}
    )
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "this scenario needs about" in err and "memory_budget = 0.0001 GiB" in err
    assert "strategy: auto" in err
    assert rows(tmp_path / "r" / "metrics.csv") == []


def test_fit_takes_the_first_candidate_within_the_budget():
    peaks = {("vmap", None): 90, ("map", 8): 70, ("map", 4): 40, ("map", 2): 30}
    peaks[("map", 1)] = 20
    compiled = []

    def compile_for(strategy):
        compiled.append(strategy)
        return Footprint(peaks[strategy], 0, 0, strategy)

    budget = Budget(50, "execution.memory_budget = 5e-08 GiB", True)
    assert fit(compile_for, ("vmap", None), 16, budget, True).strategy == ("map", 4)
    assert compiled == [("vmap", None), ("map", 8), ("map", 4)]
    assert fit(compile_for, ("vmap", None), 16, Budget(90, "", True), True).peak == 90
    with pytest.raises(WorkbenchError, match="needs about 20 B .* map x1, over exe"):
        fit(compile_for, ("vmap", None), 16, Budget(10, budget.source, True), True)
    with pytest.raises(WorkbenchError, match="vmap, over 90% of this device's"):
        fit(
            compile_for,
            ("vmap", None),
            16,
            Budget(10, "90% of this device's", False),
            False,
        )


def test_auto_chunks_the_peers_to_fit_the_budget_with_the_same_numbers(tmp_path):
    vmap, one = ("vmap", None), ("map", 1)
    fps = footprints(BIGGER, [vmap, one])
    assert fps[one].peak < fps[vmap].peak  # chunking needs less than full vmap
    budget = (fps[one].peak + fps[vmap].peak) / 2 / 2**30
    path = write_scenario(tmp_path, **BIGGER, execution={"memory_budget": budget})
    chosen = run(str(path), [], out=str(tmp_path / "fit"), progress=False).summary
    execution = chosen["execution"]
    assert execution["strategy"] == "map" and execution["chosen_by"] == "memory budget"
    assert chosen["memory"]["estimate_bytes"] <= budget * 2**30
    assert chosen["memory"]["budget_bytes"] == int(budget * 2**30)
    path = write_scenario(tmp_path, **BIGGER)
    plain = run(str(path), [], out=str(tmp_path / "vmap"), progress=False).summary
    assert plain["execution"]["strategy"] == "vmap"
    for key in ("final_mean_test_accuracy", "final_consensus_distance"):
        assert chosen[key] == pytest.approx(plain[key], rel=1e-5), key


def without_cache_env() -> dict:
    """The environment minus the test session's own compilation cache
    (tests/conftest.py passes it to subprocesses), so the scenario's is used."""
    drop = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_compilation_cache_is_written_and_reused(tmp_path):
    """In subprocesses: the cache is process-wide configuration."""
    cache = tmp_path / "cache"
    path = write_scenario(tmp_path, execution={"compilation_cache": str(cache)})
    for out in ("a", "b"):
        done = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "simulate", str(path)]
            + ["--out", str(tmp_path / out), "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=without_cache_env(),
        )
        assert done.returncode == 0, done.stderr
        if out == "a":
            entries = sorted(p.name for p in cache.iterdir())
            assert entries
    assert sorted(p.name for p in cache.iterdir()) == entries  # all hits
    first = json.loads(next((tmp_path / "a").rglob("summary.json")).read_text())
    summary = json.loads(next((tmp_path / "b").rglob("summary.json")).read_text())
    counts = lambda s: (s["compilations"], s["cached_compilations"])  # noqa: E731
    assert (counts(first), counts(summary)) == ((1, 0), (0, 1))
    # the command line restarted itself with huge pages (workbench.allocator)
    assert summary["environment"]["huge_pages"] == "on"
