"""Execution strategies: how a per-peer function is lifted over the peer axis.

All strategies compute the same numbers (every random draw is derived from the
peer index, never from the chunking), so the choice only changes speed/memory:

- ``vmap``:   one ``jax.vmap`` over all n peers (what ``auto`` picks, on any backend).
- ``map``:    ``lax.map`` over chunks of ``k`` peers, each chunk vmapped
              (bounded memory; a loop inside XLA).
- ``unroll``: the n/k chunks unrolled in one jit, each chunk vmapped; on CPU this
              keeps each chunk's weights in cache (``default_strategy`` says
              when chunking pays).
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
    """The strategy ``auto`` resolves to: full vmap, on every backend.

    Measured on the 2-core CPU (tests/benchmarks/bench_engine.py): chunking is a
    memory/cache trade-off that depends on activation size. For the FEMNIST CNN
    on 28x28 inputs, ``map`` with 1-4 peers per chunk was 1.3-1.5x faster than
    full vmap (one peer's patches fit in L3, n peers' do not); for the same CNN
    on 8x8 digits and for MLPs, full vmap was faster. Pick ``strategy: map,
    peers_per_chunk: 4`` for large conv models on CPU. What makes vmap fast for
    conv models on CPU at all is the matmul convolution of workbench.models
    (``conv_impl: auto``): vmapped grouped XLA convolutions were 27x slower.
    """
    del backend, num_peers
    return "vmap", None
