"""The virtual clock's semantics on a toy algorithm whose numbers are known.

Each peer holds one scalar. ``counter`` adds 1 per finished step and sends
its new count, and the receiver keeps what arrived per column (gather); so
what a peer received is exactly the sender's state when it sent.
``averager`` sends its value and takes the W-weighted mean (lr 0 gossip).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.quadratic import ring_weights
from workbench.algorithms.base import Algorithm
from workbench.clock import build_clock, init_clocked
from workbench.clock.delivery import link_factors, lost
from workbench.clock.pairing import pair_up
from workbench.clock.speeds import SPEEDS, read_trace
from workbench.comm import from_matrix
from workbench.comm.kernels import as_table
from workbench.errors import DataError
from workbench.rounds import PeerData, RoundSpec, make_chunk
from workbench.scenario.clock import ClockConfig

N = 6
SEED = 3


class Toy(NamedTuple):
    params: jax.Array  # () float32
    seen: jax.Array  # (k,) float32 what came from each column this tick
    got: jax.Array  # (k,) bool whether it came


def counter(k: int) -> Algorithm:
    def init(params, key):
        return Toy(params, jnp.zeros((k,)), jnp.zeros((k,), bool))

    def local(state, batches, topo, key):
        new = state.params + 1
        return state._replace(params=new), new

    def combine(state, inbox, topo):
        return state._replace(seen=inbox.messages, got=inbox.mask)

    return Algorithm(init, local, combine, "gather")


def averager() -> Algorithm:
    def init(params, key):
        return Toy(params, jnp.zeros((1,)), jnp.zeros((1,), bool))

    def local(state, batches, topo, key):
        return state, state.params

    def combine(state, inbox, topo):
        return state._replace(params=inbox)

    return Algorithm(init, local, combine, "average")


def server_mean() -> Algorithm:
    return averager()._replace(exchange="server")


def simulate(alg, clock: dict, ticks: int, x0=None, W=None, weights=None):
    """Runs ``ticks`` ticks one at a time; (per-tick states, traffic, final)."""
    W = ring_weights(N) if W is None else W
    arrays = from_matrix("table", W)
    cfg = ClockConfig.model_validate(clock)
    spec = build_clock(cfg, alg, "toy", N, SEED, 32.0, 32.0, {})
    rs = RoundSpec(alg, lambda d, t, k: d, jax.vmap, N, 1, clock=spec)
    data = PeerData(jnp.zeros((N, 1, 1)), jnp.zeros((N, 1), jnp.int32), jnp.ones(N))
    x0 = jnp.arange(N, dtype=jnp.float32) if x0 is None else jnp.asarray(x0)
    state = jax.vmap(alg.init)(x0, jax.random.split(jax.random.key(0), N))
    state = init_clocked(rs, SEED, state, data, arrays)
    chunk = make_chunk(rs, SEED)
    states, traffic = [], []
    for t in range(ticks):
        w = jnp.ones(N) if weights is None else jnp.asarray(weights, jnp.float32)
        state, tr = chunk(state, data, arrays, w, jnp.int32(t), length=1)
        states.append(jax.device_get(state))
        traffic.append(jax.device_get(tr))
    return states, traffic


@pytest.mark.parametrize("loss", [0.0, 0.4])
def test_ring_delivers_the_senders_state_at_send_time(loss):
    # Steps take 0.5 s, peer 0's 1.5 s; ticks of 1 s; latency 2.5 s. A step
    # starts at a tick's start, so a fast peer finishes at s + 0.5 in every
    # tick s, peer 0 at s + 0.5 in ticks s = 1, 3, 5, ..., each sending its
    # count; that message arrives at s + 3, so at tick t (ending at t + 1) a
    # receiver holds the newest one with s <= t - 2.
    clock = {
        "mode": "async",
        "compute": {"name": "constant", "time": 0.5},
        "link": {"latency": 2.5, "loss": loss},
        "stragglers": {"peers": [0], "factor": 3},
    }
    # with loss: the newest message that arrived, was not lost (its own draw,
    # fold_in(seed, tick sent, LOSS, edge)) and is still among the last 4 sent
    states, _ = simulate(counter(3), clock, 12, np.zeros(N))
    idx = np.asarray(as_table(from_matrix("table", ring_weights(N)), N).idx)
    period = lambda j: 2 if j == 0 else 1  # noqa: E731
    for t, st in enumerate(states):
        for i in range(N):
            if (t + 1) % period(i):  # idle this tick: it kept its state
                before = states[t - 1].alg.seen[i] if t else np.zeros(3)
                assert np.array_equal(st.alg.seen[i], before)
                continue
            for c in (1, 2):
                p = period(idx[i, c])
                j = int(idx[i, c])
                kept = [s for s in range(t + 1) if (s + 1) % p == 0][-4:]
                sends = [
                    s
                    for s in kept
                    if s <= t - 2 and not bool(lost(SEED, loss, s, j, i))
                ]
                assert bool(st.alg.got[i, c]) == bool(sends), (t, i, c)
                if sends:
                    assert st.alg.seen[i, c] == (sends[-1] + 1) / p, (t, i, c)
    assert states[-1].ring.outbox.shape == (N, 4)  # B = ceil(2.5 / 1) + 1


def test_crash_keeps_the_live_mean_and_freezes_the_crashed_peer():
    x0 = np.array([3.0, -1.0, 7.0, 2.0, 0.5, 4.0], np.float32)
    clock = {"faults": {"schedule": [{"peer": 2, "at": 2.0, "until": 5.0}]}}
    states, traffic = simulate(averager(), clock, 8, x0)
    x = np.array([s.alg.params for s in states])
    live = np.arange(N) != 2
    assert [float(tr.active[0]) for tr in traffic] == [6, 6, 5, 5, 5, 6, 6, 6]
    np.testing.assert_allclose(
        x[1], ring_weights(N) @ (ring_weights(N) @ x0), atol=1e-6
    )
    for t in (2, 3, 4):  # peer 2 is down: its value frozen, the live mean kept
        assert x[t, 2] == x[1, 2]
        np.testing.assert_allclose(x[t, live].mean(), x[1, live].mean(), atol=1e-6)
    for t in (5, 6, 7):  # back: the mean of all is kept from then on
        np.testing.assert_allclose(x[t].mean(), x[4].mean(), atol=1e-6)
    assert np.ptp(x[7]) < np.ptp(x[4])


def test_rejoin_from_a_neighbour_pulls_its_model():
    x0 = np.array([3.0, -1.0, 7.0, 2.0, 0.5, 4.0], np.float32)
    sched = {"schedule": [{"peer": 2, "at": 1.0, "until": 3.0}]}
    W = ring_weights(N)
    own, _ = simulate(averager(), {"faults": sched}, 4, x0)
    pull, _ = simulate(averager(), {"faults": {**sched, "rejoin": "neighbour"}}, 4, x0)
    before = np.array(pull[2].alg.params)  # after tick 2; peer 2 rejoins at tick 3
    assert pull[2].alg.params[2] == own[2].alg.params[2]
    pulled = before.copy()
    pulled[2] = before[1]  # its first live in-neighbour (column 1 of its row)
    np.testing.assert_allclose(pull[3].alg.params, W @ pulled, atol=1e-6)
    np.testing.assert_allclose(own[3].alg.params, W @ before, atol=1e-6)


def test_swap_timeout_drops_a_silent_edge_both_ways():
    clock = {"faults": {"schedule": [{"peer": 2, "at": 1.0}], "swap_timeout": 2.5}}
    states, _ = simulate(counter(3), clock, 6)
    idx = np.asarray(as_table(from_matrix("table", ring_weights(N)), N).idx)
    edges_of_2 = (idx == 2) | (np.arange(N)[:, None] == 2)
    edges_of_2[:, 0] = False
    for t, st in enumerate(states):
        removed = np.asarray(st.clock.removed)
        # last delivery over 2's edges: tick 0 (ends at 1); silent > 2.5 at end 4
        assert np.array_equal(removed, edges_of_2 if t >= 3 else 0 * removed), t


def test_lost_messages_are_drawn_per_message_and_cost_their_bits():
    clock = {"link": {"loss": 0.3}}
    states, traffic = simulate(counter(3), clock, 40)
    got = np.array([s.alg.got[:, 1:] for s in states])
    assert 0.6 < got.mean() < 0.8  # 480 messages, each kept with p 0.7
    again, _ = simulate(counter(3), clock, 40)
    assert np.array_equal(got, np.array([s.alg.got[:, 1:] for s in again]))
    for tr in traffic:  # a lost message was still sent: 2 out-edges x 32 bits
        np.testing.assert_array_equal(tr.sent[0], np.full(N, 64.0))


def test_random_crashes_reach_the_stationary_down_fraction():
    clock = {"faults": {"crash_rate": 0.1, "rejoin_rate": 0.3}}
    _, traffic = simulate(averager(), clock, 300)
    alive = np.array([float(tr.active[0]) for tr in traffic]) / N
    # two-state chain per tick: P(crash) = 1 - e^-0.1, P(rejoin) = 1 - e^-0.3
    p, q = 1 - np.exp(-0.1), 1 - np.exp(-0.3)
    assert abs((1 - alive[20:].mean()) - p / (p + q)) < 0.06


def test_sync_round_lasts_until_the_slowest_or_the_timeout():
    slow = {"stragglers": {"peers": [4], "factor": 10}}
    _, traffic = simulate(counter(3), slow, 3)
    assert [float(tr.time[0]) for tr in traffic] == [10.0, 20.0, 30.0]
    _, traffic = simulate(counter(3), {**slow, "timeout": 2.0}, 10)
    assert [float(tr.time[0]) for tr in traffic] == [2.0 * (t + 1) for t in range(10)]
    active = [float(tr.active[0]) for tr in traffic]  # the straggler: every 5th
    assert active == [5, 5, 5, 5, 6, 5, 5, 5, 5, 6]
    sent = np.array([tr.sent[0] for tr in traffic])
    assert sent[:, 4].tolist() == [0, 0, 0, 0, 64, 0, 0, 0, 0, 64]
    link = {"link": {"latency": 0.25, "bandwidth": 16.0}}  # 32 bits = 4 B: 0.25 s
    _, traffic = simulate(counter(3), link, 2)
    assert [float(tr.time[0]) for tr in traffic] == [1.5, 3.0]


def test_pairs_are_a_matching_that_serves_the_busy_peers_first():
    table = as_table(from_matrix("table", ring_weights(8)), 8)
    for t in range(20):
        active = jax.random.bernoulli(jax.random.key(t), 0.4, (8,))
        alive = jnp.ones(8, bool).at[t % 8].set(False)
        paired, partner = pair_up(table, active, alive, 0, t)
        partner = np.asarray(partner)
        for i, j in enumerate(partner):
            if j >= 0:
                assert partner[j] == i and abs(i - j) % 6 in (1, 7 - 0)
                assert alive[i] and alive[j]
        w = np.asarray(paired.weight)
        np.testing.assert_allclose(w.sum(1), 1.0)
        for i in range(8):  # a busy live peer is unmatched only if no neighbour is free
            if active[i] and alive[i] and partner[i] < 0:
                for j in ((i + 1) % 8, (i - 1) % 8):
                    assert not alive[j] or partner[j] >= 0


def test_speed_models_draw_what_they_say(tmp_path):
    key, steps = jax.random.key(0), jnp.zeros(4000, jnp.int32)
    d = np.asarray(SPEEDS["sleep"](4000, time=2.0, factor=0.5).draw(key, steps))
    assert d.min() >= 2.0 and d.max() < 3.0 and abs(d.mean() - 2.5) < 0.02
    d = np.asarray(SPEEDS["lognormal"](4000, 0, sigma=0.5, time=2.0).draw(key, steps))
    assert abs(d.mean() - 2.0) < 0.05 and abs(np.log(d).std() - 0.5) < 0.02
    fixed = SPEEDS["lognormal"](4, 0, per="peer")
    assert np.array_equal(
        fixed.draw(key, steps[:4]), fixed.draw(jax.random.key(1), steps[:4])
    )
    path = tmp_path / "trace.csv"
    path.write_text("1.0,2.0\n3.0,0.5\n")
    trace = SPEEDS["trace"](2, file=str(path))
    got = [
        np.asarray(trace.draw(key, jnp.array([s, s + 1]))).tolist() for s in range(3)
    ]
    assert got == [[1.0, 0.5], [3.0, 2.0], [1.0, 0.5]]
    path.write_text("1.0,2.0,3.0\n")
    with pytest.raises(DataError, match="3 columns and 1 rows; expected 2 columns"):
        read_trace(str(path), 2)
    path.write_text("1.0,-2.0\n")
    with pytest.raises(DataError, match="finite durations > 0"):
        read_trace(str(path), 2)


def test_each_link_has_its_own_speed_the_same_both_ways():
    W = np.full((64, 64), 1 / 64)
    table = as_table(from_matrix("table", W), 64)
    f = np.asarray(link_factors(SEED, table, 0.5))
    idx = np.asarray(table.idx)
    both = {}
    for i in range(64):
        for c in range(1, 64):
            both.setdefault(frozenset((i, int(idx[i, c]))), set()).add(float(f[i, c]))
    assert all(len(v) == 1 for v in both.values())  # 2016 links, one factor each
    values = np.array([v.pop() for v in both.values()])
    assert abs(values.mean() - 1.0) < 0.03 and values.std() > 0.4
    assert values.max() <= np.exp(3 * 0.5 - 0.125) + 1e-5
    # a barrier round lasts its step (1 s) plus the slowest link's delivery
    clock = {"link": {"latency": 1.0, "spread": 0.5}}
    _, traffic = simulate(counter(3), clock, 2)
    ring = as_table(from_matrix("table", ring_weights(N)), N)
    slowest = float(np.asarray(link_factors(SEED, ring, 0.5))[:, 1:].max())
    assert [float(tr.time[0]) for tr in traffic] == pytest.approx(
        [1 + slowest, 2 * (1 + slowest)], rel=1e-6
    )


def test_server_mean_takes_the_uploads_that_made_the_deadline():
    x0 = np.array([3.0, -1.0, 7.0, 2.0, 0.5, 4.0], np.float32)
    sizes = np.arange(1.0, N + 1)  # data-size weights
    clock = {"timeout": 2.0, "stragglers": {"peers": [4], "factor": 10}}
    states, traffic = simulate(server_mean(), clock, 1, x0, weights=sizes)
    came = np.arange(N) != 4
    mean = (sizes[came] * x0[came]).sum() / sizes[came].sum()
    want = np.where(came, mean, x0[4])  # the straggler neither sent nor pulled
    np.testing.assert_allclose(states[0].alg.params, want, rtol=1e-6)
    np.testing.assert_array_equal(traffic[0].sent[0], np.where(came, 32.0, 0.0))
    assert float(traffic[0].server[0]) == 32.0 * 5


def test_a_stateful_server_applies_uploads_in_the_order_they_finish():
    from workbench.algorithms.base import Server

    def receive(s, upload, peer):  # not commutative: the order shows
        return 2.0 * s + upload

    server = Server(lambda p, n: jnp.zeros_like(p), receive, lambda s, pulled: (s, s))
    alg = averager()._replace(exchange="server", server=server)
    x0 = np.array([3.0, -1.0, 7.0, 2.0, 0.5, 4.0], np.float32)
    clock = {"stragglers": {"peers": [0, 2], "factor": 3.0}}
    states, _ = simulate(alg, clock, 1, x0)
    want = 0.0
    for peer in (1, 3, 4, 5, 0, 2):  # done at 1 s (by id), then at 3 s (by id)
        want = 2.0 * want + x0[peer]
    np.testing.assert_allclose(states[0].alg.params, np.full(N, want), rtol=1e-6)
