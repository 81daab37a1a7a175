"""Execution strategies: how a per-peer function is lifted over the peer axis.

All strategies compute the same numbers (every random draw is derived from the
peer index, never from the chunking), so the choice only changes speed/memory:

- ``vmap``:   one ``jax.vmap`` over all n peers (the default on accelerators).
- ``map``:    ``lax.map`` over chunks of ``k`` peers, each chunk vmapped
              (bounded memory; a loop inside XLA).
- ``unroll``: the n/k chunks unrolled in one jit, each chunk vmapped; on CPU this
              keeps each chunk's weights in cache (see DESIGN.md, performance).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _vmap(fn: Callable, k: int | None) -> Callable:
    del k
    return jax.vmap(fn)


def _map(fn: Callable, k: int | None) -> Callable:
    def lifted(*args):
        return jax.lax.map(lambda a: fn(*a), args, batch_size=k or 1)

    return lifted


def _unroll(fn: Callable, k: int | None) -> Callable:
    vfn = jax.vmap(fn)

    def lifted(*args):
        n = jax.tree.leaves(args)[0].shape[0]
        step = k or 1
        outs = [
            vfn(*jax.tree.map(lambda a, s=s: a[s : s + step], args))
            for s in range(0, n, step)
        ]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)

    return lifted


STRATEGIES = {"vmap": _vmap, "map": _map, "unroll": _unroll}


def lift(fn: Callable, strategy: str = "vmap", peers_per_chunk: int | None = None):
    """Lifts a per-peer ``fn(*args)`` to stacked args with a leading peer axis."""
    return STRATEGIES[strategy](fn, peers_per_chunk)


def default_strategy(backend: str, num_peers: int) -> tuple[str, int | None]:
    """The strategy ``auto`` resolves to.

    Full vmap on every backend: on the 2-core CPU, chunked ``lax.map``/``scan``
    and unrolled chunks never beat it (MLP and CNN, 16-256 peers; see the
    execution benchmark), and on accelerators it is the natural choice. What
    makes vmap fast for conv models on CPU is the matmul convolution of
    workbench.models (``conv_impl: auto``), not the chunking.
    """
    del backend, num_peers
    return "vmap", None
