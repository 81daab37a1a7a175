"""SMPL's sessions on the virtual clock, by hand: when they end, what they send,
what every member ends with; concurrency (regular, variety); a whole run.

Peers hold ONE training sample each here, so every batch is that sample and a
member's training is a function of the start alone: the expected models are
computed with optax, outside the workbench.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_contract import validation_split
from tests.test_equivalence import MLP, mlp_problem
from workbench.algorithms import ALGORITHMS
from workbench.algorithms.base import local_steps
from workbench.clock import build_clock, init_clocked, needs_clock
from workbench.compression import COMPRESSORS
from workbench.errors import ScenarioError
from workbench.objective import Batch, make_loss
from workbench.optim import local_optimizer
from workbench.rounds import PeerData, RoundSpec, init_state, make_chunk
from workbench.scenario.clock import ClockConfig
from workbench.topology import build_topology

LR, STEPS, BATCH = 0.1, 3, 4


def build(uniform=2, **keys):
    return ALGORITHMS.build(
        {"name": "smpl", "fraction": 1.0, "local_steps": STEPS, **keys},
        "algorithm",
        loss_fn=make_loss(MLP().apply),
        optimizer=local_optimizer(lr=LR),
        apply_fn=MLP().apply,
        validation=validation_split(6),
        graph={"name": "hyperedges", "session_rounds": 3, "uniform": uniform},
    )


CLOCK = {
    "mode": "async",
    "tick": 1.0,
    "compute": {"name": "constant", "time": 1.0},
    "stragglers": {"peers": [1], "factor": 3.0},
    "link": {"latency": 0.25},
}


def ticks(n, count, clock=CLOCK, uniform=2, **keys):
    """[(state, traffic) after each tick], the initial models, the data."""
    alg = build(uniform, **keys)
    _, params, data = mlp_problem(n)
    data = PeerData(data.x, data.y, jnp.ones((n,), jnp.int32))  # one sample each
    topo = build_topology({"name": "hyperedges", "uniform": uniform}, n, 0)
    cfg = ClockConfig(**clock)
    spec = RoundSpec(alg, topo.at, jax.vmap, n, BATCH)
    spec = spec._replace(clock=build_clock(cfg, alg, "smpl", n, 5, 0.0, 0.0, {}))
    noise = jax.random.normal(jax.random.key(5), (n,))
    stacked = jax.tree.map(
        lambda p: p[None] + noise.reshape((n,) + (1,) * p.ndim) * 0.3, params
    )
    keys_ = jax.random.split(jax.random.key(1), n)
    state = jax.jit(
        lambda p, k, d, g: init_clocked(spec, 5, init_state(spec, 5, p, k, g), d, g)
    )(stacked, keys_, data, topo.data)
    first = jax.tree.map(np.asarray, state.alg)
    chunk, out = make_chunk(spec, 5), []
    for t in range(count):
        copy = jax.tree.map(jnp.copy, state)  # the chunk donates its input
        state, traffic = chunk(copy, data, topo.data, jnp.ones(n), jnp.int32(t),
                               length=1)  # fmt: skip
        out.append((state, jax.tree.map(lambda a: np.asarray(a)[0], traffic)))
    return out, first, data


def trained(start, data, peer):
    """Peer ``peer``'s model after STEPS sgd steps on its one sample."""
    x = jnp.broadcast_to(data.x[peer, 0], (STEPS, BATCH) + data.x.shape[2:])
    y = jnp.broadcast_to(data.y[peer, 0], (STEPS, BATCH))
    opt = local_optimizer(lr=LR)(STEPS)
    batches = Batch(x, y, jnp.ones((STEPS, BATCH), jnp.float32))
    loss_fn = make_loss(MLP().apply)
    return local_steps(loss_fn, opt, start, opt.init(start), batches)[0]


def leaves(tree, row=None):
    return [np.asarray(a if row is None else a[row]) for a in jax.tree.leaves(tree)]


def bits_of(params):
    model = sum(a.size for a in jax.tree.leaves(params)) * 32.0
    topk = COMPRESSORS.build({"name": "topk", "fraction": 1.0}, "compressor")
    zeros = jax.tree.map(jnp.zeros_like, params)
    return model, float(topk.apply(zeros, topk.init(zeros), jax.random.key(0))[2])


def test_a_session_lasts_its_straggler_and_ends_on_start_plus_the_mean_delta():
    """Three peers in cliques of 3, one slot: every session holds them all. Peer 1
    computes 3 s, the three transfers take 0.25 s each: 3.75 s, 4 ticks;
    sessions form at ticks 0, 4, 8 and finish in ticks 3 and 7."""
    n = 3
    out, first, data = ticks(n, 10, uniform=n, epsilon=1.0, keep_best=False)
    steps = [np.asarray(s.clock.steps).tolist() for s, _ in out]
    assert steps == [[0] * n] * 3 + [[1] * n] * 4 + [[2] * n] * 3
    np.testing.assert_array_equal(np.asarray(out[0][0].sessions.edges.ends), [4])
    np.testing.assert_allclose([tr.time for _, tr in out], np.arange(1.0, 11.0))
    np.testing.assert_array_equal([tr.active for _, tr in out],
                                  [0, 0, 0, n, 0, 0, 0, n, 0, 0])  # fmt: skip
    # the start is the best member's model (epsilon 1; ties: the lowest id)
    sender = int(np.argmax(first.best))
    start = jax.tree.map(lambda a: jnp.asarray(a[sender]), first.params)
    for got, want in zip(leaves(out[0][0].sessions.start, 0), leaves(start),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)
    # the end: start + the mean of the members' deltas, on every member
    deltas = [
        jax.tree.map(jnp.subtract, trained(start, data, p), start) for p in range(n)
    ]
    want = jax.tree.map(lambda s, *d: s + sum(d) / n, start, *deltas)
    before = out[2][0].alg.params
    for p in range(n):
        for got, old, w in zip(leaves(out[3][0].alg.params, p), leaves(before, p),
                               leaves(want), strict=True):  # fmt: skip
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)
            assert not np.allclose(old, w)  # it changed in tick 3, not before
    # bits to each of the n - 1 others: at the start a 32-bit score and the
    # sender's model; each delta at the end
    model_bits, delta_bits = bits_of(start)
    want_sent = np.zeros((10, n))
    for t in (0, 4, 8):
        want_sent[t] = 32.0 * (n - 1)
        want_sent[t, sender] += model_bits * (n - 1)
    for t in (3, 7):
        want_sent[t] = delta_bits * (n - 1)
    np.testing.assert_allclose([tr.sent for _, tr in out], want_sent)


def test_bandwidth_lengthens_a_session_by_its_bytes():
    """At 500 bytes/s the offer, the start model and the deltas take
    (32 + model + delta) / 8 / 500 s more than latency alone: 6.4 s, 7 ticks
    (without the deltas' bytes 5, without the model's 6)."""
    n = 2
    _, params, _ = mlp_problem(n)
    model_bits, delta_bits = bits_of(params)
    seconds = 3.0 + 0.75 + (32 + model_bits + delta_bits) / 8 / 500
    clock = {**CLOCK, "link": {"latency": 0.25, "bandwidth": 500.0}}
    out, _, _ = ticks(n, 1, clock=clock)
    ends = int(np.asarray(out[0][0].sessions.edges.ends)[0])
    assert ends == int(np.ceil(seconds)) == 7


def test_a_session_lasts_whole_ticks_of_the_clocks_tick():
    """Half-second ticks: the 3.75 s session (straggler 3 s, three 0.25 s
    transfers) lasts 8 ticks and ends within the tick that covers 3.5-4 s."""
    out, _, _ = ticks(2, 8, clock={**CLOCK, "tick": 0.5})
    ends = int(np.asarray(out[0][0].sessions.edges.ends)[0])
    assert ends == 8
    steps = [int(np.asarray(s.clock.steps)[0]) for s, _ in out]
    assert steps == [0] * 7 + [1]  # finished in tick 7, at 4.0 s
    np.testing.assert_allclose([tr.time for _, tr in out], 0.5 * np.arange(1, 9))


@pytest.mark.parametrize(("variety", "per_session"), [(0, 2), (1, 1)])
def test_regular_and_variety_decide_how_many_sessions_run_at_once(variety, per_session):
    """Two peers, regular 2: two slots. With variety 0 both hold {0, 1} at once;
    variety 1 needs a member new to the originator, and there is none."""
    out, _, _ = ticks(2, 8, regular=2, variety=variety)
    edges = out[0][0].sessions.edges
    assert int(np.sum(np.asarray(edges.members)[:, 0] >= 0)) == per_session
    np.testing.assert_array_equal(np.asarray(out[-1][0].clock.steps),
                                  [2 * per_session] * 2)  # fmt: skip


def test_concurrent_sessions_start_from_the_best_member_and_keep_the_best():
    """Six peers, cliques of 3, two sessions each at once (epsilon 1): every
    new session starts from the kept model of its member with the best score
    just before it formed (ties: the lowest id); scores never drop."""
    out, first, _ = ticks(6, 12, uniform=3, regular=2, variety=1, epsilon=1.0)
    states = [first] + [s.alg for s, _ in out]
    formed = 0
    for t in range(1, len(out)):
        before, now = out[t - 1][0].sessions, out[t][0].sessions
        fresh = np.asarray(now.edges.ends) != np.asarray(before.edges.ends)
        best = np.asarray(states[t].best)  # after tick t - 1
        for s in np.flatnonzero(fresh):
            members = sorted(np.asarray(now.edges.members)[s].tolist())
            sender = members[int(np.argmax(best[members]))]
            want = leaves(states[t].params, sender)
            for got, w in zip(leaves(now.start, s), want, strict=True):
                np.testing.assert_array_equal(got, w)
            formed += 1
    assert formed >= 6
    bests = np.stack([np.asarray(s.best) for s in states])
    assert (np.diff(bests, axis=0) >= 0).all() and (np.diff(bests, axis=0) > 0).any()
    assert np.asarray(out[-1][0].clock.steps).sum() > 6


def test_sessions_need_an_async_clock_without_faults():
    alg = build(regular=2)
    assert needs_clock(alg) and not needs_clock(build())
    assert build_clock(None, alg, "smpl", 4, 0, 1.0, 1.0, {}).config.mode == "async"
    with pytest.raises(ScenarioError, match="clock.mode: 'smpl' sessions"):
        build_clock(ClockConfig(), alg, "smpl", 4, 0, 1.0, 1.0, {})
    for bad, where in [
        ({"faults": {"crash_rate": 0.1}}, "clock.faults"),
        ({"link": {"loss": 0.1}}, "clock.link.loss"),
        ({"link": {"spread": 0.2}}, "clock.link.spread"),
    ]:
        cfg = ClockConfig(mode="async", **bad)
        with pytest.raises(ScenarioError, match=f"{where}: 'smpl' sessions on"):
            build_clock(cfg, alg, "smpl", 4, 0, 1.0, 1.0, {})


def test_smpl_async_cpu_runs_resumes_and_reports_its_sessions(tmp_path, monkeypatch):
    import workbench.runner as runner
    from tests.test_clock_runs import table
    from tests.test_run_safety import interrupt_at
    from workbench.errors import WorkbenchError

    scenario, over = "scenarios/smpl_async_cpu.yaml", ["rounds=12", "eval_every=6"]
    whole = runner.run(scenario, over, out=str(tmp_path / "w"), progress=False)
    summary = whole.summary
    clock = summary["clock"]
    assert summary["final_mean_test_accuracy"] > 0.2  # chance: 0.1
    assert clock["virtual_time"] == 12.0 and clock["ring_depth"] == 0
    # 4 members a session: each finished session counts once for each member
    assert clock["sessions_finished"] > 0
    assert clock["sessions_finished"] * 4 == round(16 * clock["steps_per_peer_mean"])
    assert summary["bytes_sent_total"] > 0
    restore = interrupt_at(monkeypatch, 6)
    with pytest.raises(WorkbenchError, match="interrupted"):
        runner.run(scenario, over, out=str(tmp_path / "cut"), progress=False)
    restore()
    runner.run(None, [], resume=str(tmp_path / "cut"), progress=False)
    assert table(tmp_path / "cut") == table(tmp_path / "w")
