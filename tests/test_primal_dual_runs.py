"""Primal-dual methods through the runner: duals survive a cut and a resume
exactly, bytes sent follow the edge schedule, bad graphs are refused in one line."""

import flax.serialization
import jax
import numpy as np
import pytest

import workbench.runner as runner
from tests.test_engine import rows, write_scenario
from tests.test_run_safety import cut_run, one_line
from workbench.checkpoint import latest_good
from workbench.cli import main

ECL = {"name": "pdmm_sgd", "lr": 0.05, "interval": 3, "round_robin": True}


def saved_state(run_dir):
    payload = flax.serialization.msgpack_restore(latest_good(run_dir).payload)
    return {k: v for k, v in payload.items() if k != "wall"}


def test_edge_duals_survive_a_cut_and_a_resume_exactly(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    cut = cut_run(tmp_path / "a", monkeypatch, 4, algorithm=ECL)
    runner.run(None, [], resume=str(cut), progress=False)
    path = write_scenario(tmp_path, algorithm=ECL)
    whole = runner.run(str(path), [], out=str(tmp_path / "whole"), progress=False)
    got, want = saved_state(cut), saved_state(whole.run_dir)
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_want = jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
    duals = [v for p, v in flat_want if "'z'" in jax.tree_util.keystr(p)]
    assert duals and all(np.abs(v).max() > 0 for v in duals)  # exchanged by round 6
    for (path_, a), (_, b) in zip(flat_got, flat_want, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path_))


def test_bytes_follow_the_edge_schedule(tmp_path):
    """Ring of 4, interval 3, rho > 0: each edge sends (y, x) both ways once
    every 3 rounds, so 6 rounds send 2 x 4 edges x 2 directions x 2 vectors."""
    path = write_scenario(tmp_path, algorithm={**ECL, "rho": 0.1})
    summary = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    vector = 4 * summary["num_params"]  # float32
    assert summary["bytes_sent_total"] == 2 * 4 * 2 * 2 * vector  # two periods
    # edge {i, j} is due at steps t = (i + j) mod 3: {1,2} and {3,0} at 0,
    # {0,1} at 1, {2,3} at 2; by rounds 2, 4, 6: 3, 6, 8 edges swapped
    table = rows(tmp_path / "r" / "metrics.csv")
    totals = [float(r["bytes_sent_total"]) for r in table]
    assert totals == [e * 2 * 2 * vector for e in (3, 6, 8)]


@pytest.mark.parametrize(
    ("topology", "expected"),
    [
        ({"name": "exponential"}, "needs every edge both ways"),
        ({"name": "random_matching"}, "needs a static graph"),
    ],
)
def test_directed_or_changing_graphs_are_refused(tmp_path, capsys, topology, expected):
    path = write_scenario(tmp_path, algorithm=ECL, topology=topology)
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = one_line(capsys)
    assert "topology.name" in err and expected in err
