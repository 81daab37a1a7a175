"""Peer-axis sharding: the simulated peers split over local devices.

With ``execution: {devices: N}`` (N > 1, or ``auto``) the engine builds a 1-D
mesh over the first N local devices, its one axis named ``peers``, and places
every array with a leading peer axis (the stacked algorithm state, the peers'
training data, their train/validation evaluation sets) split evenly along that
axis: device d holds peers d*n/N .. (d+1)*n/N - 1. Everything else (topology
arrays, aggregation weights, the test set) is replicated on every device. The
jitted chunk and the evaluation are the single-device programs (rounds.py and
the mixing kernels unchanged), with the new state kept split (``jit_chunk``):
XLA's partitioner splits the per-peer work by where its inputs live and
inserts the collectives the rest needs (the mixing step all-gathers the
parameters it reads; the averaged model is an all-reduce). A loop over chunks
of peers (``map``, ``unroll``, and always the evaluation) runs within each
device's block of peers (``per_device``). The numbers are those of one device
up to the order of floating-point sums; ``devices`` None or 1 takes no
sharding path at all.

On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX
starts) splits the host into N devices, e.g. to test a sharded run.

Beyond one machine, the same mesh spans several processes: each host calls
``jax.distributed.initialize(coordinator_address, num_processes, process_id)``
before anything else touches JAX; the mesh is then built over ``jax.devices()``
(every process's devices, not only ``jax.local_devices()``) and each process
feeds only the peers its own devices hold, e.g. with
``jax.make_array_from_process_local_data(sharding, local_rows)``; every process
runs the same jitted program. Host-side code that reads whole arrays
(``np.asarray`` of metrics, checkpoints) must then gather them first (e.g.
``jax.experimental.multihost_utils.process_allgather``). The engine does not
do this: here the mesh is local to one process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from workbench.errors import ScenarioError
from workbench.keys import KEY_IMPL

PEERS = "peers"  # the mesh axis the peers are split along
PATH = "execution.devices"  # scenario key, for messages


def resolve_devices(
    setting: int | Literal["auto"] | None, n: int, available: int | None = None
) -> int:
    """The number of devices the n peers are split over (1: no sharding).

    ``auto``: the largest divisor of n not above the local device count; an
    int must divide n and be available, else a one-line ScenarioError.
    """
    available = jax.local_device_count() if available is None else available
    if setting is None:
        return 1
    if setting == "auto":
        return max(d for d in range(1, min(n, available) + 1) if n % d == 0)
    if setting > available:
        backend = jax.default_backend()
        fix = (
            f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={setting}"
            if backend == "cpu"
            else f"use at most {available} (or auto)"
        )
        raise ScenarioError(
            PATH, f"{setting} devices asked, {available} available ({backend}); {fix}"
        )
    if n % setting:
        raise ScenarioError(
            PATH,
            f"{n} peers do not split evenly over {setting} devices; use a "
            f"divisor of {n} (or auto)",
        )
    return setting


def peer_mesh(devices: int) -> Mesh:
    """A 1-D mesh over the first ``devices`` local devices, axis ``peers``
    (with a partitioner that compiles the run's random draws on it)."""
    mesh = Mesh(np.asarray(jax.local_devices()[:devices]), (PEERS,))
    if not _shardy_compiles_keys(devices):
        jax.config.update("jax_use_shardy_partitioner", False)
    return mesh


@functools.cache
def _shardy_compiles_keys(devices: int) -> bool:
    """Whether Shardy, JAX's default partitioner, compiles philox draws split
    over ``devices`` devices. In jax 0.10 it does not ("Unable to convert MHLO
    to StableHLO": its round trip has no form of philox's ``chlo.mulhi``), so
    a sharded run then switches the process to GSPMD, which XLA logs as
    deprecated at each compilation. Probed once (a ~40 ms compilation)."""
    if not jax.config.jax_use_shardy_partitioner:
        return True  # already GSPMD
    mesh = Mesh(np.asarray(jax.local_devices()[:devices]), (PEERS,))
    keys = jax.random.split(jax.random.key(0, impl=KEY_IMPL), devices)
    keys = jax.device_put(keys, peer_sharding(mesh))
    try:
        with _quiet_stderr():  # XLA prints the failed legalization there
            jax.jit(jax.vmap(jax.random.bits)).lower(keys).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration (C++ writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peer_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(PEERS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_peers(tree: Any, mesh: Mesh, n: int | None = None) -> Any:
    """``tree`` on the mesh: leaves with leading axis n split along it (all
    leaves with a leading axis when n is None), the others replicated."""

    def put(a):
        a = np.asarray(a) if not isinstance(a, jax.Array) else a
        split = a.ndim >= 1 and (n is None or a.shape[0] == n)
        return jax.device_put(a, peer_sharding(mesh) if split else replicated(mesh))

    return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` whole on every device of the mesh."""
    return jax.tree.map(lambda a: jax.device_put(a, replicated(mesh)), tree)


def constrain_peers(tree: Any, mesh: Mesh) -> Any:
    """Inside jit: keeps ``tree``'s leaves split along the peer axis."""
    return jax.lax.with_sharding_constraint(tree, peer_sharding(mesh))


def jit_chunk(body: Callable, mesh: Mesh) -> Callable:
    """``body`` (rounds.chunk_body) jitted as rounds.make_chunk does, its new
    state kept split along the peer axis (so the next chunk, compiled for that
    placement, takes it and the donated buffers are reused)."""

    def chunk(state, *args, **kwargs):
        state, *rest = body(state, *args, **kwargs)
        return (constrain_peers(state, mesh), *rest)

    return jax.jit(chunk, static_argnames="length", donate_argnums=0)


def per_device(lifter: Callable, mesh: Mesh) -> Callable:
    """``lifter`` (per-peer fn -> stacked fn) applied to each device's block
    of peers: the peer axis (p, ...) seen as (devices, p / devices, ...) and
    vmapped over the blocks, which stay split. A loop over chunks of peers
    (``lax.map``) on the split axis itself would gather every peer on every
    device and run them all there. A peer axis that does not split evenly
    (a sampled subset of the peers) is lifted as it is."""
    devices = mesh.size

    def lift(fn: Callable) -> Callable:
        inner = lifter(fn)

        def lifted(*args):
            p = jax.tree.leaves(args)[0].shape[0]
            if p % devices:
                return inner(*args)
            blocks = jax.tree.map(
                lambda a: a.reshape(devices, p // devices, *a.shape[1:]), args
            )
            out = jax.vmap(inner)(*constrain_peers(blocks, mesh))
            return jax.tree.map(lambda a: a.reshape(p, *a.shape[2:]), out)

        return lifted

    return lift
