"""Crashes, rejoins and the swap timeout, as jittable functions of the clock state.

A crashed peer neither computes, sends nor receives; its neighbours drop its
edges (weight to their own, see delivery.py). Random crashes and rejoins are
memoryless: over a tick of length dt a live peer crashes with probability
1 - exp(-crash_rate dt) and a crashed one rejoins with 1 - exp(-rejoin_rate dt).
The explicit schedule holds a peer down over [at, until). A rejoining peer
starts a fresh step from its own last state, or (``rejoin: neighbour``) from
the model of its first live in-neighbour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.clock.delivery import real_edges
from workbench.clock.state import ClockSpec, ClockState
from workbench.comm.arrays import Table
from workbench.comm.exchange import reverse_columns
from workbench.keys import FAULT, round_key


def scheduled_up(clock: ClockSpec, now, n: int) -> jax.Array:
    """(n,) bool: not held down by the crash schedule at time ``now``."""
    if not len(clock.crashes):
        return jnp.ones((n,), bool)
    ev = jnp.asarray(clock.crashes)
    down = (ev[:, 1] <= now) & (now < ev[:, 2])
    hit = jnp.zeros((n,), jnp.int32).at[ev[:, 0].astype(jnp.int32)].add(down)
    return hit == 0


def next_up(clock: ClockSpec, up, span, seed: int, t) -> jax.Array:
    """The random crash process after a tick of ``span`` virtual seconds."""
    cfg = clock.config.faults
    if cfg.crash_rate == 0:
        return up
    u = jax.random.uniform(round_key(seed, t, FAULT), up.shape)
    crash = 1 - jnp.exp(-cfg.crash_rate * span)
    rejoin = 1 - jnp.exp(-cfg.rejoin_rate * span)
    return jnp.where(up, u >= crash, u < rejoin)


def pull_neighbour(params, table: Table, alive, rejoined):
    """Each rejoining peer takes the model of its first live in-neighbour
    (its own if none is live)."""
    live = real_edges(table) & alive[table.idx]
    col = jnp.argmax(live, axis=1)
    src = jnp.where(jnp.any(live, axis=1), table.idx[jnp.arange(col.shape[0]), col], -1)
    src = jnp.where(rejoined & (src >= 0), src, jnp.arange(col.shape[0]))
    return jax.tree.map(lambda x: x[src], params)


def swap_timeout(state: ClockState, table: Table, delivered, end, timeout):
    """(heard, removed): in-edges silent for longer than ``timeout`` are dropped,
    both ways."""
    heard = jnp.where(delivered, end, state.heard)
    if timeout is None:
        return heard, state.removed
    silent = real_edges(table) & (end - heard > timeout)
    removed = state.removed | silent
    n = table.idx.shape[0]
    back = removed[table.idx, reverse_columns(table)]  # the reverse edge's flag
    back = back & (table.idx != jnp.arange(n)[:, None])
    return heard, removed | back
