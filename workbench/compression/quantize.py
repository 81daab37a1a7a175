"""Quantizers: every coordinate is sent as a short fixed-width code.

Codes are counted at a fixed width (no entropy coding); a scalar side value (a
norm, a scale, min or max) counts SCALAR_BITS = 32. The sign and threshold
quantizers are biased and come with error feedback by default.

    identity        d * dtype bits (each leaf its own dtype)
    qsgd(s)         32 + d * (1 + ceil(log2(s + 1)))
    uniform(L)      2 * 32 + d * ceil(log2 L)
    scaled_sign     32 + d
    threshold_2bit  2 * d          (tau is a shared hyperparameter, not sent)
    threshold_1bit  2 * 32 + d
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.compression.base import (
    COMPRESSORS,
    SCALAR_BITS,
    Compressor,
    bits_dtype,
    code_bits,
    compute_dtype,
    require,
    stateless,
    uncompressed_bits,
)
from workbench.compression.feedback import maybe_feedback


@COMPRESSORS.register("identity")
def identity() -> Compressor:
    """No compression: x_hat = x, bits = sum over leaves of size * dtype bits."""

    def init(template):
        del template
        return ()

    def apply(x, state, key):
        del key
        return x, state, jnp.asarray(uncompressed_bits(x), bits_dtype())

    return Compressor(init, apply)


def qsgd_vector(v: jax.Array, key, levels: int) -> jax.Array:
    """QSGD (arXiv 1610.02132): ||v|| sign(v_i) xi_i / s, unbiased.

    xi_i = l + Bernoulli(r_i - l), r_i = s |v_i| / ||v||, l = floor(r_i).
    """
    w = v.astype(compute_dtype(v.dtype))
    norm = jnp.linalg.norm(w)
    r = jnp.clip(levels * jnp.abs(w) / jnp.where(norm > 0, norm, 1), 0, levels)
    low = jnp.floor(r)
    up = jax.random.uniform(key, w.shape, w.dtype) < r - low
    level = low + up.astype(w.dtype)
    return (norm * jnp.sign(w) * level / levels).astype(v.dtype)


@COMPRESSORS.register("qsgd")
def qsgd(
    levels: int = 1, *, per_tensor: bool = False, error_feedback: bool = False
) -> Compressor:
    """QSGD with ``levels`` = s. bits = 32 (norm) + d * (1 + ceil(log2(s + 1))):
    a sign bit and a fixed-width level in 0..s per coordinate."""
    require(levels >= 1, "levels", f"must be >= 1, got {levels}")

    def fn(v, key):
        bits = SCALAR_BITS + v.shape[0] * (1 + code_bits(levels + 1))
        return qsgd_vector(v, key, levels), bits

    return maybe_feedback(stateless(fn, per_tensor), error_feedback)


def uniform_vector(v: jax.Array, levels: int) -> jax.Array:
    """Deterministic uniform quantization on [min, max] with ``levels`` points.

    code = round((v - min) / (max - min) * (L - 1)) in 0..L-1, decoded as
    min + code * (max - min) / (L - 1); codes 0 and L - 1 decode to min and max
    exactly. A constant vector (max == min) decodes to itself.
    """
    w = v.astype(compute_dtype(v.dtype))
    lo, hi = jnp.min(w), jnp.max(w)
    span = hi - lo
    scaled = (w - lo) / jnp.where(span > 0, span, 1) * (levels - 1)
    code = jnp.clip(jnp.round(scaled), 0, levels - 1)
    t = code / (levels - 1)
    # the ends are selected, not computed: XLA may rewrite the arithmetic
    out = jnp.where(code == levels - 1, hi, lo * (1 - t) + hi * t)
    return jnp.where(code == 0, lo, out).astype(v.dtype)


@COMPRESSORS.register("uniform")
def uniform(
    levels: int = 256, *, per_tensor: bool = False, error_feedback: bool = False
) -> Compressor:
    """Uniform min/max quantization. bits = 2 * 32 + d * ceil(log2 L)."""
    require(levels >= 2, "levels", f"must be >= 2, got {levels}")

    def fn(v, key):
        del key
        bits = 2 * SCALAR_BITS + v.shape[0] * code_bits(levels)
        return uniform_vector(v, levels), bits

    return maybe_feedback(stateless(fn, per_tensor), error_feedback)


def scaled_sign_vector(p: jax.Array) -> jax.Array:
    """(||p||_1 / d) sign(p), with sign(0) = +1 so that one bit suffices."""
    scale = jnp.mean(jnp.abs(p.astype(compute_dtype(p.dtype))))
    return jnp.where(p >= 0, scale, -scale).astype(p.dtype)


@COMPRESSORS.register("scaled_sign")
def scaled_sign(*, per_tensor: bool = False, error_feedback: bool = True) -> Compressor:
    """Scaled sign, by default with error feedback (EF-SGD, arXiv 1901.09847).

    bits = 32 (the scale) + d (one sign bit each).
    """

    def fn(v, key):
        del key
        return scaled_sign_vector(v), SCALAR_BITS + v.shape[0]

    return maybe_feedback(stateless(fn, per_tensor), error_feedback)


def threshold_2bit_vector(r: jax.Array, threshold: float) -> jax.Array:
    """+tau where r >= tau, -tau where r <= -tau, 0 elsewhere (MXNet 2-bit)."""
    tau = jnp.asarray(threshold, r.dtype)
    return jnp.where(r >= tau, tau, jnp.where(r <= -tau, -tau, jnp.zeros_like(r)))


@COMPRESSORS.register("threshold_2bit")
def threshold_2bit(
    threshold: float = 0.5, *, per_tensor: bool = False, error_feedback: bool = True
) -> Compressor:
    """MXNet-style 2-bit quantizer, by default with the residual r <- r + x;
    q = Q(r); r <- r - q. bits = 2 * d (the threshold tau is known to all)."""
    require(threshold > 0, "threshold", f"must be > 0, got {threshold}")

    def fn(v, key):
        del key
        return threshold_2bit_vector(v, threshold), 2 * v.shape[0]

    return maybe_feedback(stateless(fn, per_tensor), error_feedback)


def threshold_1bit_vector(r: jax.Array, threshold: float) -> jax.Array:
    """One bit per entry (r_i > threshold), decoded as the mean of the entries
    on the same side (1-bit SGD, Seide et al. 2014, when threshold = 0).

    The decoded vector has the sum of r on each side, so with error feedback
    the new residual sums to zero on each side.
    """
    w = r.astype(compute_dtype(r.dtype))
    up = w > threshold
    n_up = jnp.sum(up)
    n_down = w.shape[0] - n_up
    mean_up = jnp.sum(jnp.where(up, w, 0)) / jnp.maximum(n_up, 1)
    mean_down = jnp.sum(jnp.where(up, 0, w)) / jnp.maximum(n_down, 1)
    return jnp.where(up, mean_up, mean_down).astype(r.dtype)


@COMPRESSORS.register("threshold_1bit")
def threshold_1bit(
    threshold: float = 0.0, *, per_tensor: bool = False, error_feedback: bool = True
) -> Compressor:
    """1-bit quantizer with two reconstruction values, by default with the
    residual. bits = 2 * 32 (the two means) + d (one bit each)."""

    def fn(v, key):
        del key
        return threshold_1bit_vector(v, threshold), 2 * SCALAR_BITS + v.shape[0]

    return maybe_feedback(stateless(fn, per_tensor), error_feedback)
