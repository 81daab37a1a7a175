"""Sessions on the virtual clock (SMPL): cliques that form and end on their own.

An algorithm with ``sessions`` runs here instead of in rounds: ``S = n *
regular / uniform`` slots (workbench.topology.hyperedges) each hold one
session at a time, and a peer is in up to ``regular`` of them at once. Tick
t covers virtual time [t tau, (t + 1) tau):

1. **form**: free slots fill at time t tau. In each new session the members
   offer their scores, the chosen sender's kept model is the start, and every
   member trains from it on its own batches (its delta is what it will send;
   the mean of the members' deltas is kept with the slot). The session lasts
   its slowest member's step (the compute model's draw times its straggler
   factor) plus three transfers one after another (offer, start model,
   deltas: latency + bytes / bandwidth each, the largest delta), rounded up
   to whole ticks (at least one).
2. **finish**: sessions that end by (t + 1) tau apply their mean delta on
   every member (``apply``: keep the better model), one slot after another,
   so a member of two sessions ending in the same tick sees both in order.
   Training happens at the start because nothing a member does during the
   session changes it: its data and the start are fixed when it forms.

Bits, per member and recipient (u - 1 of them): its 32-bit score at the
start, the start model from the sender, its coded delta at the end. A peer's
``clock.steps`` counts the sessions it finished.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from workbench.algorithms.base import rows_where, set_rows, take_rows
from workbench.clock.state import ClockState
from workbench.compression import uncompressed_bits
from workbench.keys import CLOCK, LOCAL, SESSION, round_key
from workbench.topology.hyperedges import Hyperedges, empty, make_schedule, step

PyTree = Any
BITS_PER_BYTE = 8.0
SCORE_BITS = 32.0  # a member's offer: its validation accuracy, float32


class Open(NamedTuple):
    """The sessions in progress, one per slot (leading axis S)."""

    edges: Hyperedges  # members (S, u), ends (S,) tick it ends at, origin (S,)
    start: PyTree  # leaves (S, ...) the session's starting model
    mean: PyTree  # leaves (S, ...) the mean of its members' deltas
    bits: jax.Array  # (S, u) float32 each member's delta on one link


def schedule_of(spec):
    s = spec.algorithm.sessions
    return make_schedule(spec.num_peers, s.uniform, s.regular, s.variety)


def init_open(spec, params) -> Open:
    """No session yet; ``params`` the stacked models (leaves (n, ...))."""
    schedule = schedule_of(spec)
    slots = schedule.slots

    def zeros(a):
        return jnp.zeros((slots,) + a.shape[1:], a.dtype)

    return Open(
        empty(schedule),
        jax.tree.map(zeros, params),
        jax.tree.map(zeros, params),
        jnp.zeros((slots, schedule.uniform), jnp.float32),
    )


def make_session_tick(spec, seed: int):
    """``tick(clocked, t, data, topo_data, weights) -> clocked, Traffic, Sent``."""
    from workbench.rounds import Sent, Traffic, sample_batches

    alg, n, clock = spec.algorithm, spec.num_peers, spec.clock
    proto, schedule = alg.sessions, schedule_of(spec)
    slots, u = schedule.slots, schedule.uniform
    tau, link = clock.config.tick, clock.config.link
    per_byte = 0.0 if link.bandwidth is None else 1.0 / link.bandwidth
    steps, batch_size = spec.local_steps, spec.batch_size

    def transfer(bits):
        """Seconds one message of ``bits`` takes on a link."""
        return link.latency + bits / BITS_PER_BYTE * per_byte

    def train_slot(st, members, origin, key, data):
        """Every member's delta from ``origin``: (members' states, mean delta,
        (u,) delta bits)."""
        x, y, size = data

        def one(state, peer, k):
            kb, kc = jax.random.split(k)
            batches = sample_batches(
                kb, x[peer], y[peer], size[peer], steps, batch_size
            )
            return proto.train(state, origin, batches, kc)

        keys = jax.random.split(key, u)
        states, deltas = jax.vmap(one)(take_rows(st, members), members, keys)
        mean = jax.tree.map(lambda d: jnp.mean(d, axis=0), deltas.value)
        return states, mean, deltas.bits

    def form(st, ck: ClockState, op: Open, t, data):
        """Fills the free slots at t tau; (state, open, (n,) bits sent)."""
        key = round_key(seed, t, SESSION)
        k_sched, k_choose = jax.random.split(key)
        edges = step(schedule, op.edges, t, k_sched, jnp.ones((slots,), jnp.int32))
        fresh = (edges.members[:, 0] >= 0) & (op.edges.members[:, 0] < 0)
        members = jnp.maximum(edges.members, 0)  # (S, u)
        scores = jax.vmap(proto.score)(st)[members]  # (S, u)
        sender = jax.vmap(proto.choose)(
            members, scores, jax.random.split(k_choose, slots)
        )
        start = take_rows(st.params, sender)  # (S, ...) each sender's kept model
        train_key = round_key(seed, t, LOCAL)

        def one_slot(carry, s):
            st, mean, bits = carry

            def go(st, mean, bits):
                origin = take_rows(start, s)
                key = jax.random.fold_in(train_key, s)
                rows, m, b = train_slot(st, members[s], origin, key, data)
                mean = set_rows(mean, s, m)
                return set_rows(st, members[s], rows), mean, bits.at[s].set(b)

            return jax.lax.cond(fresh[s], go, lambda *c: c, st, mean, bits), None

        carry = (st, op.mean, op.bits)
        (st, mean, bits), _ = jax.lax.scan(one_slot, carry, jnp.arange(slots))
        model_bits = float(uncompressed_bits(take_rows(start, 0)))
        d = clock.speed.draw(round_key(seed, t, CLOCK), ck.steps) * ck.factor
        seconds = (
            jnp.max(d[members], axis=1)
            + transfer(SCORE_BITS)
            + transfer(model_bits)
            + transfer(jnp.max(bits, axis=1))
        )
        ticks = jnp.maximum(1, jnp.ceil(seconds / tau * (1 - 1e-6))).astype(jnp.int32)
        edges = edges._replace(ends=jnp.where(fresh, t + ticks, edges.ends))
        op = Open(edges, rows_where(fresh, start, op.start), mean, bits)
        # offers from every member, the start model from each sender
        offers = jnp.repeat(jnp.where(fresh, SCORE_BITS * (u - 1), 0.0), u)
        sent = jax.ops.segment_sum(offers, members.reshape(-1), n)
        start_bits = jnp.where(fresh, model_bits * (u - 1), 0.0)
        sent = sent + jax.ops.segment_sum(start_bits, sender, n)
        return st, op, sent

    def finish(st, op: Open, t):
        """Ends the sessions due by (t + 1) tau; (state, open, (n,) sessions
        each peer finished, (n,) bits sent)."""
        due = (op.edges.members[:, 0] >= 0) & (op.edges.ends <= t + 1)
        members = jnp.maximum(op.edges.members, 0)

        def one_slot(st, s):
            def go(st):
                origin, mean = take_rows(op.start, s), take_rows(op.mean, s)
                members_ = take_rows(st, members[s])
                rows = jax.vmap(proto.apply, (0, None, None))(members_, origin, mean)
                return set_rows(st, members[s], rows)

            return jax.lax.cond(due[s], go, lambda st: st, st), None

        st, _ = jax.lax.scan(one_slot, st, jnp.arange(slots))
        ids = members.reshape(-1)
        done = jax.ops.segment_sum(
            jnp.repeat(due, u).astype(jnp.int32), ids, n
        )  # sessions finished per peer
        deltas = jnp.where(due[:, None], op.bits * (u - 1), 0.0).reshape(-1)
        sent = jax.ops.segment_sum(deltas, ids, n)
        gone = due[:, None]
        edges = op.edges._replace(
            members=jnp.where(gone, -1, op.edges.members),
            origin=jnp.where(due, -1, op.edges.origin),
        )
        return st, op._replace(edges=edges), done, sent

    def tick(carry, t, data, topo_data, weights):
        del topo_data, weights
        st, ck, op = carry.alg, carry.clock, carry.sessions
        data = tuple(data)
        st, op, sent = form(st, ck, op, t, data)
        st, op, done, more = finish(st, op, t)
        end = (t + 1).astype(jnp.float32) * tau
        ck = ck._replace(now=jnp.full((n,), end, jnp.float32), steps=ck.steps + done)
        traffic = Traffic(
            sent + more, jnp.zeros((), jnp.float32), end,
            jnp.sum(done).astype(jnp.float32),  # member trainings finished
        )  # fmt: skip
        peers = jnp.arange(n, dtype=jnp.int32)  # no outbox: the clock captures none
        return carry._replace(alg=st, clock=ck, sessions=op), traffic, Sent(peers, None)

    return tick
