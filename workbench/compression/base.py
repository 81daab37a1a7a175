"""The compressor interface: pure per-peer functions with explicit state.

A compressor is written for ONE peer's message (the engine vmaps it):

    init(template)           -> state                (() when stateless)
    apply(x, state, key)     -> x_hat, state, bits

``x_hat`` is what the receivers decode: same structure, shapes and dtypes as
``x``. ``bits`` is a () float array (float32; float64 under
``jax_enable_x64``): the exact number of bits the message would take on the
wire. Every built-in compressor's count depends only on shapes, so it is
computed in Python integers and is exact below 2**24 bits in float32 (above,
its relative error is at most 6e-8).

Most compressors act on one vector. ``stateless(fn, per_tensor)`` lifts a
vector function to a pytree: by default the whole message is flattened into one
vector with ``ravel_pytree`` (one global top-k over all leaves; leaves of mixed
dtypes are promoted to a common one, whose width the values count); with
``per_tensor=True`` each leaf is compressed on its own and the bits are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, NoReturn

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from workbench.errors import ScenarioError
from workbench.registry import Registry

PyTree = Any
Bits = int | jax.Array  # Python int when the count depends on shapes only
VectorFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, Bits]]
# (v (d,), key) -> (v_hat (d,) like v, bits); never called with d == 0

COMPRESSORS = Registry("compressor")
PATH = "compressor"  # scenario section, for messages

SCALAR_BITS = 32  # a float32 side value (a norm, a scale, min/max)


class Compressor(NamedTuple):
    init: Callable[[PyTree], PyTree]  # template (one peer's message) -> state
    apply: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, jax.Array]]
    # (x, state, key) -> (x_hat like x, new state, bits: () float)


def bits_dtype():
    """Dtype of bit counts: float32, or float64 when jax_enable_x64 is on."""
    return jnp.result_type(float)


def value_bits(dtype) -> int:
    """Bits of one value of ``dtype`` (32 for float32)."""
    return jnp.dtype(dtype).itemsize * 8


def index_bits(d: int) -> int:
    """ceil(log2 d): bits of one index among ``d`` positions (0 when d <= 1)."""
    return max(d - 1, 0).bit_length()


def code_bits(levels: int) -> int:
    """ceil(log2 levels): bits of a fixed-width code with ``levels`` values."""
    return max(levels - 1, 0).bit_length()


def uncompressed_bits(tree: PyTree) -> int:
    """Bits of ``tree`` sent as it is: sum over leaves of size * dtype bits."""
    return sum(leaf.size * value_bits(leaf.dtype) for leaf in jax.tree.leaves(tree))


def zeros_like(template: PyTree) -> PyTree:
    """Zeros shaped like ``template`` (arrays or ``jax.ShapeDtypeStruct``)."""
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), template)


def stateless(fn: VectorFn, per_tensor: bool) -> Compressor:
    """Lifts a vector function to a stateless pytree compressor.

    Args:
      fn: ``(v (d,), key) -> (v_hat (d,), bits)`` on one flat vector.
      per_tensor: compress each leaf separately (keys split per leaf, bits
        summed) instead of the flattened whole message.
    """

    def init(template):
        del template
        return ()

    def apply(x, state, key):
        if per_tensor:
            leaves, treedef = jax.tree.flatten(x)
            keys = jax.random.split(key, len(leaves)) if leaves else ()
            outs = [
                _on_vector(fn, a.reshape(-1), k)
                for a, k in zip(leaves, keys, strict=True)
            ]
            x_hat = treedef.unflatten(
                [v.reshape(a.shape) for (v, _), a in zip(outs, leaves, strict=True)]
            )
            bits = sum(b for _, b in outs)
        else:
            flat, unravel = ravel_pytree(x)
            v, bits = _on_vector(fn, flat, key)
            x_hat = unravel(v)
        return x_hat, state, jnp.asarray(bits, bits_dtype())

    return Compressor(init, apply)


def _on_vector(fn: VectorFn, v: jax.Array, key) -> tuple[jax.Array, Bits]:
    if v.size == 0:
        return v, 0
    return fn(v, key)


def compute_dtype(dtype):
    """At least float32, for norms and scales of low-precision vectors."""
    return jnp.promote_types(dtype, jnp.float32)


def require(ok: bool, key: str, message: str) -> None:
    """Raises ``ScenarioError("compressor.<key>", message)`` unless ``ok``."""
    if not ok:
        fail(key, message)


def fail(key: str, message: str) -> NoReturn:
    raise ScenarioError(f"{PATH}.{key}", message)
