"""Simulated exchanges: the participants' outboxes become inboxes, and what it cost.

An exchange is an EXCHANGES entry with three parts, all jittable:

- ``prepare(outbox, ctx) -> messages``: what goes on the wire (the outbox
  itself, or one message per edge); made once and read by the other two.
- ``deliver(messages, ctx) -> inbox``: outbox leaves are stacked over the
  participants ``ctx.peers`` (m, ...); the inbox is stacked over all n peers.
- ``cost(messages, ctx) -> (sent (n,), server ())``: bits each peer sent this
  round, and bits the server sent, from the messages actually made: their
  dtypes and shapes (or the bits a ``Coded`` part reports) times the
  deliveries made (in-edges with a non-zero weight, participants only).
  ``run`` does all three.

Entries:

- ``average``: inbox_i = sum_j W_ij outbox_j, by the fast mixing kernels.
- ``gather``: inbox_i = :class:`Inbox` of the in-neighbours' messages, padded to
  the max in-degree, with W_ij and a mask; the algorithm reduces them.
- ``edge``: like ``gather``, but each message is made by the sender for one
  out-edge: ``algorithm.message(outbox_j, j, i, edge_key)``, where
  ``edge_key`` is the same for (i, j) and (j, i) (jraph-style per-edge
  messages, delivered by a gather over the in-neighbour table). A
  ``PerEdge`` part of the outbox (one value per out-edge, e.g. an edge dual)
  reaches ``message`` as the receiver's column only. Needs a graph whose
  edges go both ways (each receiver is in its sender's table).
- ``server``: every peer receives the aggregate of the participants'
  outboxes: their weighted mean (uniform or data-size weights), or what the
  algorithm's ``aggregate`` makes of them (robust aggregation). An outbox
  wrapped in :class:`Scored` also carries a score (a client's loss): the
  weights are multiplied by the softmax of the participants' scores. The
  server sends the aggregate back to each participant.
- ``hierarchy``: two levels of servers (hierarchical FL). The outbox is a
  :class:`Tiered` (the value, the sender's group, its share of the weight);
  peer i receives :class:`Tiers`: the weighted mean over its group and the
  weighted mean over everyone. An upload costs the bits of its value (the
  group and share are the connection's, not payload; ``sent_if`` makes a
  value free), and each paid upload gets the reply's bits back.
- ``coordinator``: a server that decides whose uploads it takes (dynamic
  averaging): ``ctx.aggregate(uploads, weights, key) -> Decision``; only the
  uploads it takes cost their bits, and its reply (one value for everyone,
  from which each peer tells whether it was taken) costs its bits once per
  taken upload. A round where it takes none costs nothing.

A network transport does the exchange itself and calls only the algorithm's
``local`` and ``combine`` (see workbench.rounds.Phases).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from workbench.comm.arrays import Dense, KernelArrays, Mean, Roll, Segment, Table
from workbench.comm.kernels import mix
from workbench.comm.messages import Inbox, PerEdge, Scored, message_bits, plain


class Context(NamedTuple):
    """Everything an exchange may read in one round (built inside jit)."""

    arrays: KernelArrays  # the round's mixing matrix
    table: Table | None  # the same W as an in-neighbour table (gather, edge)
    peers: jax.Array  # (m,) int32 participants, sorted
    weights: jax.Array  # (m,) server aggregation weight of each participant
    n: int
    key: jax.Array  # the round's exchange key (edge messages)
    message: Callable | None  # the algorithm's per-edge message function
    # server: (uploads (m, ...), weights (m,) summing to 1) -> model, None:
    # the weighted mean; coordinator: (uploads, weights, key) -> Decision
    aggregate: Callable | None = None


def _as_is(outbox, ctx: Context):
    del ctx
    return outbox


class Exchange(NamedTuple):
    deliver: Callable[[Any, Context], Any]
    cost: Callable[[Any, Context], tuple[jax.Array, jax.Array]]
    needs_table: bool = False
    prepare: Callable[[Any, Context], Any] = _as_is
    # a server's reply is one value for every peer (a network transport sends
    # it once per node, not once per peer)
    same_reply: bool = False

    def run(self, outbox, ctx: Context):
        """(inbox, sent (n,), server ()) with the messages made once."""
        messages = self.prepare(outbox, ctx)
        sent, server = self.cost(messages, ctx)
        return self.deliver(messages, ctx), sent, server


# ------------------------------------------------------------------ average


def _deliver_average(outbox, ctx: Context):
    return mix(ctx.arrays, plain(outbox))


def _out_edges_mean(arrays: Mean, n: int) -> jax.Array:
    return jnp.full((n,), n - 1, jnp.float32)


def _out_edges_dense(arrays: Dense, n: int) -> jax.Array:
    off = (arrays.W != 0) & ~jnp.eye(n, dtype=bool)
    return jnp.sum(off, axis=0).astype(jnp.float32)


def _out_edges_roll(arrays: Roll, n: int) -> jax.Array:
    real = (arrays.weights != 0) & (arrays.shifts % n != 0)
    return jnp.full((n,), jnp.sum(real), jnp.float32)


def _out_edges_table(arrays: Table, n: int) -> jax.Array:
    self_idx = jnp.arange(n)[:, None]
    real = ((arrays.weight != 0) & (arrays.idx != self_idx)).astype(jnp.float32)
    return jax.ops.segment_sum(real.reshape(-1), arrays.idx.reshape(-1), n)


def _out_edges_segment(arrays: Segment, n: int) -> jax.Array:
    real = (arrays.weight != 0) & (arrays.senders != arrays.receivers)
    return jax.ops.segment_sum(real.astype(jnp.float32), arrays.senders, n)


OUT_EDGES = {
    Mean: _out_edges_mean,
    Dense: _out_edges_dense,
    Roll: _out_edges_roll,
    Table: _out_edges_table,
    Segment: _out_edges_segment,
}


def out_edges(arrays: KernelArrays, n: int) -> jax.Array:
    """(n,) number of out-neighbours of each peer (non-zero W_ij, i != j)."""
    return OUT_EDGES[type(arrays)](arrays, n)


def _scatter(values: jax.Array, ctx: Context) -> jax.Array:
    return jnp.zeros((ctx.n,), values.dtype).at[ctx.peers].set(values)


def _cost_broadcast(outbox, ctx: Context):
    """One message per out-edge of each participant (average and gather)."""
    bits = _scatter(message_bits(outbox), ctx)
    return out_edges(ctx.arrays, ctx.n) * bits, jnp.zeros((), jnp.float32)


# ------------------------------------------------------------ gather, edge


def table_inbox(messages, table: Table) -> Inbox:
    """The Inbox of messages (n, k, ...) laid out like ``table``."""
    n, k = table.idx.shape
    self_idx = jnp.arange(n, dtype=table.idx.dtype)[:, None]
    mask = (table.weight != 0) & (table.idx != self_idx)
    return Inbox(messages, table.weight, mask)


def _deliver_gather(outbox, ctx: Context):
    values = plain(outbox)
    return table_inbox(jax.tree.map(lambda x: x[ctx.table.idx], values), ctx.table)


def edge_key(key: jax.Array, i, j) -> jax.Array:
    """The key of the undirected edge {i, j}: the same for (i, j) and (j, i)."""
    lo, hi = jnp.minimum(i, j), jnp.maximum(i, j)
    return jax.random.fold_in(jax.random.fold_in(key, lo), hi)


def reverse_columns(table: Table) -> jax.Array:
    """(n, k) int32: for receiver i and column c (sender j = idx[i, c]), the
    column of i in j's table (0, j's own column, where i is not there)."""
    n = table.idx.shape[0]
    receivers = jnp.arange(n, dtype=table.idx.dtype)[:, None, None]
    return jnp.argmax(table.idx[table.idx] == receivers, axis=-1).astype(jnp.int32)


def _rows(v: jax.Array, senders: jax.Array, rows: jax.Array) -> jax.Array:
    """v[senders, rows] for a PerEdge leaf (n, k - 1, ...); zeros when k = 1."""
    if v.shape[1] == 0:  # no neighbour columns (a single peer): nothing is sent
        return jnp.zeros(senders.shape + v.shape[2:], v.dtype)
    return v[senders, rows]


def _is_per_edge(x) -> bool:
    return isinstance(x, PerEdge)


def _edge_messages(outbox, ctx: Context):
    """Messages (n, k, ...) made by sender idx[i, c] for receiver i.

    The sender's whole outbox is read, except its ``PerEdge`` parts, of which
    only the column of the receiver is (one gather, not k copies per edge).
    """
    n, k = ctx.table.idx.shape
    receivers = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, k))
    senders = ctx.table.idx
    flat = senders.reshape(-1)
    # a PerEdge row per neighbour column (1..k-1); column 0 (self) reads row 0
    rows = jnp.maximum(reverse_columns(ctx.table).reshape(-1) - 1, 0)

    def pick(x):
        if _is_per_edge(x):
            return PerEdge(jax.tree.map(lambda v: _rows(v, flat, rows), x.value))
        return x[flat]

    own = jax.tree.map(pick, outbox, is_leaf=_is_per_edge)
    keys = jax.vmap(edge_key, (None, 0, 0))(ctx.key, receivers.reshape(-1), flat)
    made = jax.vmap(ctx.message)(own, flat, receivers.reshape(-1), keys)
    return jax.tree.map(lambda x: x.reshape((n, k) + x.shape[1:]), made)


def _deliver_edge(messages, ctx: Context):
    """Inbox of the per-edge messages (n, k, ...) that ``prepare`` made."""
    return table_inbox(plain(messages), ctx.table)


def _cost_edge(messages, ctx: Context):
    inbox = table_inbox(None, ctx.table)
    bits = message_bits(messages, batch_dims=2) * inbox.mask
    sent = jax.ops.segment_sum(bits.reshape(-1), ctx.table.idx.reshape(-1), ctx.n)
    return sent, jnp.zeros((), jnp.float32)


# ------------------------------------------------------------------ server


def weighted_mean(uploads, weights: jax.Array):
    """sum_j weights_j uploads_j over the leading axis (weights sum to 1)."""

    def one(leaf):
        return jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1)

    return jax.tree.map(one, uploads)


def server_weights(outbox, ctx: Context) -> jax.Array:
    """(m,) aggregation weights summing to 1: ``ctx.weights``, times the
    softmax of the scores when the outbox is :class:`Scored`."""
    w = ctx.weights
    if isinstance(outbox, Scored):
        w = w * jnp.exp(outbox.score - jnp.max(outbox.score))
    return w / jnp.sum(w)


def _unscored(outbox):
    return plain(outbox.value if isinstance(outbox, Scored) else outbox)


def _to_everyone(reply, n: int):
    """One reply (no peer axis) as every peer's inbox: leaves (n, ...)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), reply)


def _deliver_server(outbox, ctx: Context):
    """The aggregate of the m participants' outboxes, broadcast to all n peers."""
    aggregate = ctx.aggregate or weighted_mean
    avg = aggregate(_unscored(outbox), server_weights(outbox, ctx))
    return _to_everyone(avg, ctx.n)


def _cost_server(outbox, ctx: Context):
    """Each participant uploads once; the server sends the aggregate to each of them."""
    uploads = _scatter(message_bits(outbox), ctx)
    reply = jax.tree.map(lambda x: x[:1], _unscored(outbox))
    return uploads, message_bits(reply)[0] * ctx.peers.shape[0]


# ------------------------------------------------------------------ hierarchy


class Tiered(NamedTuple):
    """An upload to a two-level server (``hierarchy`` exchange)."""

    value: Any  # the upload
    group: jax.Array  # () int32 the sender's group (party), < n
    share: jax.Array  # () float: multiplies the sender's weight (0: left out)


class Tiers(NamedTuple):
    group: Any  # the weighted mean over the receiver's group
    total: Any  # the weighted mean over everyone


def _deliver_hierarchy(outbox, ctx: Context) -> Tiers:
    up = plain(outbox)
    w = ctx.weights * up.share
    group_w = jax.ops.segment_sum(w, up.group, ctx.n)  # (n,): groups are < n

    def lead(x, leaf):  # (m,) -> (m, 1, ...) in the leaf's dtype
        return x.astype(leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))

    def group_mean(leaf):  # full participation: receiver i is sender i
        sums = jax.ops.segment_sum(lead(w, leaf) * leaf, up.group, ctx.n)
        gw = lead(group_w, leaf)
        return (sums / jnp.where(gw > 0, gw, 1))[up.group]

    def total_mean(leaf):
        total = jnp.sum(lead(w, leaf) * leaf, 0) / jnp.maximum(jnp.sum(w), 1e-30)
        return jnp.broadcast_to(total, leaf.shape)

    return Tiers(jax.tree.map(group_mean, up.value), jax.tree.map(total_mean, up.value))


def _cost_hierarchy(outbox, ctx: Context):
    bits = message_bits(outbox.value)
    reply = jax.tree.map(lambda x: x[:1], plain(outbox).value)
    return _scatter(bits, ctx), message_bits(reply)[0] * jnp.sum(bits > 0)


# ------------------------------------------------------------------ coordinator


class Decision(NamedTuple):
    """What a coordinating server decided in one round."""

    reply: Any  # sent back to every taken participant (no peer axis)
    taken: jax.Array  # (m,) bool: the participants whose upload it used


class Decided(NamedTuple):
    uploads: Any  # the participants' outboxes, leaves (m, ...)
    decision: Decision


def _prepare_coordinator(outbox, ctx: Context) -> Decided:
    values = plain(outbox)
    w = ctx.weights / jnp.sum(ctx.weights)
    return Decided(outbox, ctx.aggregate(values, w, ctx.key))


def _deliver_coordinator(messages: Decided, ctx: Context):
    return _to_everyone(messages.decision.reply, ctx.n)


def _cost_coordinator(messages: Decided, ctx: Context):
    taken = messages.decision.taken
    uploads = _scatter(message_bits(messages.uploads) * taken, ctx)
    reply = jax.tree.map(lambda x: x[None], messages.decision.reply)
    return uploads, message_bits(reply)[0] * jnp.sum(taken)


EXCHANGES = {
    "average": Exchange(_deliver_average, _cost_broadcast),
    "gather": Exchange(_deliver_gather, _cost_broadcast, needs_table=True),
    "edge": Exchange(_deliver_edge, _cost_edge, True, _edge_messages),
    "server": Exchange(_deliver_server, _cost_server, same_reply=True),
    "hierarchy": Exchange(_deliver_hierarchy, _cost_hierarchy),
    "coordinator": Exchange(
        _deliver_coordinator,
        _cost_coordinator,
        prepare=_prepare_coordinator,
        same_reply=True,
    ),
}
