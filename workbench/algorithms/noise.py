"""Noise for the privacy defenses: Gaussian draws shaped like a model, clipping.

Written for one peer (the engine vmaps); keys come from the round's key, so the
noise is the same under every execution strategy. Clipping uses optax's
(per-example) global-norm clipping, never a hand-written one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import LossFn, PyTree
from workbench.objective import Batch


def gaussian_like(key: jax.Array, tree: PyTree, std) -> PyTree:
    """N(0, std^2) for every coordinate of ``tree`` (one key per leaf)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    noise = [
        std * jax.random.normal(k, x.shape, x.dtype)
        for k, x in zip(keys, leaves, strict=False)
    ]
    return jax.tree.unflatten(treedef, noise)


def add_tree(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, a, b)


def clip_norm(tree: PyTree, bound: float) -> PyTree:
    """``tree`` scaled to global L2 norm at most ``bound`` (optax's clipping)."""
    clipped, _ = optax.clip_by_global_norm(bound).update(tree, None)
    return clipped


def private_gradient(
    loss_fn: LossFn, params, batch: Batch, key, clip: float, noise_multiplier: float
):
    """DP-SGD's gradient (Abadi et al. 2016) of one batch: (mean loss, gradient).

    Each example's gradient is clipped to L2 norm ``clip`` (optax's
    ``per_example_global_norm_clip``), the clipped gradients are summed,
    N(0, (noise_multiplier * clip)^2) is added to every coordinate, and the
    sum is divided by the number of real examples. Padding examples (mask 0)
    contribute nothing.
    """

    def one(x, y, m):
        single = Batch(x[None], y[None], m[None])
        return jax.value_and_grad(loss_fn)(params, single)

    losses, grads = jax.vmap(one)(batch.x, batch.y, batch.mask)
    grads = jax.tree.map(
        lambda g: g * batch.mask.reshape((-1,) + (1,) * (g.ndim - 1)), grads
    )
    leaves, treedef = jax.tree.flatten(grads)
    summed, _ = optax.per_example_global_norm_clip(leaves, clip)
    summed = jax.tree.unflatten(treedef, summed)
    if noise_multiplier:  # (0 * inf clip would be NaN)
        summed = add_tree(summed, gaussian_like(key, summed, noise_multiplier * clip))
    count = jnp.maximum(jnp.sum(batch.mask), 1.0)
    loss = jnp.sum(losses * batch.mask) / count
    return loss, jax.tree.map(lambda g: g / count, summed)
