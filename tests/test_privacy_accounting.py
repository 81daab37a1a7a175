"""Numbers of workbench.privacy.accounting: closed forms and hand computations."""

import json
import math

import dp_accounting
import numpy as np
import optax
import pytest
import scipy.sparse as sp

from workbench.algorithms.gossip import chebyshev_bound, multi_gossip
from workbench.privacy.accounting import (
    DEFAULT_ORDERS,
    gaussian_epsilon,
    gossip_matrices,
    local_rdp,
    network_epsilon,
    pairwise_network_rdp,
    privacy_report,
    rdp_to_dp,
)

ORDERS = np.array([1.5, 2.0, 3.0, 5.0, 8.0, 16.0, 32.0, 64.0])


def ring(n):
    """(n, n) ring with weight 1/3 on self and both neighbours."""
    W = np.zeros((n, n))
    for i in range(n):
        W[i, [i - 1, i, (i + 1) % n]] = 1.0 / 3.0
    return W


# 3-node path 0 - 1 - 2, Metropolis-Hastings weights, and its square by hand.
PATH = np.array([[2, 1, 0], [1, 1, 1], [0, 1, 2]]) / 3.0
PATH_SQUARED = np.array([[5, 3, 1], [3, 3, 3], [1, 3, 5]]) / 9.0


def improved_conversion(orders, rdp, delta):
    """Canonne-Kamath-Steinke 2020 Prop. 12 / Asoodeh et al. 2020, by hand:

    eps = min_a rdp_a + log(1 - 1/a) - (log(delta) + log(a)) / (a - 1).
    """
    eps = (
        rdp
        + np.log1p(-1.0 / orders)
        - (np.log(delta) + np.log(orders)) / (orders - 1.0)
    )
    return float(eps.min())


def test_local_rdp_closed_form():
    assert local_rdp(2.0, 3.0, sensitivity=0.5) == pytest.approx(3.0 * 0.25 / 8.0)


def test_gaussian_composition_is_closed_form_rdp():
    z, k = 1.7, 40
    accountant = dp_accounting.rdp.RdpAccountant(list(ORDERS))
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k)
    )
    np.testing.assert_allclose(accountant.rdp, k * ORDERS / (2 * z**2), rtol=1e-12)


def test_gaussian_epsilon_is_improved_conversion_by_hand():
    z, k, delta = 2.0, 50, 1e-5
    rdp = k * ORDERS / (2 * z**2)
    expected = improved_conversion(ORDERS, rdp, delta)
    basic = float(np.min(rdp + np.log(1 / delta) / (ORDERS - 1)))
    assert expected < basic - 0.1  # the test tells the two conversions apart
    got = gaussian_epsilon(z, k, delta, orders=ORDERS)
    assert got == pytest.approx(expected, rel=1e-6)
    assert rdp_to_dp(dict(zip(ORDERS, rdp, strict=True)), delta) == pytest.approx(
        expected, rel=1e-6
    )
    assert rdp_to_dp(rdp, delta, ORDERS) == pytest.approx(expected, rel=1e-6)


def test_subsampling_lowers_gaussian_epsilon():
    full = gaussian_epsilon(1.0, 100, 1e-5)
    sampled = gaussian_epsilon(1.0, 100, 1e-5, sampling_rate=0.01)
    assert 0 < sampled < 0.2 * full


def test_gossip_matrices_plain_are_powers():
    M1, M2 = gossip_matrices(sp.csr_array(PATH), 2)
    np.testing.assert_allclose(M1, PATH, atol=1e-15)
    np.testing.assert_allclose(M2, PATH_SQUARED, atol=1e-15)


def test_pairwise_rdp_by_hand_on_path():
    sigma, alpha, delta_ = 2.0, 3.0, 0.5
    L = alpha * delta_**2 / (2 * sigma**2)
    # T = 1: the only message is the noisy model itself (M_0 = I): neighbours
    # get the local bound, the far end nothing
    one = pairwise_network_rdp(PATH, sigma, 1, alpha, sensitivity=delta_)
    assert one[0, 1] == one[1, 0] == one[1, 2] == pytest.approx(L, rel=1e-12)
    assert one[0, 2] == one[2, 0] == 0.0
    two = pairwise_network_rdp(PATH, sigma, 2, alpha, sensitivity=delta_)
    # t = 1 (M_1 = W) adds, for 0 -> 2: N(2) = {1, 2}; w=1: (1/9)/(3/9); w=2: 0.
    assert two[0, 2] == pytest.approx(L / 3, rel=1e-12)
    three = pairwise_network_rdp(PATH, sigma, 3, alpha, sensitivity=delta_)
    # t = 2 (W^2) adds w=1: (3/9)^2/(27/81) = 1/3 and w=2: (1/9)^2/(35/81) = 1/35.
    assert three[0, 2] == pytest.approx(L * (1 / 3 + 1 / 3 + 1 / 35), rel=1e-12)
    # 1 -> 0 at T = 2: w=0 (step 1): (1/9)/(5/9) plus step 0's 1: capped
    assert two[1, 0] == pytest.approx(L, rel=1e-12)


def test_complete_graph_reaches_and_keeps_the_local_cap():
    n, sigma, alpha = 5, 1.5, 4.0
    J = np.full((n, n), 1.0 / n)
    L = alpha / (2 * sigma**2)
    # T=1: every pair's sum is n * (1/n^2) / (1/n) = 1, exactly the cap.
    np.testing.assert_allclose(pairwise_network_rdp(J, sigma, 1, alpha), L, rtol=1e-12)
    # T=3: the uncapped sum is 3; the cap holds it at the local bound.
    np.testing.assert_allclose(pairwise_network_rdp(J, sigma, 3, alpha), L, rtol=1e-12)


def test_complete_graph_network_epsilon_equals_local_dp():
    n, sigma, rounds, delta = 4, 3.0, 20, 1e-6
    J = np.full((n, n), 1.0 / n)
    eps = network_epsilon(J, sigma, 1, rounds, delta)
    np.testing.assert_allclose(eps, gaussian_epsilon(sigma, rounds, delta), rtol=1e-12)


def test_ring_leakage_is_symmetric_and_circulant():
    n = 8
    eps = pairwise_network_rdp(ring(n), 1.0, 3, 2.0)
    np.testing.assert_allclose(eps, eps.T, atol=1e-14)
    np.testing.assert_allclose(eps, np.roll(eps, (1, 1), axis=(0, 1)), atol=1e-14)


@pytest.mark.parametrize("cheb", [False, True])
def test_more_steps_never_decrease_leakage(cheb):
    rng = np.random.default_rng(0)
    for W in (ring(10), PATH, _random_mh(rng, 9)):
        rho = np.linalg.norm(W - 1 / len(W), 2) if cheb else None
        prev = np.zeros_like(W)
        for T in range(1, 8):
            eps = pairwise_network_rdp(W, 0.7, T, 2.0, chebyshev_rho=rho)
            assert np.all(eps >= prev - 1e-14)
            assert np.all(eps <= 2.0 / (2 * 0.7**2) * (1 + 1e-12))
            prev = eps


def _random_mh(rng, n):
    """Metropolis-Hastings W of a connected random graph (ring plus chords)."""
    A = (ring(n) > 0) | (rng.random((n, n)) < 0.3)
    A = np.triu(A, 1)
    A = A | A.T
    d = A.sum(1)
    W = np.where(A, 1.0 / (1 + np.maximum.outer(d, d)), 0.0)
    return W + np.diag(1 - W.sum(1))


def test_chebyshev_matrices_follow_the_gossip_recursion():
    n, T = 10, 6
    W = ring(n)
    rho = float(np.linalg.norm(W - 1 / n, 2))
    Ms = gossip_matrices(W, T, chebyshev_rho=rho)
    x0 = np.random.default_rng(1).normal(size=n).astype(np.float32)
    alg = multi_gossip(
        lambda p, b: 0.0, optax.sgd(0.0), gossip_steps=T, chebyshev=True, rho=rho
    )
    state = alg.init(x0, None)
    for t, M in enumerate(Ms, start=1):
        np.testing.assert_allclose(M.sum(1), 1.0, atol=1e-12)
        state = alg.combine(state, W.astype(np.float32) @ state.params, None)
        np.testing.assert_allclose(state.params, M @ x0, rtol=1e-5, atol=1e-5)
        gap = np.linalg.norm(M - 1 / n, 2)
        assert gap == pytest.approx(chebyshev_bound(rho, t), rel=1e-9)


def test_ring_two_steps_reach_only_two_hops():
    n, sigma, rounds, delta = 8, 1.0, 10, 1e-5
    hops = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    hops = np.minimum(hops, n - hops)
    one = network_epsilon(sp.csr_array(ring(n)), sigma, 1, rounds, delta)
    assert np.all(one[hops >= 2] == 0.0)  # one message: the neighbours only
    eps = network_epsilon(sp.csr_array(ring(n)), sigma, 2, rounds, delta)
    assert np.all(eps[hops >= 3] == 0.0)
    orders = np.asarray(DEFAULT_ORDERS)
    ok = orders > 1.01

    def converted(fraction):  # rounds x fraction of the local RDP, by hand
        rdp = rounds * fraction * orders / (2 * sigma**2)
        return improved_conversion(orders[ok], rdp[ok], delta)

    # neighbours received the noisy model: the local bound
    np.testing.assert_allclose(eps[hops == 1], converted(1.0), rtol=1e-6)
    np.testing.assert_allclose(one[hops == 1], converted(1.0), rtol=1e-6)
    # two hops: step 1's W row of the middle node, (1/9) / (3/9) = 1/3
    np.testing.assert_allclose(eps[hops == 2], converted(1 / 3), rtol=1e-6)


def test_privacy_report_summarises_edges_and_non_edges():
    n, sigma, rounds, delta = 16, 1.0, 100, 1e-5
    report = privacy_report(ring(n), sigma, 2, rounds, delta)
    json.dumps(report)
    eps = network_epsilon(ring(n), sigma, 2, rounds, delta)
    assert report["edges"]["count"] == 2 * n
    assert report["non_edges"]["count"] == n * (n - 3)
    assert report["edges"]["mean"] == pytest.approx(eps[0, 1], rel=1e-12)
    assert report["non_edges"]["max"] == pytest.approx(eps[0, 2], rel=1e-12)
    assert report["non_edges"]["mean"] == pytest.approx(
        eps[0, 2] * 2 / (n - 3), rel=1e-12
    )
    local = gaussian_epsilon(sigma, rounds, delta)
    assert report["local_epsilon"] == pytest.approx(local, rel=1e-12)
    # edges received the noisy model: the local bound; non-edges less
    assert report["edges"]["mean"] == pytest.approx(local, rel=1e-6)
    assert 0 < report["non_edges"]["max"] < local
    assert math.isfinite(local)
