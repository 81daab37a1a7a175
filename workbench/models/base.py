"""The model registry and the shape helpers every model shares.

Every builder is ``fn(num_classes, input_shape, **options) -> nn.Module``;
``num_classes`` and ``input_shape`` come from the dataset, the options from the
scenario's ``model:`` section. Modules are stateless (only a ``params``
collection, no BatchNorm statistics, no dropout), so the engine can stack
per-peer parameters and ``jax.vmap`` over ``model.apply``.

Modules accept inputs of shape ``(*batch, *input_shape)`` with any number of
leading batch axes (none included, for per-example gradients) and return
logits of shape ``(*batch, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import flax.linen as nn
import jax

from workbench.errors import ScenarioError
from workbench.registry import Registry

MODELS = Registry("model", context=("num_classes", "input_shape"))


def flatten_batch(x: jax.Array, input_shape: tuple[int, ...]):
    """Folds all leading batch axes of ``x`` into one.

    Args:
      x: inputs, shape ``(*batch, *input_shape)``.
      input_shape: shape of one example.

    Returns:
      ``(x, batch)``: ``x`` reshaped to ``(prod(batch), *input_shape)`` and the
      original batch shape, for :func:`unflatten_batch`.
    """
    k = x.ndim - len(input_shape)
    if k < 0 or tuple(x.shape[k:]) != tuple(input_shape):
        raise ValueError(f"inputs of shape {x.shape} do not end in {input_shape}")
    return x.reshape((-1, *input_shape)), x.shape[:k]


def unflatten_batch(y: jax.Array, batch: tuple[int, ...]) -> jax.Array:
    """Restores the batch axes folded by :func:`flatten_batch`: ``(*batch, k)``."""
    return y.reshape((*batch, y.shape[-1]))


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image input; ``(H, W)`` counts as one channel.

    Raises:
      ScenarioError: at ``model.name`` when the inputs are not images.
    """
    shape = tuple(input_shape)
    if len(shape) == 2:
        return (*shape, 1)
    if len(shape) == 3:
        return shape
    raise ScenarioError(
        "model.name",
        f"'{name}' needs image inputs (H, W, C); the dataset gives input_shape "
        f"{shape} (use 'logistic' or 'mlp')",
    )


def check_groups(
    channels: Iterable[int], groups: int, group_size: int | None = None
) -> None:
    """Checks that GroupNorm's groups divide every normalized channel count.

    Raises:
      ScenarioError: at ``model.groups`` (or ``model.group_size``).
    """
    key, value = ("group_size", group_size) if group_size else ("groups", groups)
    bad = sorted({c for c in channels if c % value})
    if bad:
        raise ScenarioError(
            f"model.{key}", f"{value} does not divide the channel counts {bad}"
        )


def group_norm(groups: int, group_size: int | None = None) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or groups of ``group_size`` channels."""
    if group_size:
        return nn.GroupNorm(num_groups=None, group_size=group_size)
    return nn.GroupNorm(num_groups=groups)


def flatten_images(x: jax.Array, input_shape: tuple[int, ...]):
    """Like :func:`flatten_batch`, with a channel axis added to ``(H, W)`` inputs.

    Returns:
      ``(x, batch)`` with ``x`` of shape ``(prod(batch), H, W, C)``.
    """
    x, batch = flatten_batch(x, input_shape)
    return (x[..., None] if x.ndim == 3 else x), batch
