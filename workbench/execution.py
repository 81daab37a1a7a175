"""Execution strategies: how a per-peer function is lifted over the peer axis.

All strategies compute the same numbers (every random draw is derived from the
peer index, never from the chunking), so the choice only changes speed/memory:

- ``vmap``:   one ``jax.vmap`` over all n peers (where ``auto`` starts).
- ``map``:    ``lax.map`` over chunks of ``k`` peers, each chunk vmapped
              (bounded memory; a loop inside XLA).
- ``unroll``: the n/k chunks unrolled in one jit, each chunk vmapped; on CPU this
              keeps each chunk's weights in cache (``default_strategy`` says
              when chunking pays).

With ``execution.devices`` > 1 the peer axis is split over devices, and the
chunks of ``map`` and ``unroll`` are taken within each device's block of peers
(``workbench.sharding.per_device``).
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
    """Where ``auto`` starts: full vmap, on every backend.

    ``auto`` then chunks the peers if the memory budget asks for it
    (workbench.planner) and, in a run long enough to pay for the compilations,
    times the other candidates on its own chunks and keeps the fastest
    (workbench.tuning). Measured trade-offs on the 2-core CPU, one D-SGD step of
    batch 32, huge pages on (tests/benchmarks/bench_engine.py):

    - FEMNIST CNN, 16 peers: every strategy is within ~10% of a Python loop of
      jitted per-peer steps and of one model stepping on the summed batch
      (16 x 32), which runs the machine at ~0.5 of its matmul peak: the step is
      bound by the convolutions' matmuls and the patches' memory traffic, not
      by how the peers are lifted. Chunks (``map`` over 1-4 peers) need less
      memory than full vmap (one chunk's patches at a time).
    - MLP: full vmap and the loop are level at 16 peers; the summed batch is
      ~2x faster (one weight matrix read per step instead of n).
    - Unrolled chunks compile in time proportional to their number (``unroll``
      over 1 peer: 28 s for 64 MLP peers), so ``auto`` only tries four chunks.
    - Without glibc's huge pages (workbench.allocator) the CNN step was 1.7-1.9x
      slower for every strategy: page faults of the step's large buffers.

    What makes vmap fast for conv models on CPU at all is the matmul
    convolution of workbench.models (``conv_impl: auto``): vmapped grouped XLA
    convolutions were 27x slower.
    """
    del backend, num_peers
    return "vmap", None
