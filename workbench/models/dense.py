"""Fully connected models: multinomial logistic regression and an MLP."""

from __future__ import annotations

import flax.linen as nn
import jax
from pydantic import PositiveInt

from workbench.models.base import MODELS, flatten_batch, unflatten_batch


class MLP(nn.Module):
    """Flatten, ``len(hidden)`` ReLU dense layers, then a dense layer to logits.

    With ``hidden=()`` this is multinomial logistic regression.

    Attributes:
      num_classes: number of output logits.
      input_shape: shape of one example (any rank; flattened).
      hidden: widths of the hidden layers.
    """

    num_classes: int
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, batch = flatten_batch(x, self.input_shape)
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return unflatten_batch(nn.Dense(self.num_classes)(x), batch)


@MODELS.register("logistic")
def logistic(num_classes: int, input_shape: tuple) -> nn.Module:
    """Multinomial logistic regression: flatten + one dense layer."""
    return MLP(num_classes, tuple(input_shape))


@MODELS.register("mlp")
def mlp(
    num_classes: int, input_shape: tuple, hidden: tuple[PositiveInt, ...] = (64,)
) -> nn.Module:
    """Multi-layer perceptron with ReLU hidden layers of widths ``hidden``."""
    return MLP(num_classes, tuple(input_shape), tuple(hidden))
