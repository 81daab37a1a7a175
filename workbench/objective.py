"""Per-peer objectives: masked softmax cross-entropy with an optional L2 term,
and masked evaluation sums over a padded set of examples."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Batch(NamedTuple):
    x: jax.Array  # (b, *input_shape)
    y: jax.Array  # (b,) int32
    mask: jax.Array  # (b,) float32: 1 for real examples, 0 for padding


def make_loss(apply_fn: Callable, l2: float = 0.0):
    """Returns ``loss_fn(params, batch) -> scalar`` (mean CE over real examples)."""

    def loss_fn(params, batch: Batch):
        logits = apply_fn(params, batch.x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.y)
        loss = jnp.sum(ce * batch.mask) / jnp.maximum(jnp.sum(batch.mask), 1.0)
        if l2:
            sq = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
            loss = loss + 0.5 * l2 * sq
        return loss

    return loss_fn


class EvalSums(NamedTuple):
    loss: jax.Array  # () summed cross-entropy over real examples
    correct: jax.Array  # () number of correct predictions
    count: jax.Array  # () number of real examples


def eval_sums(apply_fn: Callable, params, x, y, mask, batch_size: int) -> EvalSums:
    """Sums loss/correct/count over ``x`` (m, ...) in batches; m % batch_size == 0."""
    m = x.shape[0]
    xb = x.reshape((m // batch_size, batch_size) + x.shape[1:])
    yb = y.reshape(m // batch_size, batch_size)
    mb = mask.reshape(m // batch_size, batch_size)

    def body(acc, chunk):
        xs, ys, ms = chunk
        logits = apply_fn(params, xs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys)
        hit = (jnp.argmax(logits, -1) == ys).astype(jnp.float32)
        return EvalSums(
            acc.loss + jnp.sum(ce * ms),
            acc.correct + jnp.sum(hit * ms),
            acc.count + jnp.sum(ms),
        ), None

    zero = EvalSums(jnp.zeros(()), jnp.zeros(()), jnp.zeros(()))
    sums, _ = jax.lax.scan(body, zero, (xb, yb, mb))
    return sums
