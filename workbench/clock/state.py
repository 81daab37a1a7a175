"""What the virtual clock carries from tick to tick, and its static settings.

Every field keeps the peer axis leading (n, ...), like the algorithm's state,
so a clocked state is checkpointed, restored and estimated the same way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.clock.speeds import Speed

PyTree = Any


class ClockState(NamedTuple):
    now: jax.Array  # (n,) float32 virtual time at the end of the last tick (all equal)
    ready: jax.Array  # (n,) float32 when each peer's current step ends
    steps: jax.Array  # (n,) int32 local steps each peer has finished
    up: jax.Array  # (n,) bool alive under the random crash process
    alive: jax.Array  # (n,) bool alive during the last tick
    heard: jax.Array  # (n, k) float32 last time each in-edge delivered
    removed: jax.Array  # (n, k) bool in-edges dropped by the swap timeout
    # samples each peer was sent by redistribution (workbench.clock.redistribute)
    moved: jax.Array  # (n, E) int32 flat training indices (E = 0: none)
    moved_n: jax.Array  # (n,) int32 how many of them are real
    # each peer's straggler multiplier (drawn from the seed: state, not a
    # constant of the program, so a sweep's seeds are one program)
    factor: jax.Array = None  # (n,) float32


class Ring(NamedTuple):
    """The last ``B`` messages each peer sent (late messages are read from here)."""

    outbox: PyTree  # leaves (n, B, ...): what each peer sent, slot = count % B
    sent_at: jax.Array  # (n, B) float32 when it was sent (-inf: empty slot)
    bits: jax.Array  # (n, B) float32 its size (its delay on each link)
    tick: jax.Array  # (n, B) int32 the tick it was sent at (its loss draws)
    count: jax.Array  # (n,) int32 messages each peer has sent


class Clocked(NamedTuple):
    """A clocked run's state: the algorithm's, the clock's, the ring, the
    server's, the open sessions."""

    alg: PyTree  # the algorithm's stacked state, leaves (n, ...)
    clock: ClockState
    ring: Ring | None  # None: every message arrives in the tick it is sent
    server: PyTree = None  # a stateful server's state (asynchronous FL), or None
    sessions: PyTree = None  # the sessions in progress (clock.sessions.Open), or None

    @property
    def params(self) -> PyTree:
        return self.alg.params


class ClockSpec(NamedTuple):
    """The static side of a ``clock:`` section, resolved for n peers."""

    config: Any  # the ClockConfig
    speed: Speed
    factor: np.ndarray  # (n,) float32 straggler multiplier of each peer's steps
    crashes: np.ndarray  # (e, 3) float32 rows (peer, at, until) of the schedule
    buffer: int  # ring depth B (0: no ring, messages arrive in their tick)
    upload: float  # server algorithms: upload + download seconds of one cycle
    # (params, x (m, ...), y (m,)) -> (m,) losses: redistribution's ranking
    sample_loss: Any = None


def init_clock(n: int, k: int, capacity: int = 0, factor=None) -> ClockState:
    """A clock at time 0; ``factor``: (n,) straggler multipliers (None: 1)."""
    factor = np.ones(n, np.float32) if factor is None else factor
    return ClockState(
        now=jnp.zeros((n,), jnp.float32),
        ready=jnp.zeros((n,), jnp.float32),
        steps=jnp.zeros((n,), jnp.int32),
        up=jnp.ones((n,), bool),
        alive=jnp.ones((n,), bool),
        heard=jnp.zeros((n, k), jnp.float32),
        removed=jnp.zeros((n, k), bool),
        moved=jnp.zeros((n, capacity), jnp.int32),
        moved_n=jnp.zeros((n,), jnp.int32),
        factor=jnp.asarray(factor, jnp.float32),
    )


def init_ring(outbox_shapes: PyTree, n: int, depth: int) -> Ring:
    """An empty ring for messages shaped like ``outbox_shapes`` (leaves (n, ...))."""

    def slots(s):
        return jnp.zeros((n, depth) + s.shape[1:], s.dtype)

    return Ring(
        jax.tree.map(slots, outbox_shapes),
        jnp.full((n, depth), -jnp.inf, jnp.float32),
        jnp.zeros((n, depth), jnp.float32),
        jnp.full((n, depth), -1, jnp.int32),
        jnp.zeros((n,), jnp.int32),
    )
