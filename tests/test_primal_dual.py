"""Primal-dual edge methods through the real jitted round: exact ADMM and PDMM on
least squares, edge-consensus learning (ECL) and its ISVR form.

Least squares: peer i holds f_i(x) = (1/2)||A_i x - b_i||^2 (A_i 5 x 3, b_i
Gaussian, numpy seed 0) as one "example" (A_i and b_i flattened); a batch is
that example repeated, so the local solve sees exactly f_i.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import quadratic_data, quadratic_loss, ring_weights
from workbench.algorithms.admm import admm
from workbench.algorithms.ecl import ecl, fan_in
from workbench.algorithms.edges import edge_phase
from workbench.algorithms.pdmm import pdmm
from workbench.comm import from_matrix
from workbench.optim import local_optimizer
from workbench.rounds import PeerData, RoundSpec, init_state, make_chunk

N, M, D = 8, 5, 3


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def least_squares():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(N, M, D))
    b = rng.normal(size=(N, M))
    star = np.linalg.lstsq(A.reshape(-1, D), b.reshape(-1), rcond=None)[0]
    return A, b, star


def lsq_loss(params, batch):
    rows = batch.x[:, : M * D].reshape(-1, M, D)
    r = jnp.einsum("bmd,d->bm", rows, params) - batch.x[:, M * D :]
    return jnp.mean(0.5 * jnp.sum(r**2, -1))


def lsq_data(A, b) -> PeerData:
    x = np.concatenate([A.reshape(N, -1), b], 1)[:, None, :]
    return PeerData(
        jnp.asarray(x), jnp.zeros((N, 1), jnp.int32), jnp.ones(N, jnp.int32)
    )


def run(alg, data, W, rounds, params0, seed=0):
    n = W.shape[0]
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 1)
    arrays = from_matrix("dense", W)
    keys = jax.random.split(jax.random.key(0), n)
    state = init_state(spec, seed, params0, keys, arrays)
    chunk = make_chunk(spec, seed)
    return chunk(state, data, arrays, jnp.ones((n,)), jnp.int32(0), length=rounds)


# ------------------------------------------------------------ exact methods


@pytest.mark.parametrize(
    ("make", "bound"),
    [
        (functools.partial(admm, c=1.0, solver="newton"), 1e-10),
        (functools.partial(pdmm, c=1.0, theta=1.0, solver="newton"), 1e-10),
    ],
    ids=["admm", "pdmm"],
)
def test_exact_methods_reach_the_least_squares_solution(make, bound):
    A, b, star = least_squares()
    alg = make(lsq_loss, optax.sgd(1.0))
    state, traffic = run(alg, lsq_data(A, b), ring_weights(N), 300, jnp.zeros((N, D)))
    err = float(jnp.max(jnp.abs(state.params - star[None])))
    assert err < bound
    assert err > 1e-14  # 300 iterations, not a direct solve
    # one vector of D float64 per edge and round, in each direction
    np.testing.assert_array_equal(traffic.sent, 2 * D * 64)


def test_pdmm_theta_half_is_slower():
    A, b, star = least_squares()
    alg = pdmm(lsq_loss, optax.sgd(1.0), c=1.0, theta=0.5, solver="newton")
    state, _ = run(alg, lsq_data(A, b), ring_weights(N), 300, jnp.zeros((N, D)))
    err = float(jnp.max(jnp.abs(state.params - star[None])))
    assert 1e-6 < err < 1e-5  # ~4e-6


def test_pdmm_one_round_by_hand():
    """x_i = (A^T A + c d I)^{-1} (A^T b - sum_j A_ij z_ij); y = z + 2c A x; swap."""
    A, b, _ = least_squares()
    c = 0.7
    alg = pdmm(lsq_loss, optax.sgd(1.0), c=c, theta=1.0, solver="newton")
    state, _ = run(alg, lsq_data(A, b), ring_weights(N), 2, jnp.zeros((N, D)))
    nbrs = [((i - 1) % N, (i + 1) % N) for i in range(N)]
    sign = lambda i, j: 1.0 if i < j else -1.0  # noqa: E731
    z = {(i, j): np.zeros(D) for i in range(N) for j in nbrs[i]}
    for _ in range(2):
        x = np.stack(
            [
                np.linalg.solve(
                    A[i].T @ A[i] + 2 * c * np.eye(D),
                    A[i].T @ b[i] - sum(sign(i, j) * z[i, j] for j in nbrs[i]),
                )
                for i in range(N)
            ]
        )
        z = {(j, i): z[i, j] + 2 * c * sign(i, j) * x[i] for (i, j) in z}
    np.testing.assert_allclose(state.params, x, rtol=1e-12)


# ---------------------------------------------------------------------- ECL

A_Q = np.array([1.0, 2.0] * 4)
B_Q = np.arange(8.0)


def ecl_run(rounds, lr=0.1, **options):
    alg = ecl(quadratic_loss, optax.sgd(lr), optax.constant_schedule(lr), **options)
    return run(alg, quadratic_data(A_Q, B_Q), ring_weights(N), rounds, jnp.ones(N))


def test_ecl_without_penalties_is_local_sgd():
    state, traffic = ecl_run(5, eta=0.0, rho=0.0, interval=1)
    x = np.ones(N)
    for _ in range(5):
        x = x - 0.1 * A_Q * (x - B_Q)
    np.testing.assert_allclose(state.params, x, rtol=1e-13)
    np.testing.assert_array_equal(traffic.sent, 2 * 64)  # y per edge, rho = 0


def test_ecl_interval_one_from_zero_duals_by_hand():
    """Step 1: the SGD step shrunk by 1/(1 + alpha (eta + rho) d), pulled towards
    alpha rho sum_j x0_j; then z_ij = 2 A_ij x_j and step 2 mixes neighbours."""
    alpha, eta, rho, d = 0.1, 0.5, 0.2, 2
    state, traffic = ecl_run(2, lr=alpha, eta=eta, rho=rho, interval=1)
    x0 = np.ones(N)
    g = lambda x: A_Q * (x - B_Q)  # noqa: E731
    den = 1 + alpha * (eta + rho) * d
    x1 = (x0 - alpha * g(x0) + alpha * rho * d * 1.0) / den
    nsum = np.roll(x1, 1) + np.roll(x1, -1)
    x2 = (x1 - alpha * g(x1) + alpha * (2 * eta + rho) * nsum) / den
    np.testing.assert_allclose(state.params, x2, rtol=1e-13)
    np.testing.assert_array_equal(traffic.sent, 2 * 2 * 64)  # (y, x) on 2 edges


def test_admm_form_averages_the_received_duals():
    """zbar starts at x0; each exchange: zbar <- (zbar + z_received) / 2."""
    state, _ = ecl_run(1, eta=0.5, rho=0.0, interval=1, duals="average")
    x1 = np.asarray(state.params)
    z = np.asarray(state.z)  # (N, k - 1 = N - 1 neighbour columns of the dense table)
    zbar = np.asarray(state.zbar)
    for i in range(N):
        for j in ((i - 1) % N, (i + 1) % N):
            col = (j - i) % N - 1  # dense table: column c is peer i + c; row c - 1
            want = 2 * (1.0 if i < j else -1.0) * x1[j]  # y_ji = 0 - 2 A_ji x_j
            assert z[i, col] == pytest.approx(want, rel=1e-13)
            assert zbar[i, col] == pytest.approx((1.0 + want) / 2, rel=1e-13)


def test_relaxed_averaging_halves_the_received_dual():
    """averaging 'relaxed' (theta = 1/2): z <- (z + y_received) / 2, no zbar."""
    state, _ = ecl_run(
        1, eta=0.5, rho=0.0, interval=1, duals="average", averaging="relaxed"
    )
    x1, z = np.asarray(state.params), np.asarray(state.z)
    assert state.zbar is None
    for i in range(N):
        for j in ((i - 1) % N, (i + 1) % N):
            want = (1.0 if i < j else -1.0) * x1[j]  # (0 + 2 A_ij x_j) / 2
            assert z[i, (j - i) % N - 1] == pytest.approx(want, rel=1e-13)


def test_isvr_step_size_and_gradient_coefficient():
    """eta = piw / (alpha (R d + R - piw d)); gcoef = 1 - alpha eta d (R/piw - 1)."""
    alpha, R, piw, d = 0.1, 4, 2.0, 2
    state, _ = ecl_run(1, lr=alpha, interval=R, piw=piw, use_gcoef=True)
    eta = piw / (alpha * (R * d + R - piw * d))
    gcoef = 1 - alpha * eta * d * (R / piw - 1)
    x0 = np.ones(N)
    x1 = (x0 - alpha * gcoef * A_Q * (x0 - B_Q)) / (1 + alpha * eta * d)
    np.testing.assert_allclose(state.params, x1, rtol=1e-13)


@pytest.mark.parametrize("round_robin", [True, False])
def test_each_edge_is_exchanged_once_every_interval(round_robin):
    R = 5
    state, traffic = ecl_run(
        3 * R, eta=0.5, rho=0.0, interval=R, round_robin=round_robin
    )
    sent = np.asarray(traffic.sent) / 64  # (rounds, N) duals sent per peer
    for start in range(0, 3 * R, R):
        np.testing.assert_array_equal(sent[start : start + R].sum(0), 2)  # 2 edges
    edges = [(i, (i + 1) % N) for i in range(N)]
    for t in range(3 * R):
        for i in range(N):
            mine = [e for e in edges if i in e]
            due = [int(edge_phase(*e, R, round_robin)) == t % R for e in mine]
            assert sent[t, i] == sum(due)
    if round_robin:  # on a ring a peer's two edges never share a step
        assert sent.max() == 1


def test_fan_in_of_a_dense_and_a_conv_layer():
    params = {
        "Conv_0": {"kernel": jnp.zeros((3, 3, 2, 8)), "bias": jnp.zeros(8)},
        "GroupNorm_0": {"scale": jnp.zeros(8), "bias": jnp.zeros(8)},
        "Dense_0": {"kernel": jnp.zeros((72, 10)), "bias": jnp.zeros(10)},
    }
    assert fan_in(params) == {
        "Conv_0": {"kernel": 18.0, "bias": 18.0},
        "GroupNorm_0": {"scale": 8.0, "bias": 8.0},
        "Dense_0": {"kernel": 72.0, "bias": 72.0},
    }


def test_fan_in_scaling_and_degree_normalization_scale_the_penalties():
    """eta and rho x sqrt(fan_in) / d: a kernel of 9 inputs on a ring (d = 2)."""
    alpha, eta, rho, d = 0.1, 0.5, 0.2, 2

    def loss(params, batch):
        a, b = batch.x[:, 0], batch.x[:, 1]
        sq = jnp.sum((params["layer"]["kernel"] - 0.0) ** 2)
        return jnp.mean(0.5 * a * (sq - 2 * b * jnp.sum(params["layer"]["kernel"])))

    alg = ecl(
        loss,
        optax.sgd(alpha),
        optax.constant_schedule(alpha),
        eta=eta,
        rho=rho,
        interval=1,
        fan_in_scaling=True,
        degree_normalized=True,
    )
    x0 = {"layer": {"kernel": jnp.ones((N, 9, 1))}}
    state, _ = run(alg, quadratic_data(A_Q, B_Q), ring_weights(N), 1, x0)
    e, r = eta * 3 / d, rho * 3 / d
    g = A_Q * (1.0 - B_Q)  # d loss / d kernel entry at 1
    x1 = (1.0 - alpha * g + alpha * r * d * 1.0) / (1 + alpha * (e + r) * d)
    got = np.asarray(state.params["layer"]["kernel"])
    np.testing.assert_allclose(got, np.broadcast_to(x1[:, None, None], got.shape))


def test_step_size_follows_the_scenarios_steplr_schedule():
    """alpha_t = lr * 0.5 ** floor(t / 2) (``exponential``, staircase: StepLR)."""
    opt = local_optimizer(
        lr=0.1,
        rounds=5,
        schedule={"name": "exponential", "transition_steps": 2, "decay_rate": 0.5},
    )
    alphas = [0.1, 0.1, 0.05, 0.05, 0.025]
    np.testing.assert_allclose([opt.learning_rate(1)(t) for t in range(5)], alphas)
    alg = ecl(quadratic_loss, opt(1), opt.learning_rate(1), eta=0.5, rho=0.0)
    state, _ = run(alg, quadratic_data(A_Q, B_Q), ring_weights(N), 5, jnp.ones(N))
    x = np.ones(N)  # interval 10: no dual arrives in 5 steps, z stays 0
    for alpha in alphas:
        x = (x - alpha * A_Q * (x - B_Q)) / (1 + alpha * 0.5 * 2)
    np.testing.assert_allclose(state.params, x, rtol=1e-7)  # float32 schedule
