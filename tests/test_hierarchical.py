"""Hierarchical FL on the quadratic, against numpy: parties, kappa2, the 2-bit link.

Each worker's tau local GD steps from x have the closed form
y = b + (1 - eta a)^tau (x - b); party means and the global step are
recomputed by hand, as are the bits each level pays for.
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
from workbench.algorithms.hierarchical import hierarchical
from workbench.comm import from_matrix
from workbench.compression import COMPRESSORS
from workbench.rounds import RoundSpec, init_state, make_chunk

A = np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
B = np.arange(6.0)
SIZES = np.array([1.0, 3.0, 2.0, 5.0, 1.0, 4.0])
LR, TAU = 0.1, 3


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def run(rounds, **kwargs):
    n = len(A)
    alg = hierarchical(quadratic_loss, optax.sgd(LR), steps=TAU, **kwargs)
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 1)
    topo = from_matrix("dense", ring_weights(n))
    keys = jax.random.split(jax.random.key(0), n)
    state = init_state(spec, 0, jnp.zeros((n,)), keys, topo)
    return make_chunk(spec, seed=0)(
        state, quadratic_data(A, B), topo, jnp.asarray(SIZES), jnp.int32(0),
        length=rounds,
    )  # fmt: skip


def gd(x):
    return B + (1 - LR * A) ** TAU * (x - B)


def party_means(x, parties, trains):
    """Each worker's party mean (data-size weights) of its workers' models."""
    party = np.arange(len(A)) % parties
    out = x.copy()
    for p in range(parties):
        mine = party == p
        if trains[p]:
            out[mine] = np.sum(SIZES[mine] * x[mine]) / SIZES[mine].sum()
    return out


def reference(rounds, parties, kappa2, threshold=None, central_trains=True):
    """(worker models, global model, bits sent per round) by hand."""
    party = np.arange(len(A)) % parties
    trains = [central_trains or p != 0 for p in range(parties)]
    on = np.array([trains[p] for p in party])
    x, anchor = np.zeros(len(A)), 0.0
    residual = np.zeros(parties)
    for t in range(rounds):
        x = np.where(on, gd(x), x)
        x = party_means(x, parties, trains)
        if (t + 1) % kappa2:
            continue
        q = np.zeros(parties)
        weight = np.zeros(parties)
        for p in range(parties):
            mine = party == p
            v = x[mine][0] - anchor + residual[p]
            if threshold is None:
                q[p] = v
            else:
                q[p] = threshold * np.sign(v) * (abs(v) >= threshold)
            residual[p] = v - q[p]
            weight[p] = SIZES[mine].sum() if trains[p] else 0.0
        anchor = anchor + np.sum(weight * q) / weight.sum()
        x = np.full(len(A), anchor)
    return x, anchor


def test_one_party_is_fedavg():
    state, _ = run(5, parties=1)
    ref = run_quadratic(
        functools.partial(fedavg, weighting="data_size"), ring_weights(6), A, B, LR,
        5, local_steps=TAU, weights=SIZES,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(ref.params),
                               rtol=1e-12)  # fmt: skip


@pytest.mark.parametrize("parties,kappa2", [(3, 1), (2, 2), (3, 3)])
def test_parties_and_global_rounds_against_numpy(parties, kappa2):
    for rounds in (kappa2, 2 * kappa2 + 1):
        state, _ = run(rounds, parties=parties, kappa2=kappa2)
        x, anchor = reference(rounds, parties, kappa2)
        np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(state.anchor), anchor, rtol=1e-12)


def test_two_bit_link_with_its_residual():
    link = COMPRESSORS.build({"name": "threshold_2bit", "threshold": 0.25}, "c")
    state, traffic = run(6, parties=2, kappa2=2, compressor=link)
    x, anchor = reference(6, 2, 2, threshold=0.25)
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state.anchor), anchor, rtol=1e-12)
    # bits: every worker uploads its model (64 bits); in global rounds each
    # party leader (peers 0, 1) adds its 2-bit update
    sent = np.asarray(traffic.sent)
    np.testing.assert_array_equal(sent[0], 64)  # a party round
    np.testing.assert_array_equal(sent[1], [64 + 2, 64 + 2, 64, 64, 64, 64])
    # replies: the party means to 6 workers; the global model to 2 parties
    np.testing.assert_array_equal(np.asarray(traffic.server), [6 * 64, 8 * 64] * 3)


def test_the_central_party_can_sit_out():
    state, traffic = run(4, parties=3, kappa2=2, central_trains=False)
    x, anchor = reference(4, 3, 2, central_trains=False)
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(state.anchor), anchor, rtol=1e-12)
    # the central party's workers (peers 0 and 3) never upload
    assert float(np.asarray(traffic.sent)[:, [0, 3]].sum()) == 0.0


def test_one_party_without_central_training_is_refused():
    from workbench.algorithms import ALGORITHMS
    from workbench.errors import ScenarioError

    with pytest.raises(ScenarioError, match="algorithm.central_trains: with one"):
        ALGORITHMS.build(
            {"name": "hierarchical", "parties": 1, "central_trains": False},
            "algorithm", loss_fn=quadratic_loss, optimizer=lambda s: optax.sgd(0.1),
        )  # fmt: skip


def test_a_party_client_runs_kappa1_steps_per_worker_then_the_party_mean():
    """HiPS's asynchronous global layer with parties of workers: 2 party
    rounds of 2 workers x kappa1 = 2 steps, by hand. The loss of a batch is
    the mean of 0.5 (x - v)^2 over its values v, so a step is
    x <- x - lr (x - mean v)."""
    from workbench.algorithms.async_server import Party, party_trained
    from workbench.objective import Batch

    def loss(x, batch):
        return jnp.mean(0.5 * (x - batch.x) ** 2)

    values = np.arange(8.0 * 3).reshape(8, 3)  # 8 batches of 3 values
    batches = Batch(jnp.asarray(values), jnp.zeros((8, 3), jnp.int32),
                    jnp.ones((8, 3)))  # fmt: skip
    got, _ = party_trained(loss, optax.sgd(LR), jnp.asarray(1.0), batches,
                           Party(workers=2, kappa1=2))  # fmt: skip
    x = 1.0
    for r in range(2):
        ends = []
        for w in range(2):
            y = x
            for k in range(2):
                y = y - LR * (y - values[r * 4 + w * 2 + k].mean())
            ends.append(y)
        x = np.mean(ends)
    assert float(got) == pytest.approx(x, rel=1e-12)


def test_hips_async_with_parties_of_workers_draws_each_workers_batches():
    from workbench.algorithms import ALGORITHMS
    from workbench.optim import local_optimizer

    alg = ALGORITHMS.build(
        {"name": "fedbuff", "buffer": 1, "local_steps": 3, "workers": 4, "kappa1": 2},
        "algorithm", loss_fn=quadratic_loss, optimizer=local_optimizer(lr=LR),
    )  # fmt: skip
    assert alg.rounds.local_steps == 3 * 4 * 2  # batches drawn per upload
