"""Execution strategies: how a per-peer function is lifted over the peer axis.

All strategies compute the same numbers (every random draw is derived from the
peer index, never from the chunking), so the choice only changes speed/memory:

- ``vmap``:   one ``jax.vmap`` over all n peers (where ``auto`` starts, unless
              ``default_strategy``'s cost model says otherwise).
- ``map``:    ``lax.map`` over chunks of ``k`` peers, each chunk vmapped
              (bounded memory; a loop inside XLA).
- ``unroll``: the n/k chunks unrolled in one jit, each chunk vmapped; on CPU this
              keeps each chunk's weights in cache.

With ``execution.devices`` > 1 the peer axis is split over devices, and the
chunks of ``map`` and ``unroll`` are taken within each device's block of peers
(``workbench.sharding.per_device``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from workbench.objective import Batch


def _vmap(fn: Callable, k: int | None) -> Callable:
    del k
    return jax.vmap(fn)


class _NotInPlace(Exception):
    """The lifted function's output does not start with its first argument's
    structure, so it cannot be updated in place."""


def _split(out, state):
    """(new state, other outputs, whether ``out`` is the state alone): ``out``
    is shaped as ``state``, or is a tuple whose first element is."""
    like = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    if like(out) == like(state):
        return out, (), True
    if isinstance(out, tuple) and out and like(out[0]) == like(state):
        return out[0], out[1:], False
    raise _NotInPlace


def _in_place(fn: Callable, k: int, args):
    """``fn`` over chunks of ``k`` peers, the first argument (the state)
    updated in place: a loop over chunks writes each chunk's new state over
    its old rows, so the stacked state is held once, not twice as
    ``lax.map``'s stacked outputs hold it (FEMNIST CNN, 16 peers: 60 MiB of
    temporaries instead of 251 MiB, and 12% faster). Other outputs are
    stacked, except those that are a leaf of the new state (D-SGD's outbox is
    its parameters), which are read from the final state."""
    state, rest = args[0], args[1:]
    n = jax.tree.leaves(state)[0].shape[0]
    vfn = jax.vmap(fn)
    traced: dict = {}  # what the chunk's trace found: output layout, aliases

    def chunk(state, start, size):
        sl = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size)  # noqa: E731
        old = jax.tree.map(sl, state)
        out = vfn(old, *jax.tree.map(sl, rest))
        new, others, whole = _split(out, old)
        put = lambda a, u: jax.lax.dynamic_update_slice_in_dim(a, u, start, 0)  # noqa: E731
        ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(new))}
        leaves, tree = jax.tree.flatten(others)
        aliases = [ids.get(id(leaf)) for leaf in leaves]
        traced.update(whole=whole, tree=tree, aliases=aliases)
        fresh = [leaf for leaf, i in zip(leaves, aliases, strict=True) if i is None]
        return jax.tree.map(put, state, new), fresh

    full, ys = n // k, None
    if full:
        starts = jnp.arange(full, dtype=jnp.int32) * k
        state, ys = jax.lax.scan(lambda s, c: chunk(s, c, k), state, starts)
        ys = [y.reshape((full * k, *y.shape[2:])) for y in ys]
    if n % k:  # the last, smaller chunk
        state, tail = chunk(state, full * k, n % k)
        if ys is None:
            ys = tail
        else:
            ys = [jnp.concatenate(p) for p in zip(ys, tail, strict=True)]
    if traced["whole"]:
        return state
    final, stacked = jax.tree.leaves(state), iter(ys)
    leaves = [next(stacked) if i is None else final[i] for i in traced["aliases"]]
    return (state, *jax.tree.unflatten(traced["tree"], leaves))


def _map(fn: Callable, k: int | None) -> Callable:
    def lifted(*args):
        try:
            return _in_place(fn, k or 1, args)
        except _NotInPlace:
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


# A CPU runs the peers one at a time (``map`` over 1 peer) when one peer's
# gradient on one batch moves at least ACTIVATION_TRAFFIC bytes (more than a
# CPU's caches hold) and ACTIVATION_RATIO times its parameters' bytes (the
# traffic is activations, not weights).
ACTIVATION_TRAFFIC = 256 * 2**20
ACTIVATION_RATIO = 16


class StepCost(NamedTuple):
    """One peer's gradient on one batch, as XLA estimates the lowered program."""

    traffic: float  # bytes its operations read and write (before fusion)
    params: int  # bytes of the peer's parameters

    @property
    def activation_heavy(self) -> bool:
        return (
            self.traffic >= ACTIVATION_TRAFFIC
            and self.traffic >= ACTIVATION_RATIO * self.params
        )


def peer_step_cost(loss_fn: Callable, params, input_shape, batch_size: int) -> StepCost:
    """Lowers (does not compile or run) one peer's gradient on one batch."""
    batch = Batch(
        jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        jax.ShapeDtypeStruct((batch_size,), jnp.float32),
    )
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    cost = jax.jit(jax.grad(loss_fn)).lower(shapes, batch).cost_analysis() or {}
    nbytes = sum(p.size * p.dtype.itemsize for p in jax.tree.leaves(shapes))
    return StepCost(float(cost.get("bytes accessed", 0.0)), nbytes)


def default_strategy(
    backend: str, num_peers: int, cost: StepCost | None
) -> tuple[str, int | None]:
    """Where ``auto`` starts: a cost model of one peer's step, validated below.

    On a CPU, a peer step whose gradient is activation-heavy
    (:attr:`StepCost.activation_heavy`: it moves at least ACTIVATION_TRAFFIC
    bytes, and ACTIVATION_RATIO times its parameters') runs its peers one at a
    time (``map`` over 1 peer): n peers' activations at once (full vmap) leave
    the caches, one peer's stay, so it is as fast as any other lift or faster,
    with one peer's activations in memory instead of n. ``auto`` keeps that
    choice without timing others (timing full vmap would need its memory).
    Other steps, and every step on an accelerator, start with full vmap;
    ``auto`` then chunks the peers if the memory budget asks for it
    (workbench.planner) and, in a run long enough to pay for the compilations,
    times the other candidates on its own chunks and keeps the fastest
    (workbench.tuning).

    Measured on the 2-core CPU, one D-SGD step of batch 32 per peer, 16 peers,
    huge pages on (tests/benchmarks/bench_engine.py): ms per step and XLA's
    peak estimate; traffic per peer over parameter bytes.

    ============  ========  =======  ============  ============  ============
    model         traffic   ratio    vmap          map x4        map x1
    ============  ========  =======  ============  ============  ============
    FEMNIST CNN   540 MiB   84       560 / 993 M   531 / 426 M   496 / 356 M
    ResNet-20 GN  4.7 GiB   4653     3865 / 3.8 G  3403 / 1.0 G  2813 / 289 M
    MLP 200-200   3.1 MiB   4.1      7.7 / 24 M    9.6 / 31 M    14.5 / 36 M
    MLP 2048x2    71 MiB    3.2      271 / 630 M   389 / 804 M   680 / 1.0 G
    ============  ========  =======  ============  ============  ============

    A Python loop of jitted per-peer steps takes 475 ms for the CNN and 7.1 ms
    for the MLP. The CNN and the ResNet are bound by their convolutions'
    matmuls and the patches' memory traffic. An MLP reads n weight matrices per
    step however it is lifted; ``map`` adds a copy of each chunk's weights in
    and out, 2.5x slower over single peers even at 1 GFLOP per peer step (MLP
    2048x2), so FLOPs alone do not say when chunking pays. At 64 CNN peers
    ``map`` over 1 peer stays level with vmap (1.9-2.2 s against 2.1-2.4 s) at a
    third of its memory. Unrolled chunks compile in time proportional to their
    number (``unroll`` over 1 peer: 28 s for 64 MLP peers), so ``auto`` only
    tries four chunks. Without glibc's huge pages (workbench.allocator) the CNN
    step was 1.7-1.9x slower for every strategy: page faults of the step's
    large buffers.

    What makes vmap fast for conv models on CPU at all is the matmul
    convolution of workbench.models (``conv_impl: auto``): vmapped grouped XLA
    convolutions were 27x slower.
    """
    heavy = backend == "cpu" and cost is not None and cost.activation_heavy
    return ("map", 1) if heavy and num_peers > 1 else ("vmap", None)
