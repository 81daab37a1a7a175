"""SMPL's hyperedge scheduler: its invariants on every tick, over seeds and settings."""

import jax
import numpy as np
import pytest

from workbench.errors import ScenarioError
from workbench.topology.hyperedges import empty, make_schedule, step

SETTINGS = [  # n, uniform, regular, variety
    (10, 3, 1, 1),
    (12, 4, 2, 2),
    (8, 2, 3, 1),
    (9, 3, 2, 0),
    (16, 5, 3, 4),
]


def active_sets(h):
    return [
        (int(o), set(m.tolist()))
        for m, o in zip(np.asarray(h.members), np.asarray(h.origin), strict=True)
        if m[0] >= 0
    ]


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_every_tick_respects_uniform_regular_and_variety(setting):
    n, u, r, v = setting
    schedule = make_schedule(n, u, r, v)
    tick = jax.jit(lambda h, t, key, d: step(schedule, h, t, key, d))
    formed = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        h = empty(schedule)
        for t in range(25):
            durations = rng.integers(1, 4, size=schedule.slots).astype(np.int32)
            before = np.asarray(h.members).copy()
            kept = np.asarray(h.ends) > t  # sessions still running at tick t
            h = tick(h, t, jax.random.key(seed * 1000 + t), durations)
            after = np.asarray(h.members)
            load = np.zeros(n, int)
            for slot, members in enumerate(after):
                if members[0] < 0:
                    continue
                assert len(set(members.tolist())) == u and members.min() >= 0
                assert members.max() < n
                load[members] += 1
                new = not (kept[slot] and before[slot][0] >= 0)
                if new:  # variety against the originator's other hyperedges
                    formed += 1
                    o = int(np.asarray(h.origin)[slot])
                    assert o == members[0]
                    # active when it formed: running ones, and this tick's
                    # earlier slots (slots fill in order)
                    running = kept & (before[:, 0] >= 0)
                    others = [
                        set(m.tolist())
                        for s, m in enumerate(after)
                        if (running[s] or s < slot) and s != slot and m[0] >= 0
                        and o in m
                    ]  # fmt: skip
                    known = set().union(*others) if others else set()
                    assert len(set(members.tolist()) - known - {o}) >= v
                else:  # a running session keeps its members
                    np.testing.assert_array_equal(members, before[slot])
            assert load.max() <= r
    assert formed > 25 * 6  # sessions do form (more than one per tick on average)


def test_the_first_tick_fills_every_slot_when_nobody_is_busy():
    schedule = make_schedule(10, 3, 1, 1)
    h = step(schedule, empty(schedule), 0, jax.random.key(0), np.ones(3, np.int32))
    members = np.asarray(h.members)
    assert (members >= 0).all() and len(set(members.ravel().tolist())) == 9


@pytest.mark.parametrize(
    "args,key",
    [
        ((4, 5), "algorithm.uniform"),
        ((4, 2, 0), "algorithm.regular"),
        ((6, 3, 1, 3), "algorithm.variety"),
    ],  # fmt: skip
)
def test_impossible_settings_are_one_line(args, key):
    with pytest.raises(ScenarioError, match=key):
        make_schedule(*args)


def test_the_hyperedges_topology_is_the_session_cliques():
    from workbench.topology import build_topology

    n, u = 11, 3
    topo = build_topology({"name": "hyperedges", "uniform": u, "rounds": 2}, n, 0)
    tables = [topo.at(topo.data, np.int32(t), jax.random.key(t)) for t in range(6)]
    for table in tables:
        idx, w = np.asarray(table.idx), np.asarray(table.weight)
        np.testing.assert_array_equal(idx[:, 0], np.arange(n))  # self first
        W = np.zeros((n, n))
        for i in range(n):
            for j, wij in zip(idx[i], w[i], strict=True):
                W[i, j] += wij
        np.testing.assert_allclose(W, W.T, atol=1e-7)  # cliques: symmetric
        np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-6)
        sizes = sorted(int(np.sum(W[i] > 0)) for i in range(n))
        assert sizes == [1, 1] + [u] * 9  # 3 cliques of 3; 2 peers sit out
    for a, b in ((0, 1), (2, 3), (4, 5)):  # a session spans 2 rounds
        np.testing.assert_array_equal(tables[a].idx, tables[b].idx)
    assert not np.array_equal(tables[1].idx, tables[2].idx)  # then new cliques
