"""Sparsifiers: send k of the d coordinates as (value, index) pairs.

bits = k * (value bits + ceil(log2 d)), d the number of elements compressed
together (the whole message, or one leaf with ``per_tensor``). ``fraction``
sets k = max(1, round(fraction * d)) for each compressed vector; an explicit
``k`` is clipped to d (per leaf with ``per_tensor``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.compression.base import (
    COMPRESSORS,
    Compressor,
    index_bits,
    require,
    stateless,
    value_bits,
)
from workbench.compression.feedback import maybe_feedback


def count(d: int, k: int | None, fraction: float | None) -> int:
    """Number of coordinates kept out of ``d`` (1 <= result <= d)."""
    kept = k if fraction is None else round(fraction * d)
    return max(1, min(d, kept))


def _check(k: int | None, fraction: float | None) -> None:
    require(
        (k is None) != (fraction is None), "k", "give exactly one of k and fraction"
    )
    require(k is None or k >= 1, "k", f"must be >= 1, got {k}")
    require(
        fraction is None or 0 < fraction <= 1,
        "fraction",
        f"must be in (0, 1], got {fraction}",
    )


def topk_vector(v: jax.Array, k: int) -> jax.Array:
    """Keeps the k entries of largest |v_i| (ties: lowest index), zeros the rest."""
    _, idx = jax.lax.top_k(jnp.abs(v), k)
    return jnp.zeros_like(v).at[idx].set(v[idx])


def randomk_vector(v: jax.Array, key, k: int, unbiased: bool) -> jax.Array:
    """Keeps k entries drawn uniformly without replacement; scaled by d/k if
    ``unbiased`` (then E[out] = v)."""
    d = v.shape[0]
    idx = jax.random.choice(key, d, (k,), replace=False)
    vals = v[idx] * (d / k) if unbiased else v[idx]
    return jnp.zeros_like(v).at[idx].set(vals.astype(v.dtype))


@COMPRESSORS.register("topk")
def topk(
    k: int | None = None,
    fraction: float | None = None,
    *,
    per_tensor: bool = False,
    error_feedback: bool = False,
) -> Compressor:
    """Top-k by magnitude. bits = k * (value bits + ceil(log2 d))."""
    _check(k, fraction)

    def fn(v, key):
        del key
        kept = count(v.shape[0], k, fraction)
        bits = kept * (value_bits(v.dtype) + index_bits(v.shape[0]))
        return topk_vector(v, kept), bits

    c = stateless(fn, per_tensor)
    return maybe_feedback(c, error_feedback)


@COMPRESSORS.register("randomk")
def randomk(
    k: int | None = None,
    fraction: float | None = None,
    *,
    unbiased: bool = False,
    shared_seed: bool = False,
    per_tensor: bool = False,
    error_feedback: bool = False,
) -> Compressor:
    """Random-k; ``unbiased`` scales the kept values by d/k.

    bits = k * (value bits + ceil(log2 d)); with ``shared_seed`` the receivers
    regenerate the indices from the round key they share with the sender, so
    bits = k * value bits.
    """
    _check(k, fraction)

    def fn(v, key):
        d = v.shape[0]
        kept = count(d, k, fraction)
        bits = kept * (value_bits(v.dtype) + (0 if shared_seed else index_bits(d)))
        return randomk_vector(v, key, kept, unbiased), bits

    c = stateless(fn, per_tensor)
    return maybe_feedback(c, error_feedback)
