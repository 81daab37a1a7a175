"""Closed-form results on the quadratic of tests/quadratic.py, through the jitted core.

f_i(x) = (a_i/2)(x - b_i)^2 with exact gradients: the consensus rate of ring mixing,
D-SGD's fixed-point bias (ATC and CTA) and consensus error, FedAvg's client drift
with tau local steps, and D-SGD on the complete graph equal to centralized SGD.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.quadratic import ring_weights, run
from workbench.algorithms import dsgd, fedavg
from workbench.comm import from_matrix, mix

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_consensus_rate_ring16():
    n = 16
    x0 = jnp.cos(2 * jnp.pi * jnp.arange(n) / n)
    arrays = from_matrix("roll", ring_weights(n))
    x = x0
    for _ in range(50):
        x = mix(arrays, x)
    assert float(jnp.linalg.norm(x) / jnp.linalg.norm(x0)) == pytest.approx(
        0.0739775, abs=1e-7
    )
    assert abs(float(x.mean() - x0.mean())) < 1e-14


@pytest.mark.parametrize(("order", "mean"), [("atc", 3.672414), ("cta", 3.651515)])
def test_dsgd_fixed_point_bias(order, mean):
    make = functools.partial(dsgd, order=order)
    x = run(make, ring_weights(8), A, B, lr=0.1, rounds=3000).params
    assert float(x.mean()) == pytest.approx(mean, abs=1e-6)
    if order == "atc":
        assert float(jnp.max(jnp.abs(x - 44 / 12))) == pytest.approx(1.064, abs=1e-3)


def test_dsgd_consensus_error_homogeneous_curvature():
    x = run(dsgd, ring_weights(8), np.ones(8), B, lr=0.1, rounds=3000).params
    assert float(x.mean()) == pytest.approx(3.5, abs=1e-9)
    assert float(jnp.mean((x - x.mean()) ** 2)) == pytest.approx(0.29333, abs=1e-5)


@pytest.mark.parametrize(
    ("tau", "fixed"), [(1, 3.666667), (5, 3.621465), (20, 3.529473)]
)
def test_fedavg_drift(tau, fixed):
    state = run(fedavg, ring_weights(8), A, B, lr=0.1, rounds=1500, local_steps=tau)
    c = 1 - (1 - 0.1 * A) ** tau
    assert float(np.sum(c * B) / np.sum(c)) == pytest.approx(fixed, abs=1e-6)
    np.testing.assert_allclose(np.asarray(state.params), fixed, atol=1e-6)


def test_complete_graph_dsgd_equals_centralized_sgd():
    """D-SGD (ATC) on the complete graph == one model trained on the summed batch."""
    n, lr, rounds = 8, 0.05, 40
    W = np.full((n, n), 1 / n)
    x = run(dsgd, W, A, B, lr=lr, rounds=rounds, kernel="mean").params
    ref = 0.0
    for _ in range(rounds):
        ref = ref - lr * np.mean(A * (ref - B))
    np.testing.assert_allclose(np.asarray(x), ref, rtol=1e-12)
