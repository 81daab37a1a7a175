"""Convolution and max-pooling that are fast under ``jax.vmap`` over peers on CPU.

Vmapping a convolution over peers that each own their weights turns it into an
XLA grouped convolution, which the CPU backend runs several times slower than a
loop of per-peer convolutions; and inside a loop body (``lax.scan``: the local
steps, the engine's rounds) the kernel gradient of ``lax.conv`` is ~20x slower
than outside. Written as patches + matmul, the same layer vmaps into a batched
matmul and is indifferent to loops: the engine's D-SGD local step of the
FEMNIST CNN takes ~0.8 s / ~3 s for 16 / 64 peers, against ~21 s / ~66 s with
``lax.conv`` (measured on a 2-core CPU). :class:`Conv` keeps the parameters of
``flax.linen.Conv`` (names, shapes, initializers: the same key gives the same
values), so the implementation is a pure speed choice.

The patches are built from shifted (strided) slices concatenated on the
channel axis, so their gradient is a sum of pads, not a convolution.

:func:`max_pool_2x2` is ``nn.max_pool`` with a 2x2 window and stride 2 written
as reshape + max: its gradient is a select, where ``reduce_window``'s is a
``select_and_scatter`` that the CPU backend runs slowly (CNN step 1.2-1.7x
faster in a per-peer loop, ~1.15x vmapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ConvImpl = Literal["auto", "xla", "matmul"]
Padding = str | Sequence[tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: ConvImpl) -> str:
    """``"auto"`` is ``"matmul"`` on the CPU backend and ``"xla"`` elsewhere."""
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return impl


def _pads(
    spatial: tuple[int, int],
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: Padding,
) -> list[tuple[int, int]]:
    """``(low, high)`` padding of each spatial axis, as ``lax.conv`` pads."""
    if isinstance(padding, str):
        return jax.lax.padtype_to_pads(spatial, window, strides, padding)
    return [tuple(p) for p in padding]


def conv_xla(x: jax.Array, kernel: jax.Array, strides, padding: Padding):
    """``lax.conv_general_dilated`` on ``x`` (*batch, H, W, C), as ``nn.Conv``."""
    batch = x.shape[:-3]
    x = x.reshape((-1, *x.shape[-3:]))
    y = jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=_DIMS
    )
    return y.reshape((*batch, *y.shape[1:]))


def patches(x: jax.Array, window, strides, padding: Padding) -> jax.Array:
    """Image patches from shifted slices, concatenated on the channel axis.

    Columns first (``kw`` slices of the padded image), then rows (``kh`` slices
    of those): the same patches as one concatenation of ``kh * kw`` slices,
    which XLA compiles ~3x slower.

    Args:
      x: images, shape ``(*batch, H, W, C)``.
      window: ``(kh, kw)``.
      strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.

    Returns:
      ``(*batch, Ho, Wo, kh * kw * C)`` with features in ``(i, j, c)`` order,
      the order of a ``(kh, kw, C, O)`` kernel reshaped to ``(kh * kw * C, O)``.
    """
    (kh, kw), (sh, sw) = window, strides
    pads = _pads(x.shape[-3:-1], window, strides, padding)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [*pads, (0, 0)])
    ho = (x.shape[-3] - kh) // sh + 1
    wo = (x.shape[-2] - kw) // sw + 1
    cols = [x[..., :, j : j + sw * (wo - 1) + 1 : sw, :] for j in range(kw)]
    x = jnp.concatenate(cols, axis=-1)  # (*batch, H + pads, Wo, kw * C)
    rows = [x[..., i : i + sh * (ho - 1) + 1 : sh, :, :] for i in range(kh)]
    return jnp.concatenate(rows, axis=-1)


def conv_matmul(x: jax.Array, kernel: jax.Array, strides, padding: Padding):
    """The convolution of :func:`conv_xla` as patches @ reshaped kernel.

    ``x`` may have any number of leading batch axes; under ``jax.vmap`` over
    kernels the product becomes a batched matmul.
    """
    kh, kw, cin, cout = kernel.shape
    pads = _pads(x.shape[-3:-1], (kh, kw), strides, padding)
    if (kh, kw) == (1, 1) and not np.any(pads):  # a pointwise map: no patches
        cols = x[..., :: strides[0], :: strides[1], :]
    else:
        cols = patches(x, (kh, kw), strides, pads)
    return jnp.einsum("...k,ko->...o", cols, kernel.reshape(kh * kw * cin, cout))


CONV_IMPLS = {"xla": conv_xla, "matmul": conv_matmul}


class Conv(nn.Module):
    """A 2-D convolution with the parameters of ``flax.linen.Conv``.

    Attributes:
      features: output channels.
      kernel_size: ``(kh, kw)``.
      strides: ``(sh, sw)`` or one int for both.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
      use_bias: add a learned bias.
      impl: ``"xla"`` (``lax.conv_general_dilated``), ``"matmul"`` (patches +
        matmul), or ``"auto"`` (matmul on CPU, xla elsewhere).
      kernel_init: initializer of ``kernel`` (kh, kw, C, features).
      bias_init: initializer of ``bias`` (features,).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int | tuple[int, int] = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    impl: ConvImpl = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Convolves ``x`` (*batch, H, W, C) -> (*batch, Ho, Wo, features)."""
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)
        strides = self.strides
        if isinstance(strides, int):
            strides = (strides, strides)
        conv = CONV_IMPLS[resolve_conv_impl(self.impl)]
        y = conv(x, kernel, tuple(strides), self.padding)
        if bias is not None:
            y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        return y


def max_pool_2x2(x: jax.Array, padding: str = "SAME") -> jax.Array:
    """2x2 max-pool with stride 2 of ``x`` (*batch, H, W, C), as ``nn.max_pool``.

    ``"SAME"`` pads an odd side with one ``-inf`` row/column at the end (as
    ``lax.reduce_window`` does); ``"VALID"`` drops it. Where a window holds
    several equal maxima, the gradient is split among them (``reduce_window``
    gives it all to the first); after a ReLU, such ties are zeros, whose
    gradient the ReLU sets to zero anyway.
    """
    h, w = x.shape[-3:-1]
    if padding == "SAME":
        pads = [(0, 0)] * (x.ndim - 3) + [(0, h % 2), (0, w % 2), (0, 0)]
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
    else:
        x = x[..., : h - h % 2, : w - w % 2, :]
    *batch, h, w, c = x.shape
    return x.reshape((*batch, h // 2, 2, w // 2, 2, c)).max(axis=(-4, -2))
