"""Which messages arrive: loss draws, the ring of past messages, masked weights.

A message from j to i is delivered when both are alive, j sent it, it is not
lost, the edge was not dropped, and it arrived in time. An undelivered
message's weight moves to the receiver's own (the ``link_failures``
semantics): for a symmetric doubly stochastic W and messages missing both
ways (a crashed peer), the mean of the live peers is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.clock.state import Ring
from workbench.comm.arrays import Table
from workbench.comm.exchange import edge_key
from workbench.keys import LINK, LOSS, round_key

MAX_PEERS = 1 << 16  # loss draws are keyed by sender * MAX_PEERS + receiver


def lost(seed: int, p: float, ticks, senders, receivers) -> jax.Array:
    """Whether the message sent at ``ticks`` from ``senders`` to ``receivers`` is
    lost (broadcast together; the same draw whenever it is read again)."""
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in (ticks, senders, receivers)))
    if p == 0:
        return jnp.zeros(shape, bool)

    def one(t, j, i):
        key = jax.random.fold_in(round_key(seed, t, LOSS), j * MAX_PEERS + i)
        return jax.random.uniform(key) < p

    flat = [jnp.ravel(jnp.broadcast_to(a, shape)) for a in (ticks, senders, receivers)]
    return jax.vmap(one)(*flat).reshape(shape)


def real_edges(table: Table) -> jax.Array:
    """(n, k) bool: a real in-neighbour (non-zero weight, not self, not padding)."""
    n = table.idx.shape[0]
    return (table.weight != 0) & (table.idx != jnp.arange(n)[:, None])


def keep_edges(table: Table, keep: jax.Array) -> Table:
    """W with the in-edges not in ``keep`` (n, k) dropped, their weight moved to
    the receiver's own column 0."""
    real = real_edges(table)
    weight = jnp.where(real & ~keep, 0, table.weight)
    dropped = jnp.sum(table.weight - weight, axis=1)
    return Table(table.idx, weight.at[:, 0].add(dropped))


def link_factors(seed: int, table: Table, sigma: float) -> jax.Array:
    """(n, k) each in-edge's delivery-time factor: lognormal, mean 1, clipped
    to 3 sigma, the same both ways of a link and for the whole run."""
    if sigma == 0:
        return jnp.ones(table.idx.shape, jnp.float32)
    key = round_key(seed, 0, LINK)
    n, k = table.idx.shape
    receivers = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k)).reshape(-1)
    keys = jax.vmap(edge_key, (None, 0, 0))(key, receivers, table.idx.reshape(-1))
    z = jnp.clip(jax.vmap(jax.random.normal)(keys), -3.0, 3.0).reshape(n, k)
    return jnp.exp(sigma * z - sigma**2 / 2).astype(jnp.float32)


def push(ring: Ring, outbox, sends, sent_at, bits, t) -> Ring:
    """Writes the senders' messages into their next slot."""
    n, depth = ring.sent_at.shape
    slot = ring.count % depth
    rows = jnp.arange(n)

    def write(old, new):
        keep = sends.reshape(sends.shape + (1,) * (new.ndim - 1))
        return old.at[rows, slot].set(jnp.where(keep, new, old[rows, slot]))

    return Ring(
        jax.tree.map(write, ring.outbox, outbox),
        write(ring.sent_at, sent_at),
        write(ring.bits, bits),
        write(ring.tick, jnp.broadcast_to(t, (n,)).astype(jnp.int32)),
        ring.count + sends.astype(jnp.int32),
    )


def latest(ring: Ring, table: Table, end, seed: int, p: float, delay):
    """For each in-edge (i, c): the newest message of sender idx[i, c] that has
    reached i by ``end`` and was not lost. ``delay(bits (n, k, B)) -> seconds``
    on each edge. Returns (slot (n, k), found (n, k))."""
    n, k = table.idx.shape
    senders = table.idx
    sent_at = ring.sent_at[senders]  # (n, k, B)
    receivers = jnp.broadcast_to(jnp.arange(n)[:, None, None], sent_at.shape)
    ticks = ring.tick[senders]
    gone = lost(seed, p, ticks, senders[..., None], receivers)
    arrive = sent_at + delay(ring.bits[senders])
    ok = (ticks >= 0) & (arrive <= end) & ~gone
    score = jnp.where(ok, sent_at, -jnp.inf)
    return jnp.argmax(score, axis=-1), jnp.any(ok, axis=-1)


def stale_messages(ring: Ring, table: Table, slot: jax.Array):
    """Messages (n, k, ...): sender idx[i, c]'s message in ``slot[i, c]``."""
    return jax.tree.map(lambda x: x[table.idx, slot], ring.outbox)


def weighted_sum(messages, table: Table):
    """sum_c weight[i, c] * messages[i, c] (the table kernel's order)."""

    def one(x):
        out = jnp.zeros(x.shape[:1] + x.shape[2:], x.dtype)
        for c in range(table.idx.shape[1]):
            w = table.weight[:, c].reshape((-1,) + (1,) * (x.ndim - 2))
            out = out + w.astype(x.dtype) * x[:, c]
        return out

    return jax.tree.map(one, messages)
