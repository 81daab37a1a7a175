"""Per-client communication periods: schedules, scores and rounds by hand.

A schedule of span R with c communications sends c times, evenly, the last
in its last round; svd scores are effective ranks min-max normalised; with
every score 1 and a budget of one communication per round it is FedAvg with
tau = b; with a budget of one, each client trains alone until the last round.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import quadratic_data, quadratic_loss, ring_weights
from tests.quadratic import run as run_quadratic
from workbench.algorithms import fedavg
from workbench.algorithms.client_periods import (
    Report,
    client_periods,
    decide,
    effective_rank,
    sends_at,
    share,
    svd_scores,
)
from workbench.comm import from_matrix
from workbench.rounds import RoundSpec, init_state, make_chunk

A = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
B = np.arange(6.0)
LR = 0.1


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def run(rounds, period, mode="svd", scores=None, budget=None, horizon=None):
    """``rounds`` rounds of a run of ``horizon`` (default: ``rounds``)."""
    n = len(A)
    alg = client_periods(
        quadratic_loss, optax.sgd(LR), mode, budget or rounds, horizon or rounds,
        np.ones(n) if scores is None and mode == "svd" else scores, period,
    )  # fmt: skip
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 1)
    topo = from_matrix("dense", ring_weights(n))
    keys = jax.random.split(jax.random.key(0), n)
    state = init_state(spec, 0, jnp.zeros((n,)), keys, topo)
    return make_chunk(spec, seed=0)(
        state, quadratic_data(A, B), topo, jnp.ones((n,)), jnp.int32(0),
        length=rounds,
    )  # fmt: skip


def rounds_sent(span, count, start=0):
    u = jnp.arange(start + span + 3)
    return np.flatnonzero(np.asarray(sends_at(u, start, span, count)))


def test_a_schedule_sends_its_count_evenly_ending_in_its_last_round():
    # floor((u + 1) 4 / 10) steps up at u = 2, 4, 7, 9
    np.testing.assert_array_equal(rounds_sent(10, 4), [2, 4, 7, 9])
    np.testing.assert_array_equal(rounds_sent(10, 4, start=5), [7, 9, 12, 14])
    np.testing.assert_array_equal(rounds_sent(7, 1), [6])
    np.testing.assert_array_equal(rounds_sent(3, 3), [0, 1, 2])
    # every (span, count) with count <= span <= 24 in one call
    pairs = np.array([(s, c) for s in range(1, 25) for c in range(1, s + 1)])
    span, count = (jnp.asarray(pairs[:, j : j + 1]) for j in (0, 1))
    u = jnp.arange(30)[None, :]
    sent = np.asarray(sends_at(u, jnp.zeros_like(span), span, count))
    np.testing.assert_array_equal(sent.sum(axis=1), pairs[:, 1])
    last = np.asarray(pairs[:, 0]) - 1  # the schedule's last round sends
    assert sent[np.arange(len(pairs)), last].all()
    assert not sent[u >= span].any()  # nothing after it
    assert len(rounds_sent(0, 1)) == 0  # nothing left to schedule


def test_the_share_of_the_budget_by_hand():
    assert int(share(1.0, 40, 400, 400)) == 40
    assert int(share(0.0, 40, 400, 400)) == 1  # at least once
    assert int(share(0.5, 40, 200, 400)) == 10  # half the score, half the rounds
    assert int(share(0.3, 10, 400, 400)) == 3  # ceil(3.0), not 4
    assert int(share(0.31, 10, 400, 400)) == 4
    assert int(share(1.0, 900, 5, 400)) == 5  # at most once a round


def test_effective_rank_and_scores_by_hand():
    # singular values 6, 3, 1: cumulative shares 0.6, 0.9, 1.0
    x = np.diag([6.0, 3.0, 1.0])
    assert effective_rank(x, 0.95) == 2
    assert effective_rank(x, 0.9) == 1
    assert effective_rank(x, 0.5) == 0
    one = np.outer(np.arange(1.0, 5.0), [1.0, 2.0, 0.0, 1.0])  # rank 1: index 0
    flat = np.eye(4)  # shares 0.25 ... 1.0: index 3
    xs = np.zeros((3, 4, 4))
    xs[0], xs[1], xs[2, :3, :3] = one, flat, x
    scores = svd_scores((xs, None, np.array([4, 4, 3])), 0.95)
    np.testing.assert_allclose(scores, [0.0, 1.0, 2 / 3])


def test_every_score_one_and_a_round_budget_is_fedavg_with_tau_b():
    period, rounds = 3, 8
    state, traffic = run(rounds, period)
    ref = run_quadratic(
        functools.partial(fedavg, weighting="uniform"), ring_weights(6), A, B, LR,
        rounds, local_steps=period,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(ref.params),
                               rtol=1e-12)  # fmt: skip
    # each round every client uploads model, loss, last report (64 bits each)
    # and the flag (8); the reply (model, low, high) goes to each of them
    np.testing.assert_array_equal(np.asarray(traffic.sent), 3 * 64 + 8)
    np.testing.assert_array_equal(np.asarray(traffic.server), 6 * 3 * 64)


def test_a_budget_of_one_trains_alone_until_the_last_round():
    period, rounds = 2, 5
    state, traffic = run(rounds, period, budget=1)
    alone = B + (1 - LR * A) ** (period * rounds) * (0.0 - B)  # GD from 0
    np.testing.assert_allclose(np.asarray(state.params), alone.mean(), rtol=1e-12)
    sent = np.asarray(traffic.sent)
    assert sent[:-1].sum() == 0 and (sent[-1] == 3 * 64 + 8).all()


def test_svd_scores_set_each_clients_number_of_communications():
    rounds, budget = 12, 4
    scores = np.array([0.0, 1.0, 0.5, 0.25, 1.0, 0.0])
    state, traffic = run(rounds, 1, scores=scores, budget=budget)
    counts = (np.asarray(traffic.sent) > 0).sum(axis=0)
    # c = max(1, ceil(score 4))
    np.testing.assert_array_equal(counts, [1, 4, 2, 1, 4, 1])
    np.testing.assert_array_equal(np.asarray(state.count), counts)


def test_decide_takes_the_senders_and_the_extreme_reports():
    up = Report(
        model=jnp.array([1.0, 5.0, 3.0, 7.0]),
        loss=jnp.array([0.5, 9.0, 2.0, 0.1]),
        reported=jnp.array([jnp.nan, 4.0, jnp.nan, jnp.nan]),
        sends=jnp.array([True, False, True, False]),
    )
    reply, taken = decide(up, jnp.array([1.0, 1.0, 3.0, 1.0]), None)
    np.testing.assert_array_equal(np.asarray(taken), [True, False, True, False])
    assert float(reply.model) == pytest.approx((1.0 + 3 * 3.0) / 4)
    # the server holds 0.5 and 2.0 (this round's) and 4.0 (client 1's last);
    # client 3 never reported
    assert (float(reply.low), float(reply.high)) == (0.5, 4.0)
    nobody = up._replace(reported=jnp.full((4,), jnp.nan), sends=jnp.zeros(4, bool))
    reply, taken = decide(nobody, jnp.ones(4), None)
    assert not np.asarray(taken).any() and np.isnan(float(reply.low))


def test_loss_mode_rescores_each_sender_over_the_rounds_left():
    """Round 0: everyone starts at score 1, a budget of 4 over 10 rounds sends
    first at round 2; each then rescores by its loss there."""
    period, rounds, budget = 1, 10, 4
    state, traffic = run(3, period, mode="loss", budget=budget, horizon=rounds)
    sent = np.asarray(traffic.sent) > 0
    assert not sent[:2].any() and sent[2].all()  # floor(3 * 4 / 10) - floor(2 * 4 / 10)
    # the loss of round 2: one GD step from the round's start, which is each
    # client's own model after two rounds alone
    x = B + (1 - LR * A) ** 2 * (0.0 - B)
    loss = 0.5 * A * (x - B) ** 2
    np.testing.assert_allclose(np.asarray(state.reported), loss, rtol=1e-12)
    score = (loss - loss.min()) / (loss.max() - loss.min())
    left = rounds - 3
    want = np.clip(np.ceil(score * budget * left / rounds - 1e-6), 1, max(left, 1))
    np.testing.assert_array_equal(np.asarray(state.count), want)
    np.testing.assert_array_equal(np.asarray(state.start), 3)


def test_the_builder_scores_at_the_scenarios_percentile():
    """Peer 2's singular values 6, 3, 1: index 2 at 0.95 (score 2/3 between
    the rank-1 peer's 0 and the flat peer's 3) but 0 at 0.5 (score 0)."""
    from types import SimpleNamespace

    from workbench.algorithms import ALGORITHMS

    xs = np.zeros((3, 4, 4))
    xs[0] = np.outer(np.arange(1.0, 5.0), [1.0, 2.0, 0.0, 1.0])
    xs[1], xs[2, :3, :3] = np.eye(4), np.diag([6.0, 3.0, 1.0])
    training = (xs, np.zeros((3, 4), np.int32), np.array([4, 4, 3]))

    def count(percentile):
        alg = ALGORITHMS.build(
            {"name": "client_periods", "mode": "svd", "communications": 12,
             "percentile": percentile},
            "algorithm", loss_fn=quadratic_loss, optimizer=lambda s: optax.sgd(LR),
            training=training, rounds=12,
        )  # fmt: skip
        topo = SimpleNamespace(idx=jnp.array([2]))
        return int(alg.init(jnp.zeros(()), None, topo).count)

    assert count(0.95) == 8 and count(0.5) == 1
