"""Compressors: exact bit counts, hand cases, unbiasedness, residual identities,
and a contract every registry entry meets (shapes, bits, jit, vmap)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.compression import (
    COMPRESSORS,
    ErrorFeedbackState,
    error_feedback,
    identity,
    qsgd,
    randomk,
    scaled_sign,
    threshold_1bit,
    threshold_2bit,
    topk,
    uncompressed_bits,
    uniform,
)
from workbench.errors import ScenarioError

# philox, as the engine uses: compiles much faster than threefry on CPU
KEY = jax.random.key(0, impl="philox2x32")


def _once(c, x, key=KEY):
    """One jitted apply from the initial state: (x_hat, state, bits)."""
    return jax.jit(c.apply)(x, c.init(x), key)


def _vec(d, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=d), dtype)


# --- exact bit counts ------------------------------------------------------

# (compressor, message, bits by hand); d = 20 unless said
BITS = {
    "topk k=2": (topk(k=2), _vec(20), 2 * (32 + 5)),
    "topk d=32": (topk(k=3), _vec(32), 3 * (32 + 5)),
    "topk d=33": (topk(k=3), _vec(33), 3 * (32 + 6)),
    "topk bf16": (topk(k=2), _vec(20, dtype=jnp.bfloat16), 2 * (16 + 5)),
    "topk d=1": (topk(k=1), _vec(1), 32),
    "topk k>d clipped": (topk(k=50), _vec(20), 20 * (32 + 5)),
    "topk per_tensor": (
        topk(fraction=0.1, per_tensor=True),
        {"a": _vec(20), "b": _vec(6)},  # k = 2 of 20, k = max(1, 0.6) = 1 of 6
        2 * (32 + 5) + 1 * (32 + 3),
    ),
    "topk flattened": (
        topk(fraction=0.1),
        {"a": _vec(20), "b": _vec(6)},  # k = round(2.6) = 3 of 26
        3 * (32 + 5),
    ),
    "randomk k=3": (randomk(k=3), _vec(20), 3 * (32 + 5)),
    "randomk shared_seed": (randomk(k=3, shared_seed=True), _vec(20), 3 * 32),
    "qsgd s=1": (qsgd(1), _vec(20), 32 + 20 * (1 + 1)),
    "qsgd s=3": (qsgd(3), _vec(20), 32 + 20 * (1 + 2)),
    "qsgd s=4": (qsgd(4), _vec(20), 32 + 20 * (1 + 3)),
    "qsgd per_tensor": (
        qsgd(1, per_tensor=True),
        {"a": _vec(20), "b": _vec(6)},
        (32 + 20 * 2) + (32 + 6 * 2),
    ),
    "uniform L=16": (uniform(16), _vec(20), 2 * 32 + 20 * 4),
    "uniform L=5": (uniform(5), _vec(20), 2 * 32 + 20 * 3),
    "uniform L=2": (uniform(2), _vec(20), 2 * 32 + 20 * 1),
    "scaled_sign": (scaled_sign(), _vec(20), 32 + 20),
    "scaled_sign per_tensor": (
        scaled_sign(per_tensor=True),
        {"a": _vec(20), "b": _vec(6)},
        (32 + 20) + (32 + 6),
    ),
    "threshold_2bit": (threshold_2bit(0.5), _vec(20), 2 * 20),
    "threshold_1bit": (threshold_1bit(), _vec(20), 2 * 32 + 20),
    "identity": (identity(), _vec(20), 20 * 32),
    "identity mixed dtypes": (
        identity(),
        {"a": _vec(20), "b": _vec(6, dtype=jnp.bfloat16)},
        20 * 32 + 6 * 16,
    ),
    "generic error_feedback": (error_feedback(qsgd(1)), _vec(20), 32 + 20 * 2),
}


@pytest.mark.parametrize("case", BITS)
def test_exact_bits(case):
    c, x, expected = BITS[case]
    _, _, bits = _once(c, x)
    assert bits.shape == () and bits.dtype == jnp.float32
    assert int(bits) == expected


# --- hand cases ------------------------------------------------------------


def test_topk_keeps_the_largest_magnitudes():
    x = jnp.array([0.1, -5.0, 3.0, 0.2, -4.0, 1.0])
    x_hat, state, _ = _once(topk(k=3), x)
    np.testing.assert_array_equal(x_hat, [0.0, -5.0, 3.0, 0.0, -4.0, 0.0])
    assert state == ()


def test_topk_per_tensor_vs_flattened():
    x = {"a": jnp.array([10.0, 9.0, 8.0]), "b": jnp.array([1.0, 0.5, 0.1])}
    flat, _, flat_bits = _once(topk(fraction=1 / 3), x)  # k = 2 of 6
    per, _, per_bits = _once(topk(fraction=1 / 3, per_tensor=True), x)  # 1 of 3
    np.testing.assert_array_equal(flat["a"], [10.0, 9.0, 0.0])
    np.testing.assert_array_equal(flat["b"], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(per["a"], [10.0, 0.0, 0.0])
    np.testing.assert_array_equal(per["b"], [1.0, 0.0, 0.0])
    assert int(flat_bits) == 2 * (32 + 3)
    assert int(per_bits) == 2 * (32 + 2)


def test_randomk_keeps_k_entries_unchanged_or_scaled():
    x = jnp.arange(1.0, 21.0)
    biased, _, _ = _once(randomk(k=5), x)
    kept = np.flatnonzero(np.asarray(biased))
    assert len(kept) == 5
    np.testing.assert_array_equal(np.asarray(biased)[kept], np.asarray(x)[kept])
    unbiased, _, _ = _once(randomk(k=5, unbiased=True), x)  # same key: same indices
    np.testing.assert_allclose(np.asarray(unbiased)[kept], 4.0 * np.asarray(x)[kept])


def test_qsgd_values_on_the_grid():
    x = _vec(50)
    s = 4
    x_hat, _, _ = _once(qsgd(s), x)
    norm = float(jnp.linalg.norm(x))
    level = np.abs(np.asarray(x_hat)) * s / norm
    np.testing.assert_allclose(level, np.round(level), atol=1e-4)
    assert level.max() <= s + 1e-4
    nonzero = np.asarray(x_hat) != 0
    np.testing.assert_array_equal(np.sign(x_hat)[nonzero], np.sign(x)[nonzero])


def test_qsgd_zero_vector():
    x_hat, _, _ = _once(qsgd(2), jnp.zeros(7))
    np.testing.assert_array_equal(x_hat, np.zeros(7))


# --- unbiasedness ----------------------------------------------------------

DRAWS = 20_000
X = jnp.array([1.0, -2.0, 0.5, 3.0, -0.1, 0.0, 2.5, -1.5])


def _draws(c, x, n=DRAWS):
    keys = jax.random.split(jax.random.fold_in(KEY, 42), n)
    draws, _, _ = jax.jit(jax.vmap(c.apply, in_axes=(None, None, 0)))(
        x, c.init(x), keys
    )
    draws = np.asarray(draws, np.float64)
    return draws.mean(0), draws.std(0, ddof=1) / np.sqrt(n)


@pytest.mark.parametrize(
    "c", [qsgd(1), qsgd(3), randomk(k=2, unbiased=True)], ids=["qsgd1", "qsgd3", "rk"]
)
def test_unbiased(c):
    mean, se = _draws(c, X)
    assert se.max() > 0  # the draws do vary
    assert np.all(np.abs(mean - np.asarray(X)) <= 5 * se + 1e-6)


def test_biased_randomk_is_biased():
    mean, se = _draws(randomk(k=2), X)
    x = np.asarray(X)
    big = np.abs(x) >= 0.5
    assert np.all(np.abs(mean - x)[big] > 5 * se[big])
    # E[randomk(x)] = (k / d) x
    assert np.all(np.abs(mean - x * 2 / 8) <= 5 * se + 1e-6)


# --- error feedback --------------------------------------------------------

FEEDBACK = {
    "scaled_sign": scaled_sign(),
    "threshold_2bit": threshold_2bit(0.5),
    "threshold_1bit": threshold_1bit(),
    "topk": topk(k=2, error_feedback=True),
    "generic(qsgd)": error_feedback(qsgd(2)),
    "generic(randomk) per_tensor": error_feedback(randomk(k=2, per_tensor=True)),
}


@pytest.mark.parametrize("name", FEEDBACK)
def test_residual_identity(name):
    c = FEEDBACK[name]
    x0 = {"a": np.asarray(_vec(12, seed=1)).reshape(3, 4), "b": np.asarray(_vec(5, 2))}
    state = c.init(x0)
    assert isinstance(state, ErrorFeedbackState)
    apply = jax.jit(c.apply)
    for t, key in enumerate(jax.random.split(KEY, 3)):
        x = {k: v * (t + 1) for k, v in x0.items()}
        q, new, _ = apply(x, state, key)
        for k in x:  # x + e_old == q + e_new
            np.testing.assert_allclose(
                x[k] + np.asarray(state.residual[k]),
                np.asarray(q[k]) + np.asarray(new.residual[k]),
                rtol=1e-6,
                atol=1e-6,
            )
        state = new
    assert max(np.abs(np.asarray(e)).max() for e in state.residual.values()) > 0


def test_scaled_sign_hand_case():
    x = jnp.array([1.0, -2.0, 3.0, 0.0])
    c = scaled_sign()
    q, state, _ = _once(c, x)
    np.testing.assert_allclose(q, [1.5, -1.5, 1.5, 1.5])  # ||x||_1 / d = 1.5
    np.testing.assert_allclose(state.residual, [-0.5, -0.5, 1.5, -1.5])
    q2, _, _ = jax.jit(c.apply)(x, state, KEY)  # p = x + e = [.5, -2.5, 4.5, -1.5]
    np.testing.assert_allclose(q2, [2.25, -2.25, 2.25, -2.25])


def test_threshold_2bit_hand_case():
    x = jnp.array([0.3, 0.3, -0.7, 0.0])
    c = threshold_2bit(0.5)
    q1, s1, _ = _once(c, x)
    np.testing.assert_allclose(q1, [0.0, 0.0, -0.5, 0.0])
    np.testing.assert_allclose(s1.residual, [0.3, 0.3, -0.2, 0.0], atol=1e-7)
    q2, s2, _ = jax.jit(c.apply)(x, s1, KEY)  # r = [.6, .6, -.9, 0]
    np.testing.assert_allclose(q2, [0.5, 0.5, -0.5, 0.0])
    np.testing.assert_allclose(s2.residual, [0.1, 0.1, -0.4, 0.0], atol=1e-6)


def test_threshold_1bit_hand_case():
    x = jnp.array([1.0, 2.0, -3.0, -1.0])
    q, state, _ = _once(threshold_1bit(), x)
    np.testing.assert_allclose(q, [1.5, 1.5, -2.0, -2.0])  # mean of each side
    e = np.asarray(state.residual)
    assert abs(e[:2].sum()) < 1e-6 and abs(e[2:].sum()) < 1e-6


def test_without_error_feedback_is_stateless():
    x = _vec(10)
    q, state, _ = _once(scaled_sign(error_feedback=False), x)
    assert state == ()
    x = np.asarray(x)
    np.testing.assert_allclose(q, np.abs(x).mean() * np.where(x >= 0, 1, -1))


# --- uniform quantization --------------------------------------------------


@pytest.mark.parametrize("levels", [2, 7, 256])
def test_uniform_bounds(levels):
    x = np.asarray(_vec(1000, seed=3)) * 5 + 1
    x_hat = np.asarray(_once(uniform(levels), x)[0])
    lo, hi = x.min(), x.max()
    assert x_hat[np.argmax(x)] == hi and x_hat[np.argmin(x)] == lo
    assert x_hat.max() == hi and x_hat.min() == lo
    bound = (hi - lo) / (2 * (levels - 1))
    assert np.abs(x_hat - x).max() <= bound * (1 + 1e-5)
    assert len(np.unique(x_hat)) <= levels


def test_uniform_constant_tensor():
    x = jnp.full((3, 5), 2.5)
    x_hat, _, bits = _once(uniform(4), x)
    np.testing.assert_array_equal(x_hat, x)
    assert int(bits) == 64 + 15 * 2


# --- structure, jit, vmap, registry contract -------------------------------


def _model(scale=1.0):
    """Several leaves and dtypes, as numpy arrays (no eager device ops)."""
    r = np.random.default_rng(7)
    return {
        "dense": {
            "w": (scale * r.normal(size=(8, 16))).astype(np.float32),
            "b": (scale * r.normal(size=(16,))).astype(np.float32),
        },
        "head": [(scale * r.normal(size=(4, 4))).astype(jnp.bfloat16)],
    }


# the least a registry entry needs; every entry is built with them
CONTRACT_KWARGS = {"topk": {"fraction": 0.1}, "randomk": {"fraction": 0.1}}


def _variants():
    for name, builder in COMPRESSORS.items():
        kwargs = CONTRACT_KWARGS.get(name, {})
        yield pytest.param(name, kwargs, id=name)
        if "per_tensor" in inspect.signature(builder).parameters:
            per = {**kwargs, "per_tensor": True}
            yield pytest.param(name, per, id=f"{name}-per_tensor")


def _same_arrays(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype


@pytest.mark.parametrize("name, kwargs", list(_variants()))
def test_registry_contract(name, kwargs):
    c = COMPRESSORS.build({"name": name, **kwargs}, "compressor")
    x = _model()
    state = c.init(x)
    traces = []

    @jax.jit
    def apply(x, state, key):
        traces.append(1)
        return c.apply(x, state, key)

    k1, k2 = jax.random.split(KEY)
    x_hat, state1, bits = apply(x, state, k1)
    _same_arrays(x_hat, x)
    _same_arrays(state1, state)
    assert bits.shape == () and bits.dtype == jnp.float32
    full = uncompressed_bits(x)
    if name == "identity":
        assert int(bits) == full
    else:
        assert 0 < int(bits) < full
    x_hat2, state2, bits2 = apply(_model(scale=2.0), state1, k2)
    assert len(traces) == 1
    _same_arrays(x_hat2, x)
    _same_arrays(state2, state)
    assert int(bits2) == int(bits)
    for leaf in jax.tree.leaves(x_hat2):
        assert np.isfinite(np.asarray(leaf, np.float32)).all()


@pytest.mark.parametrize(
    "c",
    [topk(k=3), qsgd(2, per_tensor=True), scaled_sign()],
    ids=["topk", "qsgd-per_tensor", "scaled_sign"],
)
def test_vmap_over_peers_matches_each_peer(c):
    n = 2
    peers = [_model(scale=i + 1.0) for i in range(n)]
    x = jax.tree.map(lambda *a: np.stack(a), *peers)
    keys = jax.random.split(KEY, n)
    state = jax.vmap(c.init)(x)
    x_hat, _, bits = jax.jit(jax.vmap(c.apply))(x, state, keys)
    _same_arrays(x_hat, x)
    assert bits.shape == (n,)
    apply = jax.jit(c.apply)
    for i in range(n):
        yi, _, bi = apply(peers[i], c.init(peers[i]), keys[i])
        for u, v in zip(jax.tree.leaves(yi), jax.tree.leaves(x_hat), strict=True):
            np.testing.assert_allclose(
                np.asarray(u, np.float32), np.asarray(v[i], np.float32), rtol=1e-6
            )
        assert int(bi) == int(bits[i])


def test_registry_validation():
    with pytest.raises(ScenarioError, match="compressor.k"):
        COMPRESSORS.build({"name": "topk"}, "compressor")
    with pytest.raises(ScenarioError, match="compressor.k"):
        COMPRESSORS.build({"name": "randomk", "k": 2, "fraction": 0.1}, "compressor")
    with pytest.raises(ScenarioError, match="compressor.fraction"):
        COMPRESSORS.build({"name": "topk", "fraction": 1.5}, "compressor")
    with pytest.raises(ScenarioError, match="compressor.levels"):
        COMPRESSORS.build({"name": "uniform", "levels": 1}, "compressor")
    with pytest.raises(ScenarioError, match="compressor.fracton"):
        COMPRESSORS.build({"name": "topk", "fracton": 0.1}, "compressor")
    c = COMPRESSORS.build({"name": "topk", "fraction": "0.25"}, "compressor")
    assert int(_once(c, _vec(8))[2]) == 2 * (32 + 3)
