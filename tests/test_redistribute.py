"""dyn-fed's failure handling: a crashed peer's top-k samples go to the live peers.

The overlay, the ranking, the round-robin assignment by hand; a clocked
FedAvg run in which two peers crash moves exactly the top-k samples of each
(recomputed from their last models) and pays for every sample it sends.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_engine import write_scenario
from workbench.clock.redistribute import (
    assign,
    make_redistribute,
    most_representative,
    overlay,
)
from workbench.engine import build
from workbench.scenario import load_scenario

X = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1)  # peer p, position j: 4p + j
Y = np.arange(3 * 4, dtype=np.int32).reshape(3, 4) + 100
SIZE = np.array([4, 2, 3], np.int32)


def test_the_overlay_follows_each_peers_own_samples():
    moved = jnp.array([[0, 0], [0, 9], [0, 0]], jnp.int32)  # peer 1: x0[0], x2[1]
    moved_n = jnp.array([0, 2, 0], jnp.int32)
    x, y, size = overlay(
        jnp.asarray(X), jnp.asarray(Y), jnp.asarray(SIZE), moved, moved_n
    )
    np.testing.assert_array_equal(size, [4, 4, 3])
    np.testing.assert_array_equal(x[..., 0], [[0, 1, 2, 3, 0, 0],
                                              [4, 5, 0, 9, 0, 0],
                                              [8, 9, 10, 0, 0, 0]])  # fmt: skip
    np.testing.assert_array_equal(y[1], [104, 105, 100, 109, 0, 0])
    assert overlay(X, Y, SIZE, jnp.zeros((3, 0), jnp.int32), moved_n)[0] is X


def test_most_representative_ranks_only_real_samples():
    losses = jnp.array([0.5, 3.0, 1.0, 9.0, 2.0])
    real = jnp.array([True, True, True, False, True])  # 9.0 is padding
    where, valid = most_representative(losses, real, 3)
    np.testing.assert_array_equal(where, [1, 4, 2])
    assert np.asarray(valid).all()
    where, valid = most_representative(losses, real, 5)
    np.testing.assert_array_equal(np.asarray(where)[np.asarray(valid)], [1, 4, 2, 0])


def test_assign_round_robin_over_the_live_peers_in_id_order():
    picked = jnp.array([70, 71, 72, 73, 74, 75], jnp.int32)
    valid = jnp.array([True, True, True, True, True, False])
    alive = jnp.array([True, False, True, True])
    moved = jnp.full((4, 3), -1, jnp.int32)
    moved_n = jnp.array([0, 0, 1, 0], jnp.int32)  # peer 2 holds one already
    moved = moved.at[2, 0].set(50)
    moved, moved_n, sent = assign(picked, valid, alive, moved, moved_n)
    assert int(sent) == 5
    np.testing.assert_array_equal(moved_n, [2, 0, 3, 1])
    np.testing.assert_array_equal(moved, [[70, 73, -1], [-1, -1, -1],
                                          [50, 71, 74], [72, -1, -1]])  # fmt: skip
    # a full overlay drops what does not fit
    moved, moved_n, sent = assign(picked, valid, alive, moved, moved_n)
    assert int(sent) == 2  # peers 0 and 3 had room for one more each
    np.testing.assert_array_equal(moved_n, [3, 0, 3, 2])


def test_redistribute_moves_exactly_each_crashed_peers_top_k():
    # the loss of a sample is params * x: peer 0's model ranks its own data
    # upside down (params -1)
    loss = lambda p, x, y: p * x[:, 0]  # noqa: E731
    go = make_redistribute(loss, 2, 4)
    params = jnp.array([-1.0, 1.0, 1.0])
    moved, moved_n = jnp.zeros((3, 4), jnp.int32), jnp.zeros((3,), jnp.int32)
    down = jnp.array([True, False, True])
    alive = jnp.array([False, True, False])
    moved, moved_n, sent = go(params, jnp.asarray(X), jnp.asarray(Y), jnp.asarray(SIZE),
                              moved, moved_n, down, alive)  # fmt: skip
    # peer 0: losses 0, -1, -2, -3 -> positions 0, 1; peer 2: 8, 9, 10 -> 10, 9
    assert int(sent) == 4
    np.testing.assert_array_equal(moved_n, [0, 4, 0])
    np.testing.assert_array_equal(moved[1], [0, 1, 10, 9])


def test_a_crashed_peers_top_k_moves_in_a_clocked_run(tmp_path):
    k = 5
    base = {
        "peers": 6, "rounds": 8, "eval_every": 8, "topology": {"name": "complete"},
        "algorithm": {"name": "fedavg", "local_steps": 2, "weighting": "uniform",
                      "lr": 0.05},
    }  # fmt: skip
    crashes = [{"peer": 1, "at": 3.0}, {"peer": 4, "at": 3.0}]
    faults = {"schedule": crashes, "redistribute": k}
    path = write_scenario(tmp_path, **base, clock={"faults": faults})
    sim = build(load_scenario(path))
    state, traffic = sim.chunk(
        sim.state, sim.data, sim.topology.data, sim.weights, jnp.int32(0), length=8
    )
    moved = np.asarray(state.clock.moved)
    moved_n = np.asarray(state.clock.moved_n)
    assert moved.shape == (6, 2 * k) and moved_n.sum() == 2 * k
    # 10 samples over the 4 live peers in id order: 3, 3, 2, 2
    np.testing.assert_array_equal(moved_n, [3, 0, 3, 2, 0, 2])
    got = np.concatenate([moved[i, : moved_n[i]] for i in range(6)])
    # a crashed peer does not train or receive: its model is the one it
    # crashed with; its k highest per-sample losses, by hand
    x, y, size = (np.asarray(a) for a in sim.data)
    m = y.shape[1]
    losses = sim.spec.clock.sample_loss  # the engine's training loss per sample
    want = []
    for dead in (1, 4):
        params = jax.tree.map(lambda a, d=dead: a[d], state.alg.params)
        ell = np.asarray(losses(params, x[dead, : size[dead]], y[dead, : size[dead]]))
        want += list(dead * m + np.argsort(-ell, kind="stable")[:k])
    assert sorted(got.tolist()) == sorted(want)
    # the server paid for 10 samples: 64 features and a label, 32 bits each
    base_path = write_scenario(
        tmp_path, **base, clock={"faults": {"schedule": crashes}}
    )
    plain = build(load_scenario(base_path))
    lost, t0 = plain.chunk(
        plain.state, plain.data, plain.topology.data, plain.weights, jnp.int32(0),
        length=8,
    )  # fmt: skip
    extra = np.asarray(traffic.server).sum() - np.asarray(t0.server).sum()
    assert extra == pytest.approx(2 * k * 65 * 32)
    # the live peers trained on what they were sent (the crashed ones did not)
    ours, theirs = (jax.tree.leaves(s.alg.params)[0] for s in (state, lost))
    np.testing.assert_array_equal(ours[1], theirs[1])
    assert not np.allclose(ours[0], theirs[0])


def test_the_overlay_survives_a_resume_and_any_strategy(tmp_path, monkeypatch):
    import workbench.runner as runner
    from tests.test_clock_runs import BASE, table
    from tests.test_run_safety import cut_run

    crashes = [{"peer": 2, "at": 1.0}, {"peer": 6, "at": 2.5}]
    clock = {"faults": {"schedule": crashes, "redistribute": 4}}

    def path(strategy):
        execution = {"strategy": strategy, "peers_per_chunk": 3}
        if strategy == "vmap":
            execution = {"strategy": "vmap"}
        return str(write_scenario(tmp_path, **{**BASE, "clock": clock,
                                               "eval_every": 2,
                                               "execution": execution}))  # fmt: skip

    whole = runner.run(path("vmap"), [], out=str(tmp_path / "w"), progress=False)
    assert whole.summary["clock"]["redistributed_samples"] == 8
    got = table(tmp_path / "w")
    runner.run(path("map"), [], out=str(tmp_path / "m"), progress=False)
    mapped = [[float(v) for v in r.values()] for r in table(tmp_path / "m")]
    np.testing.assert_allclose(
        mapped, [[float(v) for v in r.values()] for r in got], rtol=2e-5, atol=1e-6
    )
    changes = {**BASE, "clock": clock, "eval_every": 2,
               "execution": {"strategy": "vmap"}}  # fmt: skip
    cut = cut_run(tmp_path, monkeypatch, 4, **changes)
    back = runner.run(None, [], resume=str(cut), progress=False)
    # both crashes came before the cut: the overlay came back from the checkpoint
    assert back.summary["clock"]["redistributed_samples"] == 8
    assert table(tmp_path / "cut") == got


def test_redistribute_needs_the_schedule_in_one_line(tmp_path, capsys):
    from workbench.cli import main

    bad = {"faults": {"crash_rate": 0.1, "redistribute": 5}}
    path = write_scenario(tmp_path, clock=bad)
    assert main(["simulate", str(path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "redistribute" in err and "schedule" in err and len(err.splitlines()) == 1
