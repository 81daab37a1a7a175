"""The jitted core: a round's phases, one round, a chunk of rounds under ``lax.scan``.

Everything here is a pure function of arrays. Topology arrays and data are
arguments (never captured constants), so a new graph or dataset of the same
shape never recompiles. Random draws use ``fold_in(seed, round, purpose, peer)``
so every execution strategy gives the same numbers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.algorithms.base import (
    Algorithm,
    PeerTopo,
    cohort_size,
    set_rows,
    take_rows,
)
from workbench.comm.arrays import Table
from workbench.comm.exchange import EXCHANGES, Context, out_edges
from workbench.comm.kernels import as_table
from workbench.comm.messages import plain
from workbench.keys import (  # noqa: F401  (re-exported)
    EXCHANGE,
    KEY_IMPL,
    LOCAL,
    PARTICIPATION,
    TOPOLOGY,
    root_key,
    round_key,
)
from workbench.objective import Batch


class PeerData(NamedTuple):
    x: jax.Array  # (n, m_max, *input_shape) float32, zero padded
    y: jax.Array  # (n, m_max) int32
    size: jax.Array  # (n,) int32 true number of examples


class EvalData(NamedTuple):
    train: PeerData  # (n, m_eval, ...) first examples of each peer's train set
    val: PeerData  # (n, m_val, ...)
    test_x: jax.Array  # (m_test, *input_shape), padded to the eval batch
    test_y: jax.Array  # (m_test,)
    test_mask: jax.Array  # (m_test,) float32


class Capture(NamedTuple):
    """Which outboxes a chunk returns: those ``peers`` sent at chosen rounds.

    The rounds are ``rounds`` (0-based round indices, sorted) when given, else
    every ``every``-th round of the chunk from its first. Memory is bounded by
    ``slots(length) x len(peers)`` messages per chunk.
    """

    peers: tuple[int, ...]
    every: int = 1
    rounds: tuple[int, ...] | None = None
    # also what each captured peer sends at gossip step 1 (multi-step gossip):
    # with its in-neighbours' step-0 messages, the victim's own model (the
    # marginalized-victim attacker)
    second: bool = False

    def slots(self, length: int) -> int:
        """Most captured rounds any chunk of ``length`` rounds holds (>= 1)."""
        if self.rounds is None:
            return -(-length // self.every)
        r = self.rounds
        return max(
            [bisect.bisect_left(r, a + length) - i for i, a in enumerate(r)] + [1]
        )

    def slot(self, t, start):
        """(slot of round t in the chunk that starts at ``start``, whether kept)."""
        if self.rounds is None:
            return (t - start) // self.every, (t - start) % self.every == 0
        r = jnp.asarray(self.rounds, jnp.int32)
        pos = jnp.searchsorted(r, t)
        kept = r[jnp.minimum(pos, r.shape[0] - 1)] == t
        return pos - jnp.searchsorted(r, start), kept


class Captured(NamedTuple):
    rounds: jax.Array  # (slots,) int32 round of each slot, -1 if unused
    sent: jax.Array  # (slots, p) bool: the captured peer sent that round
    outbox: Any  # leaves (slots, p, ...): what each captured peer sent
    second: Any = None  # leaves (slots, p, ...): its gossip step-1 message


class Sent(NamedTuple):
    """A round's messages: the participants' first and, if asked, step 1's."""

    peers: jax.Array  # (m,) int participants
    outbox: Any  # leaves (m, ...) what they sent first
    second: Any = None  # leaves (n, ...) what every peer sent at gossip step 1


class RoundSpec(NamedTuple):
    """Static structure of a round (the algorithm brings its own ``rounds``)."""

    algorithm: Algorithm
    topology_at: Callable  # (topo_data, t, key) -> kernel arrays
    lift: Callable  # per-peer fn -> stacked fn (execution strategy)
    num_peers: int
    batch_size: int
    capture: Capture | None = None
    clock: Any = None  # a workbench.clock.ClockSpec: rounds are ticks of virtual time

    @property
    def participants(self) -> int:
        """Peers active per round (== num_peers: everyone)."""
        return cohort_size(self.algorithm.rounds.participation, self.num_peers)

    @property
    def local_steps(self) -> int:
        return self.algorithm.rounds.local_steps


def sample_batches(key, x, y, size, steps: int, batch_size: int) -> Batch:
    """``steps`` batches drawn uniformly (with replacement) from one peer's data."""
    idx = jax.random.randint(key, (steps, batch_size), 0, jnp.maximum(size, 1))
    return Batch(x[idx], y[idx], jnp.ones((steps, batch_size), jnp.float32))


def sample_peers(key, n: int, m: int) -> jax.Array:
    """(m,) int32 sorted indices of m distinct peers drawn uniformly; all if m >= n."""
    if m >= n:
        return jnp.arange(n, dtype=jnp.int32)
    return jnp.sort(jax.random.permutation(key, n)[:m]).astype(jnp.int32)


def peer_topology(arrays, n: int) -> tuple[Table, PeerTopo]:
    """The round's W as an in-neighbour table, and each peer's view (n, ...)."""
    table = as_table(arrays, n)
    self_idx = jnp.arange(n, dtype=table.idx.dtype)[:, None]
    mask = (table.weight != 0) & (table.idx != self_idx)
    degree = jnp.sum(mask, axis=1).astype(jnp.int32)
    out = out_edges(arrays, n).astype(jnp.int32)
    return table, PeerTopo(table.idx, table.weight, mask, degree, out)


class Phases(NamedTuple):
    """A round as separately jittable phases.

    The simulated chunk composes them inside ``lax.scan``; a network transport
    calls ``local`` and ``combine`` for its block of peers and does the
    exchange itself. ``local`` and ``combine`` take stacked arguments (leading
    axis: the block's peers); a block of one peer is a leading axis of 1.
    """

    select: Callable  # (t) -> (m,) int32 participants
    topology: Callable  # (topo_data, t) -> (arrays, table | None, topo (n,) | None)
    local: Callable  # (state, x, y, size, peers, t, topo) -> state, outbox
    exchange: Callable  # (outbox, arrays, table, peers, weights, t) -> inbox, sent, srv
    combine: Callable  # (state, inbox, topo) -> state
    resend: Callable | None  # (state, topo) -> outbox (gossip steps > 1)
    # (arrays, table, peers, weights, t) -> the exchange's Context (a network
    # transport runs the exchange's prepare, cost and deliver apart)
    context: Callable | None = None


def make_phases(spec: RoundSpec, seed: int) -> Phases:
    alg, n, m = spec.algorithm, spec.num_peers, spec.participants
    kind = EXCHANGES[alg.exchange]
    if m < n and alg.exchange != "server":
        raise ValueError(
            f"partial participation needs a server exchange, not '{alg.exchange}'"
        )
    if alg.rounds.gossip_steps > 1 and alg.resend is None:
        raise ValueError("gossip_steps > 1 needs the algorithm's resend function")
    wants_table = kind.needs_table or alg.uses_topology

    def select(t):
        return sample_peers(round_key(seed, t, PARTICIPATION), n, m)

    def topology(topo_data, t):
        arrays = spec.topology_at(topo_data, t, round_key(seed, t, TOPOLOGY))
        if not wants_table:
            return arrays, None, None
        table, view = peer_topology(arrays, n)
        return arrays, table, view

    def peer_local(state, x, y, size, peer, t, topo):
        key = jax.random.fold_in(round_key(seed, t, LOCAL), peer)
        kb, kl = jax.random.split(key)
        batches = sample_batches(kb, x, y, size, spec.local_steps, spec.batch_size)
        return alg.local(state, batches, topo if alg.uses_topology else None, kl)

    def local(state, x, y, size, peers, t, topo):
        t = jnp.broadcast_to(t, peers.shape)
        return spec.lift(peer_local)(state, x, y, size, peers, t, topo)

    def context(arrays, table, peers, weights, t):
        key = round_key(seed, t, EXCHANGE)
        return Context(
            arrays, table, peers, weights, n, key, alg.message, alg.aggregate
        )

    def exchange(outbox, arrays, table, peers, weights, t):
        return kind.run(outbox, context(arrays, table, peers, weights, t))

    def combine(state, inbox, topo):
        view = topo if alg.uses_topology else None
        return spec.lift(lambda s, i, v: alg.combine(s, i, v))(state, inbox, view)

    resend = None
    if alg.resend is not None:

        def resend(state, topo):
            view = topo if alg.uses_topology else None
            return spec.lift(lambda s, v: alg.resend(s, v))(state, view)

    return Phases(select, topology, local, exchange, combine, resend, context)


def init_state(spec: RoundSpec, seed: int, params, keys, topo_data):
    """The stacked initial state: ``alg.init`` per peer (params, keys (n, ...)).

    An algorithm with ``init_topology`` (per-edge state, padded to the table's
    width) also gets its peer's view of round 0's graph.
    """
    alg = spec.algorithm
    if not alg.init_topology:
        return jax.vmap(alg.init)(params, keys)
    _, _, view = make_phases(spec, seed).topology(topo_data, jnp.int32(0))
    return jax.vmap(alg.init)(params, keys, view)


class Traffic(NamedTuple):
    sent: jax.Array  # (n,) bits each peer sent this round
    server: jax.Array  # () bits the server sent this round
    time: jax.Array | None = None  # () virtual time at the round's end (clocked)
    active: jax.Array | None = None  # () peers that finished a step (clocked)


def make_round(spec: RoundSpec, seed: int) -> Callable:
    """``round(state, t, data, topo_data, weights) -> state, Traffic, outbox``.

    Only the ``spec.participants`` sampled peers run ``local`` (the others are
    not computed at all); ``outbox`` is a :class:`Sent`: the participants'
    first message and, when ``spec.capture.second``, every peer's message at
    gossip step 1.
    """
    if spec.clock is not None:
        from workbench.clock.tick import make_tick

        return make_tick(spec, seed)
    n, m = spec.num_peers, spec.participants
    ph = make_phases(spec, seed)
    want_second = spec.capture is not None and spec.capture.second

    def one_round(state, t, data: PeerData, topo_data, weights):
        peers = ph.select(t)
        take = (lambda tree: tree) if m >= n else partial(take_rows, ids=peers)
        arrays, table, view = ph.topology(topo_data, t)
        sub, outbox = ph.local(take(state), *take(tuple(data)), peers, t, take(view))
        state = sub if m >= n else set_rows(state, peers, sub)
        w = take(weights)
        inbox, sent, server = ph.exchange(outbox, arrays, table, peers, w, t)
        state = ph.combine(state, inbox, view)

        def gossip(carry, _):  # one more exchange + combine (gossip_steps > 1)
            state, sent, server = carry
            again = ph.resend(state, view)
            inbox, more, srv = ph.exchange(again, arrays, table, peers, w, t)
            return (ph.combine(state, inbox, view), sent + more, server + srv), None

        more_steps = spec.algorithm.rounds.gossip_steps - 1
        second = None
        if more_steps and want_second:  # step 1 outside the scan, to keep it
            second = plain(ph.resend(state, view))
            (state, sent, server), _ = gossip((state, sent, server), None)
            more_steps -= 1
        if more_steps:  # a scan, so T gossip steps compile once, not T times
            carry = (state, sent, server)
            (state, sent, server), _ = jax.lax.scan(gossip, carry, None, more_steps)
        return state, Traffic(sent, server), Sent(peers, outbox, second)

    return one_round


def _capture_init(capture: Capture, shapes: Sent, length: int) -> Captured:
    slots, p = capture.slots(length), len(capture.peers)

    def zeros(tree):
        return jax.tree.map(
            lambda s: jnp.zeros((slots, p) + s.shape[1:], s.dtype), tree
        )

    return Captured(
        jnp.full((slots,), -1, jnp.int32),
        jnp.zeros((slots, p), bool),
        zeros(shapes.outbox),
        None if shapes.second is None else zeros(shapes.second),
    )


def _capture_step(buf: Captured, capture: Capture, t, start, sent_: Sent):
    """Writes the captured peers' messages of round t into their slot."""
    peers = sent_.peers
    chosen = jnp.asarray(capture.peers, jnp.int32)
    pos = jnp.searchsorted(peers, chosen)
    pos = jnp.minimum(pos, peers.shape[0] - 1)
    sent = peers[pos] == chosen
    slot, keep = capture.slot(t, start)
    slot = jnp.clip(slot, 0, buf.rounds.shape[0] - 1)
    values = jax.tree.map(lambda x: x[pos], plain(sent_.outbox))

    def write(old, new):
        return old.at[slot].set(jnp.where(keep, new, old[slot]))

    second = buf.second
    if second is not None:  # step 1's messages are every peer's: index by id
        step1 = jax.tree.map(lambda x: x[chosen], sent_.second)
        second = jax.tree.map(write, second, step1)
    return Captured(
        write(buf.rounds, t),
        write(buf.sent, sent),
        jax.tree.map(write, buf.outbox, values),
        second,
    )


def make_chunk(spec: RoundSpec, seed: int) -> Callable:
    """``chunk(state, data, topo_data, weights, start, length)``: rounds start..+length.

    Returns (state, Traffic with leaves (length, ...)) and, with
    ``spec.capture``, a third value: the :class:`Captured` outboxes.

    The seed is an argument of the compiled program, not a constant in it:
    runs that differ only in their seed (and data values) compile to the same
    program, which a persistent compilation cache then serves (a sweep's
    seeds). Its draws are those of the constant seed, bit for bit.
    """

    def body(state, data, topo_data, weights, start, seed_, length: int):
        return chunk_body(spec, seed_)(state, data, topo_data, weights, start, length)

    jitted = jax.jit(body, static_argnames="length", donate_argnums=0)
    return SeededChunk(jitted, np.uint32(seed))


class SeededChunk(NamedTuple):
    """A jitted chunk called, lowered and compiled as if the seed were baked in."""

    jitted: Callable  # (state, data, topo_data, weights, start, seed, length)
    seed: np.uint32

    def __call__(self, state, data, topo_data, weights, start, length: int):
        return self.jitted(state, data, topo_data, weights, start, self.seed,
                           length=length)  # fmt: skip

    def lower(self, *args, **static):
        return _SeededLowered(self.jitted.lower(*args, self.seed, **static), self.seed)

    def _cache_size(self) -> int:  # programs compiled so far (jax's own count)
        return self.jitted._cache_size()


class _SeededLowered(NamedTuple):
    lowered: Any
    seed: np.uint32

    def compile(self):
        return _SeededCompiled(self.lowered.compile(), self.seed)


class _SeededCompiled(NamedTuple):
    compiled: Any
    seed: np.uint32

    def __call__(self, *args):
        return self.compiled(*args, self.seed)

    def memory_analysis(self):
        return self.compiled.memory_analysis()


def chunk_body(spec: RoundSpec, seed) -> Callable:
    """:func:`make_chunk`'s function before ``jax.jit``; ``seed`` may be traced
    (shadow runs vmap whole runs with a seed each)."""
    one_round = make_round(spec, seed)
    capture = spec.capture

    def chunk(state, data, topo_data, weights, start, length: int):
        def body(carry, t):
            st, buf = carry
            st, traffic, sent = one_round(st, t, data, topo_data, weights)
            if capture is not None:
                buf = _capture_step(buf, capture, t, start, sent)
            return (st, buf), traffic

        buf = None
        if capture is not None:
            shapes = jax.eval_shape(
                lambda: one_round(state, start, data, topo_data, weights)[2]
            )
            shapes = shapes._replace(outbox=plain(shapes.outbox))
            buf = _capture_init(capture, shapes, length)
        rounds = start + jnp.arange(length, dtype=jnp.int32)
        (state, buf), traffic = jax.lax.scan(body, (state, buf), rounds)
        return (state, traffic) if capture is None else (state, traffic, buf)

    return chunk
