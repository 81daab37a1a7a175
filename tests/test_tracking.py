"""Gradient tracking, D^2 and exact diffusion on the quadratic of tests/quadratic.py.

f_i(x) = (a_i/2)(x - b_i)^2 on the 8-ring with weights 1/3 (lambda_min(W) = -1/3
exactly; D^2 still converges since eta a_i > 0), exact gradients, SGD with
eta = 0.1, X_0 = 0. Everything runs through the real jitted chunk: the stacked
recursions, the tracking invariant, convergence to x* = 44/12 where D-SGD stays
biased, the bytes a round costs, and the registry builders.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import quadratic_data, quadratic_loss, ring_weights, run
from workbench.algorithms import ALGORITHMS, dsgd
from workbench.algorithms.diffusion import d2, exact_diffusion
from workbench.algorithms.tracking import gradient_tracking
from workbench.comm import from_matrix
from workbench.errors import ScenarioError
from workbench.execution import lift
from workbench.rounds import RoundSpec, make_chunk

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)
X_STAR = float(np.sum(A * B) / np.sum(A))  # 44/12
W = ring_weights(8)
LR = 0.1

ALGS = {
    "diging": functools.partial(gradient_tracking, order="cta"),
    "atc_gt": functools.partial(gradient_tracking, order="atc"),
    "d2": d2,
    "exact_diffusion": exact_diffusion,
}


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def grad(x):
    """(n,) the exact local gradients a_i (x_i - b_i)."""
    return A * (x - B)


def stepper(make_alg, lr=LR):
    """(state, advance): ``advance(state, t, length) -> (state, Traffic)`` runs
    rounds t..t+length-1 through the real jitted chunk (one compile per length)."""
    n = len(A)
    alg = make_alg(quadratic_loss, optax.sgd(lr))
    spec = RoundSpec(alg, lambda d, t, k: d, lambda f: lift(f, "vmap", None), n, 1)
    state = jax.vmap(alg.init)(jnp.zeros((n,)), jax.random.split(jax.random.key(0), n))
    chunk = make_chunk(spec, seed=0)
    data, topo, weights = quadratic_data(A, B), from_matrix("dense", W), jnp.ones(n)

    def advance(state, t, length=1):
        return chunk(state, data, topo, weights, jnp.int32(t), length=length)

    return state, advance


def host(tree):
    """A numpy copy (the chunk donates the state it is given)."""
    return jax.tree.map(np.array, tree)


def reference(name, rounds):
    """X_0..X_rounds of the stacked recursion, as written in the module docs."""
    x, xs = np.zeros(8), [np.zeros(8)]
    if name in ("diging", "atc_gt"):
        y, g = grad(x), grad(x)
        for _ in range(rounds):
            if name == "diging":
                x_new = W @ x - LR * y
                g_new = grad(x_new)
                y = W @ y + g_new - g
            else:
                x_new = W @ (x - LR * y)
                g_new = grad(x_new)
                y = W @ (y + g_new - g)
            x, g = x_new, g_new
            xs.append(x)
        return xs
    mix = W if name == "d2" else (np.eye(8) + W) / 2
    x_prev, g_prev = None, None
    for t in range(rounds):
        g = grad(x)
        if t == 0:
            x_new = mix @ (x - LR * g)
        else:
            x_new = mix @ (2 * x - x_prev - LR * (g - g_prev))
        x_prev, g_prev, x = x, g, x_new
        xs.append(x)
    return xs


@functools.cache
def dsgd_run():
    """D-SGD (ATC) after 5000 rounds: (max |x_i - x*|, bits sent (5000, n))."""
    state, advance = stepper(dsgd)
    state, traffic = advance(state, 0, length=5000)
    return float(np.max(np.abs(host(state.params) - X_STAR))), host(traffic.sent)


def check_rounds(name):
    """Six rounds one at a time, then 5000 more, through the real chunk.

    X_t equals the stacked formula to 1e-12; mean(X_{t+1}) = mean(X_t) - eta
    mean(G(X_t)) (the tracker / correction keeps the average on centralized
    gradient descent's path); the bits each round costs, in units of D-SGD's;
    x* reached to 1e-10 where D-SGD stays biased. Returns the per-round states.
    """
    state, advance = stepper(ALGS[name])
    ref = reference(name, 6)
    states, xs = [], [np.zeros(8)]
    biased, dsgd_sent = dsgd_run()
    assert dsgd_sent.shape == (5000, 8)
    np.testing.assert_array_equal(dsgd_sent, 2 * 64)  # 2 neighbours, one float64
    for t in range(6):
        state, traffic = advance(state, t)
        states.append(host(state))
        xs.append(states[-1].params)
        np.testing.assert_allclose(xs[-1], ref[t + 1], rtol=0, atol=1e-12)
        expected_mean = xs[t].mean() - LR * grad(xs[t]).mean()
        assert abs(xs[-1].mean() - expected_mean) < 1e-12
        vectors = 2 if name in ("diging", "atc_gt") else 1
        np.testing.assert_array_equal(traffic.sent[0], vectors * dsgd_sent[t])
    state, _ = advance(state, 6, length=5000)
    err = float(np.max(np.abs(host(state.params) - X_STAR)))
    assert err < 1e-10
    assert biased > 1e-3  # D-SGD's fixed point: consensus error ~1 on this ring
    assert err < 1e-8 * biased
    return states


@pytest.mark.parametrize("name", ["diging", "atc_gt"])
def test_gradient_tracking(name):
    """Besides ``check_rounds`` (two vectors per round: CTA one (x, y) message,
    ATC the tracker then the model): after every round the tracker's mean is the
    mean of the current gradients (to 1e-12), the stored gradient is the one at
    the round's X_t, and Y_0 = G_0 (ATC discards the first mixed tracker; CTA
    stores W Y_0, the part of Y_1 known before G_1)."""
    states = check_rounds(name)
    x_before = np.zeros(8)
    for t, s in enumerate(states):
        np.testing.assert_allclose(s.grad, grad(x_before), rtol=0, atol=1e-12)
        assert abs(s.y.mean() - grad(x_before).mean()) < 1e-12
        np.testing.assert_array_equal(s.step, t + 1)
        x_before = s.params
    y0 = grad(np.zeros(8))
    expected = y0 if name == "atc_gt" else W @ y0
    np.testing.assert_allclose(states[0].y, expected, rtol=0, atol=1e-15)
    assert np.std(states[-1].y) > 1e-3  # trackers differ: the check is not vacuous


@pytest.mark.parametrize("name", ["d2", "exact_diffusion"])
def test_diffusion(name):
    """``check_rounds`` (one vector per round, like D-SGD); D^2 converges on the
    ring with lambda_min(W) = -1/3 (the eta a_i > 0 gradient term damps the
    marginal mode)."""
    check_rounds(name)


def test_local_steps():
    """Tracking-corrected local steps (CTA) keep x* as the fixed point (eta tau
    within DIGing's stable range); D^2 / exact diffusion with tau plain local
    steps converge to FedAvg's drifted point sum c_i b_i / sum c_i,
    c_i = 1 - (1 - eta a_i)^tau (tests/test_closed_form.py: 3.621465 for tau 5)."""
    tau = 5
    gt = functools.partial(gradient_tracking, order="cta", steps=tau)
    x = run(gt, W, A, B, lr=0.02, rounds=3000, local_steps=tau).params
    assert float(jnp.max(jnp.abs(x - X_STAR))) < 1e-10
    c = 1 - (1 - LR * A) ** tau
    drifted = float(np.sum(c * B) / np.sum(c))
    x = run(exact_diffusion, W, A, B, lr=LR, rounds=1500, local_steps=tau).params
    np.testing.assert_allclose(np.asarray(x), drifted, rtol=0, atol=1e-9)
    assert abs(drifted - 3.621465) < 1e-6


def build(spec):
    return lambda loss_fn, opt: ALGORITHMS.build(
        spec, "algorithm", loss_fn=loss_fn, optimizer=lambda steps: optax.sgd(LR)
    )


def test_registry_builders():
    atc = build({"name": "gradient_tracking", "order": "atc"})(quadratic_loss, None)
    assert atc.rounds.gossip_steps == 2 and atc.resend is not None
    assert build({"name": "diging"})(quadratic_loss, None).rounds.gossip_steps == 1
    x = run(
        build({"name": "gradient_tracking", "order": "atc"}), W, A, B, lr=LR, rounds=600
    ).params
    assert float(jnp.max(jnp.abs(x - X_STAR))) < 1e-10
    for name in ("diging", "d2", "exact_diffusion"):
        alg = build({"name": name, "local_steps": 3})(quadratic_loss, None)
        assert alg.rounds.local_steps == 3 and alg.exchange == "average"
    with pytest.raises(ScenarioError, match="algorithm.local_steps"):
        build({"name": "gradient_tracking", "order": "atc", "local_steps": 2})(
            quadratic_loss, None
        )
    with pytest.raises(ScenarioError, match="algorithm.ordr"):
        build({"name": "gradient_tracking", "ordr": "atc"})(quadratic_loss, None)
    with pytest.raises(ScenarioError, match="algorithm.order"):
        build({"name": "gradient_tracking", "order": "both"})(quadratic_loss, None)
