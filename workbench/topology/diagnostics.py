"""Spectral and graph diagnostics of mixing matrices (stored in Topology.info).

Static W: ``rho = ||W - J||_2`` (= max(|l_2|, |l_n|) for symmetric doubly
stochastic W), ``spectral_gap = 1 - rho``, ``lambda2_I_minus_W`` (the second
smallest eigenvalue (real part) of I - W), ``diameter``, in-degree stats,
``num_edges``, ``doubly_stochastic``, ``symmetric``. The consensus bound is
``||X_t - J X_0|| <= rho^t ||X_0 - J X_0||``.

Dynamic: ``contraction`` is the geometric mean over sampled rounds of
``||(I-J) W_t x|| / ||(I-J) x||`` on fresh Gaussian x; ``round_rho_mean`` the
mean of ``||W_t - J||_2`` (n <= 256); periodic ones add ``product_rho`` =
``||W_{T-1} ... W_0 - J||_2``. Their ``rho`` is the effective per-round rate:
``product_rho ** (1/period)`` when periodic, else ``contraction``.

Random samplers are diagnosed on rounds 0..R-1 drawn with the run's own keys,
``workbench.keys.round_key(seed, t, TOPOLOGY)``: the same W_t the run mixes with.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.sparse.csgraph import shortest_path

from workbench.comm import circulant_offsets
from workbench.comm.host import to_host
from workbench.keys import TOPOLOGY, round_key

DENSE_EIG_MAX_N = 1024  # dense eigen-decomposition up to this n
DIAMETER_MAX_N = 4096  # all-pairs BFS up to this n
ROUND_RHO_MAX_N = 256  # per-round spectral norms of dynamic W_t up to this n
ATOL = 1e-9


def spectral(W) -> tuple[float, float | None]:
    """(rho = ||W - J||_2, lambda_2(I - W)) by FFT, dense or sparse methods."""
    n = W.shape[0]
    if n == 1:
        return 0.0, 0.0
    offsets = circulant_offsets(W)
    if offsets is not None:  # circulant: eigenvalues are a DFT of the first row
        row = np.zeros(n)
        for s, w in offsets.items():
            row[s] = w
        lam = np.fft.fft(row)[1:]
        return float(np.abs(lam).max()), float(np.sort((1 - lam).real)[0])
    symmetric = abs(W - W.T).max() <= ATOL
    if n <= DENSE_EIG_MAX_N:
        return _dense_spectral(W.toarray(), symmetric)
    return _sparse_spectral(W, symmetric)


def _dense_spectral(W: np.ndarray, symmetric: bool) -> tuple[float, float]:
    n = W.shape[0]
    if symmetric:
        rho = np.abs(np.linalg.eigvalsh(W - 1.0 / n)).max()
        lam = np.linalg.eigvalsh(np.eye(n) - W)
    else:
        rho = np.linalg.norm(W - 1.0 / n, 2)
        lam = np.sort(np.linalg.eigvals(np.eye(n) - W).real)
    return float(rho), float(lam[1])


def _sparse_spectral(W, symmetric: bool) -> tuple[float, float | None]:
    n = W.shape[0]
    op = spla.LinearOperator(
        (n, n),
        matvec=lambda x: W @ x - np.mean(x),
        rmatvec=lambda x: W.T @ x - np.mean(x),
        dtype=np.float64,
    )
    if not symmetric:
        return float(spla.svds(op, k=1, return_singular_vectors=False)[0]), None
    rho = abs(spla.eigsh(op, k=1, which="LM", return_eigenvectors=False)[0])
    top = spla.eigsh(sp.csr_array(W), k=2, which="LA", return_eigenvectors=False)
    return float(rho), float(1.0 - np.sort(top)[0])


def _pattern(W) -> sp.csr_array:
    A = sp.csr_array(W, copy=True)
    A.setdiag(0)
    A.eliminate_zeros()
    return A


def diameter(W) -> int | None:
    """Hop diameter of W's communication graph (None when too large)."""
    A, n = _pattern(W), W.shape[0]
    if n == 1:
        return 0
    directed = abs(A - A.T).max() > 0
    if circulant_offsets(W) is not None:  # vertex-transitive: one BFS suffices
        dist = shortest_path(A, directed=directed, unweighted=True, indices=[0])
    elif n <= DIAMETER_MAX_N:
        dist = shortest_path(A, directed=directed, unweighted=True)
    else:
        return None
    return int(dist.max()) if np.isfinite(dist).all() else None


def degree_stats(degree: np.ndarray) -> dict:
    return {
        "degree_min": int(degree.min()),
        "degree_mean": float(degree.mean()),
        "degree_max": int(degree.max()),
    }


def static_info(W) -> dict:
    """Diagnostics of one mixing matrix (dense or sparse), JSON-serializable."""
    W = sp.csr_array(W)
    A = _pattern(W)
    symmetric_pattern = abs(A - A.T).max() == 0 if A.nnz else True
    rho, lam2 = spectral(W)
    return {
        "rho": rho,
        "spectral_gap": 1.0 - rho,
        "lambda2_I_minus_W": lam2,
        "diameter": diameter(W),
        **degree_stats(np.diff(A.indptr)),
        "num_edges": int(A.nnz // 2 if symmetric_pattern else A.nnz),
        "directed": not symmetric_pattern,
        "doubly_stochastic": bool(np.allclose(W.sum(axis=0), 1.0, atol=ATOL)),
        "symmetric": bool(abs(W - W.T).max() <= ATOL) if W.nnz else True,
    }


def product_rho(Ws) -> float:
    """||W_{T-1} ... W_0 - J||_2 (dense up to 1024 peers, else power iteration)."""
    n = Ws[0].shape[0]
    if n <= DENSE_EIG_MAX_N:
        P = np.eye(n)
        for W in Ws:
            P = W @ P
        return float(np.linalg.norm(P - 1.0 / n, 2))
    x = np.random.default_rng(0).standard_normal(n)
    norm = 0.0
    for _ in range(50):  # power iteration on A^T A, A = P - J
        x = x / np.linalg.norm(x)
        y = x - x.mean()
        for W in Ws:
            y = W @ y
        y = y - y.mean()
        norm = float(np.linalg.norm(y))
        for W in reversed(Ws):
            y = W.T @ y
        x = y - y.mean()
    return norm


def round_keys(seed: int, rounds: int) -> jax.Array:
    """(rounds,) topology keys of rounds 0..rounds-1, as the run draws them."""
    ts = jnp.arange(rounds, dtype=jnp.int32)
    return jax.vmap(lambda t: round_key(seed, t, TOPOLOGY))(ts)


@functools.partial(jax.jit, static_argnums=0)
def _rounds(at, data, keys):
    """Kernel arrays of rounds 0..len(keys)-1, stacked."""
    ts = jnp.arange(keys.shape[0], dtype=jnp.int32)
    return jax.vmap(at, in_axes=(None, 0, 0))(data, ts, keys)


def sample_rounds(at, data, n: int, seed: int, rounds: int) -> list[sp.csr_array]:
    """Host matrices W_0 .. W_{rounds-1} of a jittable ``at``.

    Round t is ``at(data, t, round_key(seed, t, TOPOLOGY))``: the run's W_t.
    """
    stacked = jax.device_get(_rounds(at, data, round_keys(seed, rounds)))
    return [
        to_host(jax.tree.map(lambda a, t=t: a[t], stacked), n) for t in range(rounds)
    ]


def dynamic_info(Ws, seed: int = 0) -> dict:
    """Per-round diagnostics of a sequence of mixing matrices (host side)."""
    n = Ws[0].shape[0]
    rng = np.random.default_rng(seed)
    ratios, degrees = [], []
    for W in Ws:
        x = rng.standard_normal(n)
        x -= x.mean()
        y = W @ x
        ratios.append(np.linalg.norm(y - y.mean()) / max(np.linalg.norm(x), 1e-300))
        degrees.append(np.diff(_pattern(W).indptr))
    log = np.log(np.maximum(ratios, 1e-30))
    info = {"contraction": float(np.exp(log.mean())), "round_rho_mean": None}
    if n <= ROUND_RHO_MAX_N:
        norms = [np.linalg.norm(W.toarray() - 1.0 / n, 2) for W in Ws]
        info["round_rho_mean"] = float(np.mean(norms))
    return {**info, **degree_stats(np.concatenate(degrees))}


def doubly_stochastic(Ws) -> bool:
    return all(np.allclose(W.sum(axis=0), 1.0, atol=ATOL) for W in Ws)
