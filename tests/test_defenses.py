"""Privacy defenses through the real jitted round: ZeroSum, Muffliato, local DP-SGD.

Pure averaging (learning rate 0) isolates the noise: ZeroSum keeps the global
mean and its per-sender noise cancels under W; Muffliato with sigma = 0 is
multi-step gossip exactly, and its Chebyshev form reaches a consensus error in
fewer steps; DP-SGD without clipping or noise is D-SGD, and its clipping and
noise scale match a hand computation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import ring_weights
from workbench.algorithms import ALGORITHMS
from workbench.algorithms.dpsgd import dpsgd
from workbench.algorithms.dsgd import dsgd
from workbench.algorithms.gossip import multi_gossip
from workbench.algorithms.muffliato import auto_steps, constant_omegas, muffliato
from workbench.algorithms.noise import private_gradient
from workbench.algorithms.zerosum import zero_sum_noise, zerosum
from workbench.comm import from_matrix
from workbench.errors import ScenarioError
from workbench.objective import Batch
from workbench.rounds import (
    Capture,
    PeerData,
    RoundSpec,
    init_state,
    make_chunk,
    peer_topology,
)
from workbench.topology.diagnostics import spectral

N, D = 8, 6


def pull_loss(params, batch):
    """(1/2)||p - x||^2 averaged over the batch's real examples (grad: p - x)."""
    r = 0.5 * jnp.sum((params["w"][None] - batch.x) ** 2, -1)
    return jnp.sum(r * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1.0)


def data(seed=0, m=4) -> PeerData:
    x = np.random.default_rng(seed).normal(size=(N, m, D)).astype(np.float32)
    return PeerData(jnp.asarray(x), jnp.zeros((N, m), jnp.int32), jnp.full(N, m))


def params0(seed=1):
    w = np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)
    return {"w": jnp.asarray(w)}


def run(alg, W, rounds, params=None, capture=None, batch=4):
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, N, batch, capture)
    arrays = from_matrix("table", W)
    keys = jax.random.split(jax.random.key(0), N)
    params = jax.tree.map(jnp.array, params or params0())  # a copy: donated
    state = init_state(spec, 0, params, keys, arrays)
    chunk = make_chunk(spec, 0)
    return chunk(state, data(), arrays, jnp.ones((N,)), jnp.int32(0), length=rounds)


def random_graph_weights() -> np.ndarray:
    """Metropolis weights of a fixed irregular undirected graph on N nodes."""
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (4, 5), (5, 6), (6, 7), (7, 0)]
    edges += [(2, 6), (1, 5)]
    A = np.zeros((N, N))
    for i, j in edges:
        A[i, j] = A[j, i] = 1
    deg = A.sum(1)
    W = np.where(A > 0, 1.0 / (1 + np.maximum(deg[:, None], deg[None])), 0.0)
    return W + np.diag(1 - W.sum(1))


# ------------------------------------------------------------------ ZeroSum


def paper_noise(W):
    """(Z (n, k, D) float64 of sigma 0.7, each peer's topology view) on W."""
    table = from_matrix("table", W)
    _, topo = peer_topology(table, N)
    like = {"w": jnp.zeros((D,))}
    keys = jax.random.split(jax.random.key(3), N)
    z = jax.vmap(lambda k, t: zero_sum_noise(k, t, like, 0.7, "paper"))(keys, topo)
    return np.asarray(z["w"], np.float64), topo


@pytest.mark.parametrize("W", [ring_weights(N), random_graph_weights()])
def test_zerosum_noise_cancels_under_w_per_sender(W):
    z, topo = paper_noise(W)
    weights = np.asarray(topo.weight)
    real = np.asarray(topo.mask).copy()
    real[:, 0] = True
    cancel = np.einsum("nk,nkd->nd", weights * real, z)
    assert np.max(np.abs(cancel)) < 1e-5
    assert np.std(z[real]) > 0.3  # the noise itself is not small
    assert np.all(z[~real] == 0)  # padding columns carry nothing


def test_zerosum_without_self_weight_stays_finite_and_cancels():
    """W_aa = 0 (each peer averages its two ring neighbours only): the noise
    is spread over the neighbours alone, finite, and still sums to zero."""
    W = (ring_weights(N) > 0) * 0.5
    np.fill_diagonal(W, 0.0)
    z, topo = paper_noise(W)
    assert np.all(np.isfinite(z)) and np.all(z[:, 0] == 0)
    cancel = np.einsum("nk,nkd->nd", np.asarray(topo.weight), z)
    assert np.max(np.abs(cancel)) < 1e-5
    assert np.std(z[:, 1:3]) > 0.3


def test_zerosum_keeps_the_global_mean_every_round():
    W = random_graph_weights()
    alg = zerosum(pull_loss, optax.sgd(0.0), sigma=1.0)
    p0 = params0()
    capture = Capture(tuple(range(N)))
    for rounds in (1, 5):
        state, _, got = run(alg, W, rounds, p0, capture)
        drift = np.abs(np.asarray(state.params["w"]).mean(0) - p0["w"].mean(0))
        assert drift.max() < 1e-6
    # the messages themselves are noisy: a neighbour never sees the model
    sent = np.asarray(got.outbox.value["w"][0])  # (N, k - 1, D) round 0
    assert np.abs(sent[0, 0] - np.asarray(p0["w"][0])).max() > 0.1


def test_zerosum_messages_are_counted_once_per_edge():
    W = ring_weights(N)
    _, traffic = run(zerosum(pull_loss, optax.sgd(0.0), sigma=1.0), W, 2)
    per_round = np.asarray(traffic.sent)  # (rounds, n) bits
    assert np.all(per_round == 2 * D * 32)


def test_zerosum_code_form_subtracts_the_plain_mean():
    W = ring_weights(N)  # uniform 1/3: the code form cancels exactly too
    table = from_matrix("table", W)
    _, topo = peer_topology(table, N)
    like = {"w": jnp.zeros((4000,))}
    keys = jax.random.split(jax.random.key(5), N)
    z = jax.vmap(lambda k, t: zero_sum_noise(k, t, like, 2.0, "code"))(keys, topo)
    z = np.asarray(z["w"], np.float64)[:, :3]  # 3 real columns on a ring
    assert np.abs(z.sum(1)).max() < 1e-4
    # Y has std sigma sqrt(d / (d - 1)); Y - mean(Y) has std sigma again
    assert abs(z.std() - 2.0) < 0.03


def test_zerosum_without_noise_is_dsgd():
    W = random_graph_weights()
    a, _ = run(zerosum(pull_loss, optax.sgd(0.3), sigma=0.0), W, 4)
    b, _ = run(dsgd(pull_loss, optax.sgd(0.3)), W, 4)
    np.testing.assert_allclose(a.params["w"], b.params["w"], atol=1e-6)


def test_zerosum_averaging_steps_are_gossip_steps_with_fresh_zero_sum_noise():
    """T averaging steps per round: sigma 0 is T-step gossip exactly; with
    noise every step keeps the mean, draws new noise, and is paid for."""
    W = random_graph_weights()
    a, _ = run(zerosum(pull_loss, optax.sgd(0.3), sigma=0.0, gossip_steps=3), W, 2)
    b, _ = run(multi_gossip(pull_loss, optax.sgd(0.3), gossip_steps=3), W, 2)
    np.testing.assert_allclose(a.params["w"], b.params["w"], atol=1e-6)
    p0 = params0()
    noisy = zerosum(pull_loss, optax.sgd(0.0), sigma=1.0, gossip_steps=3)
    state, traffic = run(noisy, W, 2, p0)
    drift = np.abs(np.asarray(state.params["w"]).mean(0) - p0["w"].mean(0))
    assert drift.max() < 1e-6
    degrees = (W > 0).sum(1) - 1
    np.testing.assert_array_equal(np.asarray(traffic.sent[0]), 3 * degrees * D * 32)
    # fresh noise each step: three steps of noise spread the models more than
    # one step would, starting from the same models with sigma as the only change
    one, _ = run(zerosum(pull_loss, optax.sgd(0.0), sigma=1.0), W, 1, p0)
    three, _ = run(noisy, W, 1, p0)
    quiet, _ = run(multi_gossip(pull_loss, optax.sgd(0.0), gossip_steps=3), W, 1, p0)
    gap = np.abs(np.asarray(three.params["w"]) - np.asarray(quiet.params["w"])).max()
    assert gap > 0.05  # not just the first step's noise, averaged away
    assert not np.allclose(three.params["w"], one.params["w"])


def test_zerosum_draws_new_noise_at_each_averaging_step():
    """Step 1 resends with noise of its own: with no local update, step 1's
    message minus step 0's is x^1 - x^0 plus the change of noise, which would be
    the same on every edge of a peer if the step-0 noise were drawn again."""
    W = ring_weights(N)
    alg = zerosum(pull_loss, optax.sgd(0.0), sigma=1.0, gossip_steps=2)
    capture = Capture(tuple(range(N)), second=True)
    _, _, got = run(alg, W, 1, params0(), capture)
    first = np.asarray(got.outbox.value["w"][0])  # (N, k - 1, D) step 0
    second = np.asarray(got.second.value["w"][0])  # (N, k - 1, D) step 1
    change = second - first  # on a ring both columns are real neighbours
    assert np.abs(change[:, 0] - change[:, 1]).max() > 0.5


# ---------------------------------------------------------------- Muffliato


def test_muffliato_without_noise_is_multi_step_gossip():
    """The same models to float32 rounding (two programs: their multiply-adds
    may be contracted differently), the same bits sent exactly."""
    W = ring_weights(N)
    a, ta = run(muffliato(pull_loss, optax.sgd(0.2), sigma=0.0, gossip_steps=4), W, 3)
    b, tb = run(multi_gossip(pull_loss, optax.sgd(0.2), gossip_steps=4), W, 3)
    np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ta.sent, tb.sent)


def consensus_error(alg, W, p0) -> float:
    state, _ = run(alg, W, 1, p0)
    x = np.asarray(state.params["w"], np.float64)
    return float(np.sum((x - x.mean(0)) ** 2))


def test_muffliato_chebyshev_reaches_the_same_consensus_error_in_fewer_steps():
    W = ring_weights(N)
    _, lam = spectral(W)
    p0 = params0()

    def error(steps, accelerated):
        omegas = constant_omegas(lam, steps) if accelerated else None
        alg = muffliato(
            pull_loss, optax.sgd(0.0), sigma=0.0, gossip_steps=steps, omegas=omegas
        )
        return consensus_error(alg, W, p0)

    # 8-ring, lambda = 0.195: 12 accelerated steps beat 16 plain, 16 beat 24
    assert error(12, True) < error(16, False)
    assert error(16, True) < error(24, False)
    assert error(16, True) < 1e-2 * error(16, False)
    # the mean is kept
    alg = muffliato(
        pull_loss,
        optax.sgd(0.0),
        sigma=0.0,
        gossip_steps=8,
        omegas=constant_omegas(lam, 8),
    )
    state, _ = run(alg, W, 1, p0)
    np.testing.assert_allclose(state.params["w"].mean(0), p0["w"].mean(0), atol=1e-6)


def test_muffliato_noise_has_the_requested_std_and_the_paper_keeps_it():
    W = ring_weights(N)
    p0 = params0()
    alg = muffliato(pull_loss, optax.sgd(0.0), sigma=0.5, gossip_steps=1)
    state, _, got = run(alg, W, 1, p0, Capture(tuple(range(N))))
    noise = np.asarray(got.outbox["w"][0]) - np.asarray(p0["w"])
    assert abs(noise.std() - 0.5) < 0.15  # 48 draws
    expected = W @ (np.asarray(p0["w"]) + noise)  # paper: everyone mixes x + n
    np.testing.assert_allclose(state.params["w"], expected, atol=1e-5)


def test_muffliato_decentralizepy_variant_keeps_the_own_model_unnoised():
    W = ring_weights(N)
    p0 = params0()
    alg = muffliato(
        pull_loss, optax.sgd(0.0), sigma=0.5, gossip_steps=1, variant="decentralizepy"
    )
    state, _, got = run(alg, W, 1, p0, Capture(tuple(range(N))))
    x = np.asarray(p0["w"])
    noise = np.asarray(got.outbox["w"][0]) - x
    expected = W @ x + (W - np.diag(np.diag(W))) @ noise
    np.testing.assert_allclose(state.params["w"], expected, atol=1e-5)


def test_muffliato_gd_clips_the_noisy_gradient():
    W = np.eye(N)  # no mixing: x_1 = x_0 - lr * clip(g + noise)
    p0 = params0()
    alg = muffliato(
        pull_loss, optax.sgd(1.0), sigma=0.0, gossip_steps=1, variant="gd", clip=0.1
    )
    state, _ = run(alg, W, 1, p0)
    step = np.asarray(p0["w"]) - np.asarray(state.params["w"])
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), 0.1, rtol=1e-5)


def test_muffliato_steps_and_omega_follow_the_formulas():
    lam, n, sigma = 0.05, 16, 0.1
    # T = ceil(lambda^-1/2 ln(n max(1/4, sigma^2) / sigma^2)) = ceil(4.472 * 5.991)
    assert (
        auto_steps(lam, n, sigma, chebyshev=True)
        == math.ceil(math.log(16 * 0.25 / 0.01) / math.sqrt(0.05))
        == 27
    )
    assert auto_steps(lam, n, 2.0, chebyshev=False) == math.ceil(math.log(16) / 0.05)
    omega = 2 * (1 - math.sqrt(0.05 * (1 - 0.0125))) / (1 - 0.025) ** 2
    np.testing.assert_allclose(constant_omegas(lam, 3), [1.0, omega, omega])


def test_muffliato_auto_steps_come_from_the_topology():
    W = ring_weights(N)
    _, lam = spectral(W)
    graph = {"n": N, "lambda2_I_minus_W": lam}
    alg = ALGORITHMS.build(
        {"name": "muffliato", "sigma": 0.1, "acceleration": "chebyshev"},
        "algorithm",
        loss_fn=pull_loss,
        optimizer=lambda steps: optax.sgd(0.0),
        graph=graph,
    )
    assert alg.rounds.gossip_steps == auto_steps(lam, N, 0.1, True)
    with pytest.raises(ScenarioError, match="lambda_2"):
        ALGORITHMS.build(
            {"name": "muffliato", "sigma": 0.1},
            "algorithm",
            loss_fn=pull_loss,
            optimizer=lambda steps: optax.sgd(0.0),
            graph={"n": N},
        )


# ------------------------------------------------------------------ DP-SGD


def test_dpsgd_without_clipping_or_noise_is_dsgd():
    W = ring_weights(N)
    alg = dpsgd(pull_loss, optax.sgd(0.3), clip=math.inf, noise_multiplier=0.0)
    a, _ = run(alg, W, 3)
    b, _ = run(dsgd(pull_loss, optax.sgd(0.3)), W, 3)
    np.testing.assert_allclose(a.params["w"], b.params["w"], atol=1e-6)


def test_private_gradient_clips_each_example_then_averages():
    p = {"w": jnp.zeros((2,))}
    x = jnp.asarray([[3.0, 4.0], [0.3, 0.4], [9.0, 9.0]])  # grads -x: norms 5, .5
    batch = Batch(x, jnp.zeros(3, jnp.int32), jnp.asarray([1.0, 1.0, 0.0]))
    loss, g = private_gradient(pull_loss, p, batch, jax.random.key(0), 1.0, 0.0)
    # clip 1: (-0.6, -0.8) and (-0.3, -0.4) (unclipped); padding ignored; mean / 2
    np.testing.assert_allclose(g["w"], [-0.45, -0.6], rtol=1e-6)
    np.testing.assert_allclose(loss, (12.5 + 0.125) / 2, rtol=1e-6)


def test_private_gradient_noise_std_is_multiplier_times_clip_over_batch():
    p = {"w": jnp.zeros((20000,))}
    batch = Batch(jnp.zeros((4, 20000)), jnp.zeros(4, jnp.int32), jnp.ones(4))
    _, g = private_gradient(pull_loss, p, batch, jax.random.key(1), 2.0, 1.5)
    assert abs(float(jnp.std(g["w"])) - 1.5 * 2.0 / 4) < 0.01
