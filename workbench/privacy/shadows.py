"""Shadow models: S models trained at once, vmapped over a stacked shadow axis.

This is the "centralized proxy" shadow: one model trained
on the victim's data pool with each example's membership toggled. Membership
is a per-example LOSS WEIGHT, so every shadow runs the same shapes and the S
axis is a plain ``jax.vmap``: each step draws ``batch_size`` indices uniformly
(i.i.d., with replacement, fresh per shadow and step) among the examples with a
nonzero weight (one argsort per shadow puts them first) and minimizes

    sum_b w_b ce_b / sum_b w_b,   w = in_mask[batch]

so every step has a full batch of IN examples, as the peers it stands in for
do (drawing from all m examples instead leaves half a batch for complementary
masks, and lr 0.1 with momentum 0.9 then diverges on the digits). The
steps are one ``lax.scan`` inside one jit; ``chunk`` runs the S axis in chunks
(``lax.map(batch_size=chunk)``) to bound memory. The functions and the
optimizer are static jit arguments: pass the same objects again (not fresh
lambdas) to reuse the compiled program.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.privacy.lira import lira_statistic

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]  # (params, x (b, ...)) -> (b, c)
InitFn = Callable[[jax.Array], PyTree]  # key -> params of one model


def complementary_masks(key: jax.Array, shadows: int, m: int) -> jax.Array:
    """(S, m) bool: every example IN for exactly S / 2 shadows.

    Shadow 2i draws m // 2 examples at random; shadow 2i + 1 is its complement.

    Raises:
      ValueError: if ``shadows`` is odd or not positive.
    """
    if shadows <= 0 or shadows % 2:
        raise ValueError(
            f"complementary masks need an even shadow count, got {shadows}"
        )

    def pair(k):  # (m,): a uniformly random half of the examples
        return jax.random.permutation(k, m) < m // 2

    first = jax.vmap(pair)(jax.random.split(key, shadows // 2))  # (S / 2, m)
    return jnp.stack([first, ~first], axis=1).reshape(shadows, m)


def _weighted_loss(apply_fn: ApplyFn, params, x, y, w) -> jax.Array:
    """sum w ce / sum w for a batch x (b, ...), y (b,), w (b,); 0 if sum w = 0."""
    ce = optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y)
    total = jnp.sum(w)
    return jnp.sum(w * ce) / jnp.where(total > 0, total, 1.0)


def _train_one(apply_fn, init_fn, optimizer, steps, batch_size, x, y, key, weights):
    """One shadow: params after ``steps`` optax steps on weights (m,) -> params."""
    init_key, data_key = jax.random.split(key)
    params = init_fn(init_key)
    grad = jax.grad(partial(_weighted_loss, apply_fn))
    order = jnp.argsort(weights <= 0, stable=True)  # (m,) IN examples first
    count = jnp.maximum(jnp.sum(weights > 0), 1)

    def step(carry, t):
        params, opt_state = carry
        pick = jax.random.randint(
            jax.random.fold_in(data_key, t), (batch_size,), 0, count
        )
        idx = order[pick]
        g = grad(params, x[idx], y[idx], weights[idx])
        updates, opt_state = optimizer.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    carry = (params, optimizer.init(params))
    (params, _), _ = jax.lax.scan(step, carry, jnp.arange(steps))
    return params


@partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "init_fn",
        "steps",
        "batch_size",
        "optimizer",
        "chunk",
    ),
)
def train_shadows(
    apply_fn: ApplyFn,
    init_fn: InitFn,
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    in_mask: jax.Array,
    *,
    steps: int,
    batch_size: int,
    optimizer: optax.GradientTransformation,
    chunk: int | None = None,
) -> PyTree:
    """Trains S models at once, shadow i on the examples where in_mask[i].

    Args:
      apply_fn: ``(params, x (b, ...)) -> logits (b, c)`` of one model.
      init_fn: ``key -> params`` of one model (each shadow its own key).
      key: the shadows' keys are ``fold_in(key, i)``.
      x: (m, ...) the data pool; y: (m,) int labels.
      in_mask: (S, m) bool or float per-example loss weights.
      steps: optax steps per shadow (0: the untrained initialization).
      batch_size: examples drawn (with replacement) from all m per step.
      optimizer: the optax transformation every shadow uses.
      chunk: run the S axis ``chunk`` shadows at a time (None: all at once).

    Returns:
      params with leaves (S, ...).
    """
    train = partial(_train_one, apply_fn, init_fn, optimizer, steps, batch_size, x, y)
    keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.arange(in_mask.shape[0]))
    weights = in_mask.astype(jnp.float32)
    if chunk is None:
        return jax.vmap(train)(keys, weights)
    return jax.lax.map(lambda a: train(*a), (keys, weights), batch_size=chunk)


class ShadowOutputs(NamedTuple):
    """What the attacks read from S models on m labelled examples."""

    phi: jax.Array  # (S, m) LiRA statistic log p_y - log sum_{j != y} p_j
    p_true: jax.Array  # (S, m) probability of the true label
    log_p: jax.Array  # (S, m) log p_y = -cross-entropy (the threshold attack)


@partial(jax.jit, static_argnames=("apply_fn", "batch"))
def shadow_outputs(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array, y: jax.Array, batch: int
) -> ShadowOutputs:
    """Every model's outputs on every example, ``batch`` examples at a time.

    Args:
      apply_fn: ``(params, x (b, ...)) -> logits (b, c)`` of one model.
      params: leaves (S, ...), e.g. from :func:`train_shadows`.
      x: (m, ...) examples; y: (m,) int labels.
      batch: examples per evaluation step (bounds memory to S x batch logits).

    Returns:
      :class:`ShadowOutputs`, each field (S, m).
    """

    def example(xy):  # one example through all S models -> three (S,)
        xi, yi = xy
        logits = jax.vmap(apply_fn, (0, None))(params, xi[None])[:, 0]  # (S, c)
        labels = jnp.broadcast_to(yi, logits.shape[:1])
        log_p = jnp.take_along_axis(
            jax.nn.log_softmax(logits), labels[:, None], axis=-1
        )[:, 0]
        return lira_statistic(logits, labels), jnp.exp(log_p), log_p

    out = jax.lax.map(example, (x, y), batch_size=batch)  # fields (m, S)
    return ShadowOutputs(*(field.T for field in out))
