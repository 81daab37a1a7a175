"""Error feedback (residual accumulation) around any compressor.

    p = x + e;   q = C(p);   e <- p - q

so ``x + e_old == q + e_new``: what is not sent is carried to the next message
instead of being lost (EF-SGD, arXiv 1901.09847; the MXNet 2-bit residual).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from workbench.compression.base import Compressor, PyTree, zeros_like


class ErrorFeedbackState(NamedTuple):
    residual: PyTree  # like x: the part of past messages not sent yet
    inner: PyTree  # the wrapped compressor's state


def error_feedback(compressor: Compressor) -> Compressor:
    """Wraps ``compressor`` with a residual; bits are the inner compressor's."""

    def init(template):
        return ErrorFeedbackState(zeros_like(template), compressor.init(template))

    def apply(x, state, key):
        p = jax.tree.map(jnp.add, x, state.residual)
        q, inner, bits = compressor.apply(p, state.inner, key)
        residual = jax.tree.map(jnp.subtract, p, q)
        return q, ErrorFeedbackState(residual, inner), bits

    return Compressor(init, apply)


def maybe_feedback(compressor: Compressor, on: bool) -> Compressor:
    """``error_feedback(compressor)`` when ``on``, else ``compressor`` itself."""
    return error_feedback(compressor) if on else compressor
