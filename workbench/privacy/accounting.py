"""Privacy accounting for Muffliato: pairwise network DP next to local DP.

Host-side numpy; every RDP composition and RDP -> (epsilon, delta) conversion
goes through ``dp_accounting``.

Muffliato (Cyffers et al. 2022, arXiv 2206.05091) adds Gaussian noise
N(0, sigma^2 I) once to each x_u and then runs T gossip steps,
x^t = M_t (x^0 + noise) with M_0 = I and M_t = W^t (plain) or P_t(W)
(Chebyshev). The T exchanges of a round send x^0, ..., x^{T-1}: node v sees the
values of its closed neighbourhood N(v) at steps t = 0..T-1 (step 0 is the
noisy model itself, so a neighbour of u gets the local-DP bound), and the
Renyi DP of order alpha that u's data leaks to v in one round (pairwise network
DP) is

    eps_{u->v}(alpha) = min(1, sum_{t=0}^{T-1} sum_{w in N(v)}
                               (M_t)_{wu}^2 / ||(M_t)_{w,:}||^2)
                        * alpha Delta^2 / (2 sigma^2),

capped at the local-DP bound alpha Delta^2 / (2 sigma^2): everything v sees is
post-processing of the noisy x_u + noise_u. RDP is linear in alpha here and
composes additively over rounds; the conversion to (epsilon, delta) takes the
minimum over orders (dp_accounting's ``compute_epsilon``, the improved
conversion of Canonne-Kamath-Steinke 2020 / Asoodeh et al. 2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dp_accounting
import numpy as np
import scipy.sparse as sp
from dp_accounting.rdp import rdp_privacy_accountant

from workbench.algorithms.gossip import chebyshev_omegas

DEFAULT_ORDERS: tuple[float, ...] = tuple(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


def _dense(W) -> np.ndarray:
    """(n, n) float64 dense copy of a numpy or scipy sparse mixing matrix."""
    W = W.toarray() if sp.issparse(W) else W
    return np.asarray(W, np.float64)


def gossip_matrices(
    W, steps: int, chebyshev_rho: float | None = None, omegas=None
) -> list:
    """Effective mixing M_1 .. M_T after t = 1..T gossip steps.

    Plain gossip: M_t = W^t. Chebyshev (``chebyshev_rho`` = ||W - J||_2): the
    recursion of ``workbench.algorithms.gossip``, M_0 = I, M_1 = W,
    M_{k+1} = omega_k W M_k + (1 - omega_k) M_{k-1}, i.e. M_t = P_t(W).
    ``omegas`` (>= T,) gives the recursion's omegas directly (Muffliato's
    constant omega); it takes precedence over ``chebyshev_rho``.

    Returns:
      A list of ``steps`` (n, n) float64 arrays.
    """
    W = _dense(W)
    if omegas is None:
        omegas = (
            np.ones(steps)
            if chebyshev_rho is None
            else chebyshev_omegas(chebyshev_rho, steps)
        )
    prev, cur, out = np.eye(len(W)), np.eye(len(W)), []
    for omega in list(omegas)[:steps]:  # the first ``steps`` of a longer schedule
        prev, cur = cur, omega * (W @ cur) + (1.0 - omega) * prev
        out.append(cur)
    return out


def closed_neighbourhood(W) -> np.ndarray:
    """(n, n) bool A[v, w]: w in N(v), i.e. w == v or v receives from w (W_vw != 0)."""
    W = _dense(W)
    return (W != 0) | np.eye(len(W), dtype=bool)


def local_rdp(sigma: float, alpha: float, sensitivity: float = 1.0) -> float:
    """RDP of order alpha of the Gaussian mechanism: alpha Delta^2 / (2 sigma^2)."""
    return alpha * sensitivity**2 / (2.0 * sigma**2)


def _leakage(W, steps: int, chebyshev_rho: float | None, omegas=None) -> np.ndarray:
    """(n, n) S[u, v] = sum_{t<T} sum_{w in N(v)} (M_t)_{wu}^2 / ||(M_t)_{w,:}||^2.

    The T messages of a round are M_0 = I (the noisy model) to M_{T-1}.
    """
    A = closed_neighbourhood(W).astype(np.float64)
    S = np.zeros(A.shape)
    sent = [np.eye(len(A))] + gossip_matrices(W, steps - 1, chebyshev_rho, omegas)
    for M in sent:
        R = M**2 / np.sum(M**2, axis=1, keepdims=True)  # R[w, u]
        S += (A @ R).T
    return S


def pairwise_network_rdp(
    W,
    sigma: float,
    steps: int,
    alpha: float,
    sensitivity: float = 1.0,
    chebyshev_rho: float | None = None,
    omegas=None,
) -> np.ndarray:
    """Pairwise network RDP of one Muffliato round (Cyffers et al. 2022).

    eps[u, v] = min(1, sum_{t=0}^{T-1} sum_{w in N(v)} (M_t)_{wu}^2 / ||(M_t)_{w,:}||^2)
                * alpha Delta^2 / (2 sigma^2),

    with M_t = W^t (or P_t(W), Chebyshev), M_0 = I, and N(v) the closed neighbourhood of
    v in W's graph (``closed_neighbourhood``). The diagonal (u's leakage to
    itself) carries no meaning.

    Args:
      W: (n, n) mixing matrix, numpy or scipy sparse; row v = weights v gives.
      sigma: std of the Gaussian noise added once per round.
      steps: gossip steps T per round.
      alpha: Renyi order.
      sensitivity: l2 sensitivity Delta of x_u to u's data.
      chebyshev_rho: ||W - J||_2 for Chebyshev gossip; None for plain W^t.
      omegas: (T,) the gossip recursion's omegas, instead of ``chebyshev_rho``.

    Returns:
      (n, n) float64 eps[u, v], the RDP of u's data at node v.
    """
    S = _leakage(W, steps, chebyshev_rho, omegas)
    return np.minimum(S, 1.0) * local_rdp(sigma, alpha, sensitivity)


def rdp_to_dp(
    rdp: Mapping[float, float] | Sequence[float] | np.ndarray,
    delta: float,
    orders: Sequence[float] | np.ndarray | None = None,
) -> float:
    """(epsilon, delta)-DP epsilon from RDP, minimised over orders.

    Args:
      rdp: {order: rdp} or the RDP values at ``orders``.
      delta: target delta.
      orders: the orders of ``rdp`` when it is not a mapping.
    """
    if isinstance(rdp, Mapping):
        orders, rdp = list(rdp.keys()), list(rdp.values())
    eps, _ = rdp_privacy_accountant.compute_epsilon(
        np.asarray(orders, np.float64), np.asarray(rdp, np.float64), delta
    )
    return float(eps)


def gaussian_epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    sampling_rate: float = 1.0,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> float:
    """Epsilon of ``rounds`` (Poisson-subsampled) Gaussian mechanisms (DP-SGD).

    ``noise_multiplier`` = sigma / Delta; composed with dp_accounting's RDP
    accountant.
    """
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    accountant = dp_accounting.rdp.RdpAccountant(list(orders))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def network_epsilon(
    W,
    sigma: float,
    steps: int,
    rounds: int,
    delta: float,
    sensitivity: float = 1.0,
    orders: Sequence[float] = DEFAULT_ORDERS,
    chebyshev_rho: float | None = None,
    omegas=None,
) -> np.ndarray:
    """(n, n) pairwise (epsilon, delta)-DP eps[u, v] after ``rounds`` rounds.

    The RDP at order a is ``rounds * pairwise_network_rdp(..., alpha=a)``,
    linear in a; each distinct pair value is converted once with ``rdp_to_dp``.
    """
    orders = np.asarray(orders, np.float64)
    per_order = rounds * pairwise_network_rdp(
        W, sigma, steps, 1.0, sensitivity, chebyshev_rho, omegas
    )
    values, inverse = np.unique(per_order, return_inverse=True)
    eps = np.array([rdp_to_dp(c * orders, delta, orders) for c in values])
    return eps[inverse].reshape(per_order.shape)


def _summary(values: np.ndarray) -> dict:
    """count / mean / max of a 1-D array, JSON-ready (None when empty)."""
    if values.size == 0:
        return {"count": 0, "mean": None, "max": None}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }


def privacy_report(
    W,
    sigma: float,
    steps: int,
    rounds: int,
    delta: float,
    sensitivity: float = 1.0,
    orders: Sequence[float] = DEFAULT_ORDERS,
    chebyshev_rho: float | None = None,
    omegas=None,
) -> dict:
    """JSON-ready summary: pairwise network epsilon over edges and non-edges.

    Pairs are ordered u != v; (u, v) is an edge when W_uv or W_vu is nonzero.
    ``local_epsilon`` is the local-DP epsilon of the same noise (the cap).
    """
    eps = network_epsilon(
        W, sigma, steps, rounds, delta, sensitivity, orders, chebyshev_rho, omegas
    )
    A = closed_neighbourhood(W)
    off = ~np.eye(len(A), dtype=bool)
    edges = (A | A.T) & off
    return {
        "n": len(A),
        "sigma": float(sigma),
        "steps": int(steps),
        "rounds": int(rounds),
        "delta": float(delta),
        "sensitivity": float(sensitivity),
        "chebyshev_rho": None if chebyshev_rho is None else float(chebyshev_rho),
        "local_epsilon": gaussian_epsilon(
            sigma / sensitivity, rounds, delta, 1.0, orders
        ),
        "edges": _summary(eps[edges]),
        "non_edges": _summary(eps[off & ~edges]),
    }
