"""Gossip through the real jitted chunk: multi-step and Chebyshev gossip, randomized
and pairwise gossip, push-sum / SGP, and the epidemic scenario.

Closed forms (float64):

- plain gossip with g steps mixes with W^g; Chebyshev gossip with
  P_g(W) = T_g(W / rho) / T_g(1 / rho), whose disagreement factor on the
  16-ring (rho = 1/3 + 2/3 cos(pi/8)) along the slowest eigenvector is exactly
  1 / T_g(1/rho) = 2 r^g / (1 + r^{2g}), r = rho / (1 + sqrt(1 - rho^2)).
- pairwise gossip (one uniform edge of a graph with |E| edges and Laplacian L
  per round): E[W_t] = I - L / (2|E|); on the 8-ring its second eigenvalue is
  1 - (2 - 2 cos(2 pi / 8)) / 16 = 0.963388.
- random matching on n (even) peers: W_t = (I + P_t)/2 is a projection, so
  E||x_{t+1} - xbar||^2 = y^T E[W_t] y for y = x_t - xbar, and
  E[W_t] = (I + (11^T - I)/(n - 1))/2 acts on 1-perp as the scalar
  (n - 2) / (2 (n - 1)) (= 7/15 for n = 16): the expected squared
  disagreement shrinks by exactly that factor every round, from any x_t.
- push-sum keeps sum_i x_i and sum_i w_i = n, so z_i -> the average of x_0
  on row-stochastic ``el_local`` where D-SGD's average drifts.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import quadratic_data, quadratic_loss, run
from workbench.algorithms import ALGORITHMS, dsgd
from workbench.algorithms.gossip import chebyshev_bound, chebyshev_omegas, multi_gossip
from workbench.algorithms.pushsum import sgp
from workbench.errors import ScenarioError
from workbench.execution import lift
from workbench.keys import TOPOLOGY, round_key
from workbench.rounds import RoundSpec, make_chunk
from workbench.topology import TOPOLOGIES, build_topology

REPO = Path(__file__).resolve().parents[1]
A8 = np.array([1.0, 2.0] * 4)
B8 = np.arange(8.0)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def _chunk(alg, topo):
    spec = RoundSpec(alg, topo.at, lambda f: lift(f, "vmap", None), topo.n, 1)
    return make_chunk(spec, seed=0)


def _init(alg, x0):
    x0 = jnp.asarray(x0, jnp.float64)
    return jax.vmap(alg.init)(x0, jax.random.split(jax.random.key(0), x0.shape[0]))


def _run(alg, topo, x0, rounds, a=None, b=None):
    """``rounds`` rounds of ``alg`` over ``topo`` from x0; (state, Traffic)."""
    n = topo.n
    a = np.ones(n) if a is None else a
    b = np.zeros(n) if b is None else b
    data, w = quadratic_data(a, b), jnp.ones((n,))
    chunk = _chunk(alg, topo)
    return chunk(_init(alg, x0), data, topo.data, w, jnp.int32(0), length=rounds)


def _pure(**kwargs):
    """Pure gossip: multi_gossip with learning rate 0."""
    return multi_gossip(quadratic_loss, optax.sgd(0.0), **kwargs)


def _disagreement(x):
    x = np.asarray(x)
    return np.linalg.norm(x - x.mean(0))


def _sampled(topo, rounds, seed=0):
    """Dense W_0 .. W_{rounds-1} of a table sampler, drawn under the run's keys."""
    ts = jnp.arange(rounds, dtype=jnp.int32)
    keys = jax.vmap(lambda t: round_key(seed, t, TOPOLOGY))(ts)
    table = jax.jit(jax.vmap(topo.at, in_axes=(None, 0, 0)))(topo.data, ts, keys)
    idx, weight = np.asarray(table.idx), np.asarray(table.weight)
    T, n, k = idx.shape
    Ws = np.zeros((T, n, n))
    rows = np.broadcast_to(np.arange(n)[None, :, None], idx.shape)
    steps = np.broadcast_to(np.arange(T)[:, None, None], idx.shape)
    np.add.at(Ws, (steps, rows, idx), weight)
    return Ws


# ------------------------------------------------------- multi-step gossip


def test_plain_gossip_steps_mix_with_w_power_and_count_g_messages_per_edge():
    n, g, rounds = 16, 5, 2
    topo = build_topology({"name": "ring"}, n, 0)
    x0 = np.random.default_rng(0).standard_normal(n)
    state, traffic = _run(_pure(gossip_steps=g), topo, x0, rounds)
    expect = np.linalg.matrix_power(topo.W, g * rounds) @ x0
    np.testing.assert_allclose(state.params, expect, rtol=0, atol=1e-12)
    assert _disagreement(state.params) / _disagreement(x0) == pytest.approx(
        _disagreement(expect) / _disagreement(x0), abs=1e-12
    )
    assert abs(float(state.params.mean()) - x0.mean()) < 1e-14
    # every gossip step: one float64 message on each of the 2 out-edges
    np.testing.assert_array_equal(traffic.sent, np.full((rounds, n), g * 2 * 64.0))


def test_chebyshev_gossip_meets_the_chebyshev_bound_and_keeps_the_mean():
    n, g = 16, 10
    topo = build_topology({"name": "ring"}, n, 0)
    rho = topo.info["rho"]
    assert rho == pytest.approx(1 / 3 + 2 / 3 * np.cos(np.pi / 8), abs=1e-12)
    bound = chebyshev_bound(rho, g)
    assert bound == pytest.approx(0.077011, abs=1e-6) and bound < rho**g / 7
    omegas = chebyshev_omegas(rho, g)
    assert omegas[0] == 1 and omegas[1] == pytest.approx(2 / (2 - rho**2))
    alg = _pure(gossip_steps=g, chebyshev=True, rho=rho)
    # x0 - mean along the slowest eigenvector (eigenvalue rho): the bound is met
    slow = 3.0 + np.cos(2 * np.pi * np.arange(n) / n)
    rand = np.random.default_rng(1).standard_normal(n)
    state, traffic = _run(alg, topo, np.stack([slow, rand], 1), 1)
    x = np.asarray(state.params)
    assert _disagreement(x[:, 0]) / _disagreement(slow) == pytest.approx(
        bound, rel=1e-9
    )
    assert _disagreement(x[:, 1]) / _disagreement(rand) <= bound + 1e-12
    np.testing.assert_allclose(x.mean(0), [3.0, rand.mean()], rtol=0, atol=1e-14)
    # independently: P_g(W) = T_g(W / rho) / T_g(1 / rho) by eigendecomposition
    lam, V = np.linalg.eigh(topo.W)
    T_g = functools.partial(np.polynomial.chebyshev.chebval, c=[0] * g + [1])
    P = V @ np.diag(T_g(lam / rho) / T_g(1 / rho)) @ V.T
    np.testing.assert_allclose(x, P @ np.stack([slow, rand], 1), atol=1e-12)
    np.testing.assert_array_equal(traffic.sent, np.full((1, n), g * 2 * 2 * 64.0))


@pytest.mark.parametrize(("order", "chebyshev"), [("atc", False), ("cta", True)])
def test_multi_gossip_sgd_matches_its_recursion(order, chebyshev):
    """ATC: X <- M (X - eta G(X)); CTA: X <- M X - eta G(X) (exact gradients),
    M = W^g, or P_g(W) = T_g(W / rho) / T_g(1 / rho) with Chebyshev gossip."""
    g, lr, rounds, W = 3, 0.1, 20, _ring8()
    lam, V = np.linalg.eigh(W)
    rho = float(np.sort(np.abs(lam))[-2])  # 1/3 + 2/3 cos(pi/4)
    make = functools.partial(
        multi_gossip, gossip_steps=g, order=order, chebyshev=chebyshev, rho=rho
    )
    x = run(make, W, A8, B8, lr=lr, rounds=rounds).params
    Wg, ref = np.linalg.matrix_power(W, g), np.zeros(8)
    if chebyshev:
        T_g = functools.partial(np.polynomial.chebyshev.chebval, c=[0] * g + [1])
        Wg = V @ np.diag(T_g(lam / rho) / T_g(1 / rho)) @ V.T
    for _ in range(rounds):
        grad = A8 * (ref - B8)
        ref = Wg @ (ref - lr * grad) if order == "atc" else Wg @ ref - lr * grad
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-12)


def _ring8():
    W = np.eye(8) / 3
    for i in range(8):
        W[i, (i + 1) % 8] = W[i, (i - 1) % 8] = 1 / 3
    return W


# --------------------------------------------- randomized and pairwise gossip


def test_pairwise_gossip_expected_matrix_and_second_eigenvalue():
    n = 8
    topo = build_topology({"name": "random_edge", "graph": {"name": "ring"}}, n, 0)
    L = 2 * np.eye(n) - np.roll(np.eye(n), 1, 1) - np.roll(np.eye(n), -1, 1)
    expected = np.eye(n) - L / (2 * n)  # |E| = n on the ring
    l2 = np.sort(np.linalg.eigvalsh(expected))[-2]
    assert l2 == pytest.approx(1 - (2 - 2 * np.cos(2 * np.pi / n)) / 16, abs=1e-12)
    assert l2 == pytest.approx(0.963388, abs=1e-6)
    Ws = _sampled(topo, 20000)
    for W in Ws[:50]:  # each W_t = I - (e_i - e_j)(e_i - e_j)^T / 2, (i, j) a ring edge
        (i, j) = np.flatnonzero(np.diag(W) == 0.5)
        assert (j - i) % n in (1, n - 1)
        d = np.zeros(n)
        d[i], d[j] = 1, -1
        np.testing.assert_array_equal(W, np.eye(n) - np.outer(d, d) / 2)
    mean = Ws.mean(0)
    assert np.abs(mean - expected).max() < 0.01
    empirical = np.sort(np.linalg.eigvalsh((mean + mean.T) / 2))[-2]
    assert empirical == pytest.approx(0.963388, abs=0.002)


@pytest.mark.parametrize(
    ("spec", "n"),
    [
        ({"name": "random_edge", "graph": {"name": "ring"}}, 8),
        ({"name": "random_matching"}, 16),
    ],
)
def test_randomized_gossip_runs_the_sampled_matrices_and_keeps_the_mean(spec, n):
    """The chunk mixes with exactly the W_t drawn under round_key(seed, t, TOPOLOGY)."""
    topo = build_topology(spec, n, 0)
    alg = _pure()
    chunk, data = _chunk(alg, topo), quadratic_data(np.ones(n), np.zeros(n))
    x0 = np.random.default_rng(2).standard_normal(n)
    state, x = _init(alg, x0), x0
    for t, W in enumerate(_sampled(topo, 30)):
        state, traffic = chunk(
            state, data, topo.data, jnp.ones((n,)), jnp.int32(t), length=1
        )
        x = W @ x
        np.testing.assert_allclose(state.params, x, rtol=0, atol=1e-13)
        assert abs(float(state.params.mean()) - x0.mean()) < 1e-14
        assert int((traffic.sent > 0).sum()) == int((np.diag(W) < 1).sum())


def test_random_matching_disagreement_decays_at_its_closed_form_rate():
    n, rounds = 16, 1500
    rate = (n - 2) / (2 * (n - 1))  # 7/15
    topo = build_topology({"name": "random_matching"}, n, 0)
    Ws = _sampled(topo, 4000)
    one = np.ones((n, n))
    expected = (np.eye(n) + (one - np.eye(n)) / (n - 1)) / 2
    assert np.abs(Ws.mean(0) - expected).max() < 0.015
    alg = _pure()
    chunk, data = _chunk(alg, topo), quadratic_data(np.ones(n), np.zeros(n))
    y = np.random.default_rng(3).standard_normal((n, 4))
    state, ratios = _init(alg, y), []
    for t in range(rounds):  # E[||y_{t+1}||^2 | y_t] = rate ||y_t||^2 for any y_t
        y = y - y.mean(0)
        y = y / np.linalg.norm(y)
        state = state._replace(params=jnp.asarray(y))
        state, _ = chunk(state, data, topo.data, jnp.ones((n,)), jnp.int32(t), length=1)
        ratios.append(_disagreement(state.params) ** 2)
        y = np.asarray(state.params)
    # per-round ratio: std ~0.18, so the mean of 1500 has std ~0.005
    assert np.mean(ratios) == pytest.approx(rate, abs=0.02)


# -------------------------------------------------------------- push-sum / SGP


def test_push_sum_reaches_the_exact_average_on_el_local_where_dsgd_drifts():
    n, rounds = 16, 150
    topo = build_topology({"name": "el_local", "s": 2}, n, 0)
    assert not topo.info["doubly_stochastic"]
    x0 = np.random.default_rng(4).standard_normal(n)
    push = sgp(quadratic_loss, optax.sgd(0.0))
    state, traffic = _run(push, topo, x0, rounds)
    np.testing.assert_allclose(state.params, x0.mean(), rtol=0, atol=1e-12)
    assert float(state.w.sum()) == pytest.approx(n, abs=1e-12)
    assert float(state.x.sum()) == pytest.approx(x0.sum(), abs=1e-12)
    assert float(state.w.min()) < 0.9 < 1.1 < float(state.w.max())  # weights moved
    # each peer sends (x, w), two float64 numbers, to its s = 2 out-neighbours
    np.testing.assert_array_equal(traffic.sent, np.full((rounds, n), 2 * 128.0))
    plain, _ = _run(_pure(), topo, x0, rounds)
    limit = np.asarray(plain.params)
    assert np.ptp(limit) < 1e-6  # consensus, but on a drifted value
    assert abs(limit.mean() - x0.mean()) > 1e-2


def test_push_sum_equals_plain_gossip_on_the_directed_exponential_graph():
    n, rounds = 16, 6
    topo = build_topology({"name": "exponential"}, n, 0)
    assert topo.info["directed"]
    x0 = np.random.default_rng(5).standard_normal(n)
    push_sum = sgp(quadratic_loss, optax.sgd(0.0), gossip_steps=2)
    push, traffic = _run(push_sum, topo, x0, rounds)
    plain, _ = _run(_pure(gossip_steps=2), topo, x0, rounds)
    np.testing.assert_allclose(push.params, plain.params, rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        plain.params, np.linalg.matrix_power(topo.W, 2 * rounds) @ x0, atol=1e-14
    )
    np.testing.assert_allclose(push.w, 1.0, rtol=0, atol=1e-15)
    # 2 push-sum steps per round, (x, w) to each of the 4 out-neighbours
    np.testing.assert_array_equal(traffic.sent, np.full((rounds, n), 2 * 4 * 128.0))


def test_sgp_on_the_quadratic_converges_near_the_optimum_like_dsgd():
    n, lr, rounds = 8, 0.1, 400
    topo = build_topology({"name": "exponential"}, n, 0)
    x_star = np.sum(A8 * B8) / np.sum(A8)  # 44 / 12
    push, _ = _run(
        sgp(quadratic_loss, optax.sgd(lr)), topo, np.zeros(n), rounds, A8, B8
    )
    ref, _ = _run(
        dsgd(quadratic_loss, optax.sgd(lr)), topo, np.zeros(n), rounds, A8, B8
    )
    np.testing.assert_allclose(push.params, ref.params, rtol=0, atol=1e-12)
    # the ATC fixed point x = W (x - lr A (x - b)): (I - W + lr W A) x = lr W A b
    W, A = topo.W, np.diag(A8)
    fixed = np.linalg.solve(np.eye(n) - W + lr * W @ A, lr * W @ A @ B8)
    np.testing.assert_allclose(push.params, fixed, rtol=0, atol=1e-9)
    assert abs(float(push.params.mean()) - x_star) < 0.03  # lr = 0.1 bias: -0.0196


# ------------------------------------------------------- registry and scenario


def _build(spec):
    return ALGORITHMS.build(
        spec, "algorithm", loss_fn=quadratic_loss, optimizer=lambda s: optax.sgd(0.1)
    )


def test_registry_entries_and_their_errors():
    alg = _build(
        {"name": "multi_gossip", "gossip_steps": 4, "chebyshev": True, "rho": 0.5}
    )
    assert alg.rounds.gossip_steps == 4 and alg.resend is not None
    alg = _build({"name": "sgp", "local_steps": 2})
    assert (alg.exchange, alg.uses_topology, alg.rounds.local_steps) == (
        "gather",
        True,
        2,
    )
    with pytest.raises(ScenarioError, match="rho") as e:
        _build({"name": "multi_gossip", "chebyshev": True})
    assert e.value.path == "algorithm.rho"
    with pytest.raises(ScenarioError) as e:
        _build({"name": "multi_gossip", "gossip_steps": 0})
    assert e.value.path == "algorithm.gossip_steps"
    with pytest.raises(ScenarioError) as e:
        TOPOLOGIES.build(
            {"name": "random_edge", "graph": {"name": "exponential"}},
            "topology",
            n=16,
            seed=0,
        )
    assert e.value.path == "topology.graph"


def test_epidemic_scenario_is_dsgd_over_el_oracle():
    from workbench.scenario import algorithm_parts, load_scenario

    sc = load_scenario(REPO / "scenarios" / "epidemic.yaml")
    assert sc.topology["name"] == "el_oracle" and sc.data.name == "digits"
    name, kwargs, _ = algorithm_parts(sc)
    assert name == "dsgd"
    topo = build_topology(dict(sc.topology), sc.peers, sc.seed)
    assert topo.info["doubly_stochastic"]
