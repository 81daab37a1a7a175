"""One tick of virtual time, jitted: who finishes a step, which messages arrive.

``make_tick(spec, seed)`` has the signature of ``rounds.make_round``'s round
on a :class:`Clocked` state, so ``lax.scan`` runs ticks in chunks exactly as
it runs rounds. A tick:

1. liveness: the crash schedule and the random crash process; a rejoining
   peer starts afresh (``rejoin: neighbour``: from a live neighbour's model);
2. each idle live peer of the cohort starts a step of a drawn duration;
3. the tick's end: ``sync``: when the last live peer's messages have
   arrived (a barrier), or the timeout; ``async``: ``tick`` seconds later;
4. active peers (their step ended by then) run ``local``; the others keep
   their state;
5. delivery (delivery.py): a message from j to i counts if j sent it, both
   are alive, it is not lost and arrived by the end (``async`` with delays:
   the newest such message of j from the ring, i.e. j's state when it sent);
   undelivered weight moves to i's own;
6. the exchange and ``combine`` for the receivers (active peers; AD-PSGD's
   partners too); a stateful server applies the uploads in arrival order.

Every draw is ``fold_in(seed, tick, purpose)``, outside the per-peer lift,
so the numbers do not depend on the execution strategy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from workbench.algorithms.base import rows_where
from workbench.clock.delivery import (
    keep_edges,
    latest,
    link_factors,
    lost,
    push,
    real_edges,
    stale_messages,
    weighted_sum,
)
from workbench.clock.faults import next_up, pull_neighbour, scheduled_up, swap_timeout
from workbench.clock.pairing import pair_up
from workbench.clock.redistribute import make_redistribute, overlay
from workbench.clock.sessions import init_open, make_session_tick
from workbench.clock.state import Clocked, ClockState
from workbench.comm.arrays import Table
from workbench.comm.exchange import EXCHANGES, Context, table_inbox
from workbench.comm.kernels import as_table
from workbench.comm.messages import message_bits, plain
from workbench.keys import CLOCK, EXCHANGE, PARTICIPATION, TOPOLOGY, round_key

BITS_PER_BYTE = 8.0


def _view(table: Table):
    from workbench.rounds import peer_topology

    return peer_topology(table, table.idx.shape[0])[1]


def _make_local(spec, seed: int):
    """``local(state, data, t, view) -> (state, outbox)`` for all n peers: the
    round model's own ``local`` phase, every peer a participant."""
    from workbench.rounds import make_phases

    phase = make_phases(spec, seed).local
    peers = jnp.arange(spec.num_peers, dtype=jnp.int32)

    def local(state, data, t, view):
        return phase(state, *data, peers, t, view)

    return local


def make_tick(spec, seed: int):
    """``tick(clocked, t, data, topo_data, weights) -> clocked, Traffic, Sent``."""
    from workbench.rounds import Sent, Traffic, sample_peers

    if spec.algorithm.sessions is not None:
        return make_session_tick(spec, seed)
    alg, n, clock = spec.algorithm, spec.num_peers, spec.clock
    cfg, link = clock.config, clock.config.link
    m = spec.participants
    kind = EXCHANGES[alg.exchange]
    pairwise = alg.rounds.pairwise
    use_view = alg.uses_topology
    faults = cfg.faults
    # static facts that let a tick skip work (the common clocked cases)
    swaps = faults.swap_timeout is not None
    delays = link.delays
    # every peer takes part in every tick: a barrier without timeout or faults
    everyone = (
        cfg.mode == "sync"
        and cfg.timeout is None
        and not faults.any
        and m == n
        and not pairwise
    )

    def keep(mask, new, old):
        return new if everyone else rows_where(mask, new, old)

    def delay(bits, factor):
        """Seconds on each link: factor (latency + bytes / bandwidth)."""
        if link.bandwidth is None:
            return factor * jnp.full(bits.shape, link.latency, jnp.float32)
        return factor * (link.latency + bits / BITS_PER_BYTE / link.bandwidth)

    local = _make_local(spec, seed)
    redistribute = None
    if faults.redistribute is not None:

        def redistribute(params, data, moved, moved_n, down, alive):
            x, y, size = data
            go = make_redistribute(clock.sample_loss, faults.redistribute, y.shape[1])
            return go(params, x, y, size, moved, moved_n, down, alive)

    def lift_combine(state, inbox, view):
        return spec.lift(lambda s, i, v: alg.combine(s, i, v))(
            state, inbox, view if use_view else None
        )

    def from_ring(st1, ring, table, slot, delivered):
        """``combine`` of what the ring delivers (``average`` or ``gather``)."""
        cut = keep_edges(table, delivered)
        stale = stale_messages(ring, cut, slot)
        if alg.exchange == "average":
            inbox = weighted_sum(stale, cut)
        else:
            inbox = table_inbox(stale, cut)
        return lift_combine(st1, inbox, _view(cut) if use_view else None)

    def this_tick(st1, messages, ctx, table, delivered, sent_to, uploaded, receives):
        """The exchange of the tick's own messages over the delivered edges (and
        its further gossip steps); (state, receives, sent bits, server bits)."""
        cut = table if everyone and link.loss == 0 else keep_edges(table, delivered)
        cut_view = _view(cut) if use_view else None
        w = ctx.weights * uploaded
        ok = jnp.sum(w) > 0
        ctx = ctx._replace(arrays=cut, table=cut, weights=jnp.where(ok, w, 1.0))
        sent_table = table if everyone else keep_edges(table, sent_to)
        sent_ctx = ctx._replace(arrays=sent_table, table=sent_table)
        sent, srv_bits = kind.cost(messages, sent_ctx)
        if alg.exchange == "server":  # every finished upload; the mean back
            sent = jnp.where(receives, message_bits(messages), 0.0)
            receives = receives & ok
            srv_bits = srv_bits / n * jnp.sum(receives)
        st2 = lift_combine(st1, kind.deliver(messages, ctx), cut_view)
        for _ in range(alg.rounds.gossip_steps - 1):  # more gossip steps
            st2 = keep(receives, st2, st1)
            again = spec.lift(lambda s, v: alg.resend(s, v))(st2, cut_view)
            more = kind.prepare(again, ctx)
            sent = sent + kind.cost(more, sent_ctx)[0]
            st2 = lift_combine(st2, kind.deliver(more, ctx), cut_view)
        return st2, receives, sent, srv_bits

    def tick(carry: Clocked, t, data, topo_data, weights):
        st, ck = carry.alg, carry.clock
        now = ck.now[0]
        arrays = spec.topology_at(topo_data, t, round_key(seed, t, TOPOLOGY))
        base = as_table(arrays, n)
        table = keep_edges(base, ~ck.removed) if swaps else base
        view = _view(table) if use_view else None

        # 1. liveness
        alive = ck.up & scheduled_up(clock, now, n)
        rejoined = alive & ~ck.alive
        if faults.any and faults.rejoin == "neighbour":
            st = st._replace(params=pull_neighbour(st.params, table, alive, rejoined))

        # 1b. a peer that went down: its most representative samples go to
        # the live peers (dyn-fed), and each peer samples its overlay too
        moved, moved_n = ck.moved, ck.moved_n
        shipped = jnp.zeros((), jnp.int32)
        if redistribute is not None:
            down = ck.alive & ~alive
            moved, moved_n, shipped = redistribute(
                st.params, tuple(data), moved, moved_n, down, alive
            )
            data = overlay(*data, moved, moved_n)

        # 2. the cohort's idle live peers start a step
        chosen = sample_peers(round_key(seed, t, PARTICIPATION), n, m)
        busy = jnp.zeros((n,), bool).at[chosen].set(True) & alive
        d = clock.speed.draw(round_key(seed, t, CLOCK), ck.steps) * ck.factor
        if alg.exchange == "server" and cfg.mode == "async":
            d = d + clock.upload  # a client's cycle: compute, upload, download
        ready = jnp.where(busy & ((ck.ready <= now) | rejoined), now + d, ck.ready)

        # 3. every peer's step (kept for the active ones), the messages' delays
        new, outbox = local(st, tuple(data), t, view)
        key = round_key(seed, t, EXCHANGE)
        ctx = Context(
            table, table, jnp.arange(n, dtype=jnp.int32), weights, n, key, alg.message
        )  # no robust ``aggregate`` here: build_clock refuses one
        messages = kind.prepare(outbox, ctx)
        factor = link_factors(seed, table, link.spread)  # (n, k) each link's
        bits = message_bits(outbox)  # (n,) each peer's message
        if not delays:
            lag, longest = jnp.zeros(table.idx.shape), jnp.zeros((n,))
        else:
            if alg.exchange == "edge":  # (n, k) per edge
                lag = delay(message_bits(messages, batch_dims=2), factor)
            else:  # the sender's message on each of its links
                lag = delay(bits[table.idx], factor)
            lag = jnp.where(real_edges(table), lag, 0.0)
            longest = jax.ops.segment_max(lag.reshape(-1), table.idx.reshape(-1), n)

        # 4. the tick's end, and who finished a step by then
        upload = clock.upload if alg.exchange == "server" else 0.0
        if cfg.mode == "async":
            end = now + cfg.tick
        else:
            extra = upload if alg.exchange == "server" else longest
            end = jnp.max(jnp.where(busy, ready + extra, -jnp.inf))
            if cfg.timeout is not None:
                end = jnp.minimum(end, now + cfg.timeout)
            end = jnp.where(jnp.any(busy), end, now + cfg.tick)
        active = busy & (ready <= end)
        st1 = keep(active, new, st)

        # 5. who sends to whom, and what arrives
        sends = receives = active
        if pairwise:
            table, partner = pair_up(table, active, alive, seed, t)
            sends = receives = alive & (active | (partner >= 0))
            idle_msg = spec.lift(lambda s: alg.resend(s, None))(st1)
            outbox = messages = rows_where(active, outbox, idle_msg)
        sent_to = real_edges(table) & sends[table.idx] & alive[:, None]
        on_time = ready[table.idx] + lag <= end
        gone = lost(seed, link.loss, t, table.idx, jnp.arange(n)[:, None])
        delivered = sent_to & on_time & ~gone & receives[:, None]

        ring, server = carry.ring, carry.server
        if alg.server is not None:
            up = clock.upload if cfg.mode == "sync" else 0.0
            came = active & (ready + up <= end)
            inbox, server, sent, srv_bits = _serve(
                alg.server, server, outbox, came, ready
            )
            receives = came
            st2 = lift_combine(st1, inbox, None)
        elif ring is not None:  # async: the newest message that has arrived
            sent_at = jnp.minimum(ready, end)
            ring = push(ring, plain(outbox), sends, sent_at, bits, t)
            on_link = lambda b: delay(b, factor[..., None])  # noqa: E731
            slot, found = latest(ring, table, end, seed, link.loss, on_link)
            delivered = real_edges(table) & alive[table.idx] & found & receives[:, None]
            st2 = from_ring(st1, ring, table, slot, delivered)
            per_edge = sent_to * bits[table.idx]
            sent = jax.ops.segment_sum(per_edge.reshape(-1), table.idx.reshape(-1), n)
            srv_bits = jnp.zeros((), jnp.float32)
        else:  # sync (or async edge messages): this tick's messages only
            uploaded = active & (ready + upload <= end)  # server exchange
            st2, receives, sent, srv_bits = this_tick(
                st1, messages, ctx, table, delivered, sent_to, uploaded, receives
            )
        state = keep(receives, st2, st1)

        # 6. the clock moves on
        heard, removed = ck.heard, ck.removed
        if swaps:
            heard, removed = swap_timeout(ck, base, delivered, end, faults.swap_timeout)
        clock_state = ClockState(
            now=jnp.full((n,), end, jnp.float32),
            ready=ready,
            steps=ck.steps + active.astype(jnp.int32),
            up=next_up(clock, ck.up, end - now, seed, t),
            alive=alive,
            heard=heard,
            removed=removed,
            moved=moved,
            moved_n=moved_n,
            factor=ck.factor,
        )
        if redistribute is not None:  # features and label, 32 bits each
            per_sample = 32 * (math.prod(data[0].shape[2:]) + 1)
            srv_bits = srv_bits + shipped.astype(jnp.float32) * per_sample
        traffic = Traffic(sent, srv_bits, end, jnp.sum(active).astype(jnp.float32))
        carry = Clocked(state, clock_state, ring, server)
        return carry, traffic, Sent(jnp.arange(n, dtype=jnp.int32), outbox, None)

    return tick


def _serve(server, sstate, outbox, active, ready):
    """The uploads of ``active`` peers, applied in the order they finished
    (ties: peer id), then every uploader pulls the reply.

    Returns (inbox (n, ...), server state, upload bits (n,), server bits ())."""
    values = plain(outbox)
    n = active.shape[0]
    order = jnp.argsort(jnp.where(active, ready, jnp.inf), stable=True)

    def apply(s, peer):
        upload = jax.tree.map(lambda x: x[peer], values)
        return jax.lax.cond(
            active[peer], lambda: server.receive(s, upload, peer), lambda: s
        ), None

    sstate, _ = jax.lax.scan(apply, sstate, order)
    sstate, reply = server.send(sstate, active)
    inbox = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), reply)
    up_bits = jnp.where(active, message_bits(outbox), 0.0)
    down = message_bits(jax.tree.map(lambda x: x[None], plain(reply)))[0]
    return inbox, sstate, up_bits, down * jnp.sum(active)


def init_clocked(spec, seed: int, state, data, topo_data) -> Clocked:
    """The clocked state of a run: ``state`` (the algorithm's), a fresh clock,
    an empty ring (async gossip) and the server's initial state."""
    from workbench.clock.state import init_clock, init_ring

    n, clock, alg = spec.num_peers, spec.clock, spec.algorithm
    t0 = jnp.int32(0)
    table = as_table(spec.topology_at(topo_data, t0, round_key(seed, 0, TOPOLOGY)), n)
    ring = None
    if clock.buffer:
        view = _view(table) if alg.uses_topology else None
        local = _make_local(spec, seed)
        outbox = jax.eval_shape(lambda: local(state, tuple(data), t0, view)[1])
        ring = init_ring(plain(outbox), n, clock.buffer)
    server = None
    if alg.server is not None:
        server = alg.server.init(jax.tree.map(lambda x: x[0], state.params), n)
    capacity = clock.config.faults.capacity
    clock_state = init_clock(n, table.idx.shape[1], capacity, clock.factor)
    sessions = None
    if alg.sessions is not None:
        sessions = init_open(spec, state.params)
    return Clocked(state, clock_state, ring, server, sessions)
