"""SMPL's hyperedge scheduler: short-lived cliques of peers, formed every tick.

A hyperedge is a session of exactly ``uniform`` peers. Each tick (inside jit):

1. sessions whose time is up end, and their members are free again;
2. free slots are filled one after another (a ``lax.scan`` over slots, the
   peers vectorised): a random peer with spare capacity originates a new
   hyperedge, picks ``variety`` members at random among the peers with spare
   capacity that share none of its active hyperedges (new to it), then the
   rest among all peers with spare capacity. A slot stays empty when no such
   set exists.

The ``hyperedges`` topology is the synchronous form (``regular`` 1): the
cliques of one session as an in-neighbour table, redrawn every ``rounds``
rounds.

Invariants on every tick (property-tested): each active hyperedge has
``uniform`` distinct members; each peer is in at most ``regular`` active
hyperedges; each new hyperedge has at least ``variety`` members outside the
originator's other active hyperedges.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from workbench.comm import Table
from workbench.comm.arrays import weight_dtype
from workbench.errors import ScenarioError
from workbench.keys import KEY_IMPL, root_key
from workbench.topology.base import TOPOLOGIES, Sampler, fail, require


class Hyperedges(NamedTuple):
    members: jax.Array  # (S, uniform) int32 member ids of each slot (-1: empty)
    ends: jax.Array  # (S,) int32 tick at which each slot's session ends
    origin: jax.Array  # (S,) int32 the originator of each slot (-1: empty)


class Schedule(NamedTuple):
    n: int
    uniform: int  # members per hyperedge
    regular: int  # active hyperedges per peer, at most
    variety: int  # members new to the originator, at least

    @property
    def slots(self) -> int:
        return self.n * self.regular // self.uniform


def make_schedule(n: int, uniform: int, regular: int = 1, variety: int = 1) -> Schedule:
    """A checked schedule: one ScenarioError line for impossible settings."""
    if not 2 <= uniform <= n:
        raise ScenarioError(
            "algorithm.uniform", f"must be in 2..{n} (peers), got {uniform}"
        )
    if regular < 1:
        raise ScenarioError("algorithm.regular", f"must be >= 1, got {regular}")
    if not 0 <= variety <= uniform - 1:
        raise ScenarioError(
            "algorithm.variety",
            f"must be in 0..{uniform - 1} (uniform - 1), got {variety}",
        )
    return Schedule(n, uniform, regular, variety)


def empty(schedule: Schedule) -> Hyperedges:
    s, u = schedule.slots, schedule.uniform
    return Hyperedges(
        jnp.full((s, u), -1, jnp.int32), jnp.zeros((s,), jnp.int32),
        jnp.full((s,), -1, jnp.int32),
    )  # fmt: skip


def incidence(h: Hyperedges, n: int) -> jax.Array:
    """(S, n) bool: peer j is a member of slot s."""
    return jnp.any(h.members[:, :, None] == jnp.arange(n)[None, None, :], axis=1)


def _pick(key, allowed, count: int):
    """(count,) random distinct indices where ``allowed``; (ids, all found)."""
    score = jnp.where(allowed, jax.random.uniform(key, allowed.shape), -1.0)
    top, ids = jax.lax.top_k(score, count) if count else (jnp.zeros(0), jnp.zeros(0))
    return ids.astype(jnp.int32), jnp.all(top >= 0)


def step(schedule: Schedule, h: Hyperedges, t, key, durations) -> Hyperedges:
    """Tick t: end finished sessions, then fill free slots. ``durations`` (S,)
    int32 >= 1: how many ticks a session formed in each slot lasts."""
    n, u, v = schedule.n, schedule.uniform, schedule.variety
    durations = jnp.asarray(durations, jnp.int32)
    done = h.ends <= t
    h = Hyperedges(
        jnp.where(done[:, None], -1, h.members),
        h.ends,
        jnp.where(done, -1, h.origin),
    )

    def fill(h: Hyperedges, slot):
        k_o, k_new, k_rest = jax.random.split(jax.random.fold_in(key, slot), 3)
        inc = incidence(h, n)  # (S, n)
        load = jnp.sum(inc, 0)  # (n,) active hyperedges of each peer
        spare = load < schedule.regular
        origin, found_o = _pick(k_o, spare, 1)
        o = origin[0]
        mine = inc[:, o]  # (S,) the originator's active slots
        known = jnp.any(inc & mine[:, None], 0)  # shares an active hyperedge
        others = spare & (jnp.arange(n) != o)
        fresh, found_f = _pick(k_new, others & ~known, v)
        taken = jnp.zeros((n,), bool).at[fresh].set(v > 0)
        rest, found_r = _pick(k_rest, others & ~taken, u - 1 - v)
        members = jnp.concatenate([origin, fresh, rest])
        ok = (h.members[slot, 0] < 0) & found_o & found_f & found_r
        return Hyperedges(
            h.members.at[slot].set(jnp.where(ok, members, h.members[slot])),
            h.ends.at[slot].set(jnp.where(ok, t + durations[slot], h.ends[slot])),
            h.origin.at[slot].set(jnp.where(ok, o, h.origin[slot])),
        ), None

    h, _ = jax.lax.scan(fill, h, jnp.arange(schedule.slots))
    return h


def clique_table(h: Hyperedges, n: int) -> Table:
    """(n, uniform) in-neighbour table of disjoint hyperedges (``regular`` 1):
    column 0 the peer itself, then its hyperedge's other members, each with
    weight 1/uniform; a peer in none keeps weight 1 on itself."""
    s, u = h.members.shape
    flat = h.members.reshape(-1)
    slot = (
        jnp.full((n,), -1, jnp.int32)
        .at[jnp.where(flat >= 0, flat, n)]
        .set(jnp.repeat(jnp.arange(s, dtype=jnp.int32), u), mode="drop")
    )
    me = jnp.arange(n, dtype=jnp.int32)
    row = h.members[jnp.maximum(slot, 0)]  # (n, u)
    order = jnp.argsort(row != me[:, None], axis=1, stable=True)  # self first
    row = jnp.take_along_axis(row, order, axis=1)
    inside = (slot >= 0)[:, None]
    idx = jnp.where(inside, row, me[:, None])
    w = jnp.where(inside, 1.0 / u, jnp.eye(1, u, dtype=jnp.float32)[0])
    return Table(idx, w.astype(weight_dtype()))


@dataclasses.dataclass(frozen=True)
class Sessions:
    """Round sampler: the hyperedges of session t // ``rounds`` (a session
    spans ``rounds`` rounds), drawn afresh from the run's seed."""

    schedule: Schedule
    rounds: int

    @property
    def info(self) -> dict:
        return {"session_rounds": self.rounds, "uniform": self.schedule.uniform}

    def __call__(self, data, t, key) -> Table:
        del key  # the same cliques for every round of a session
        base = jax.random.wrap_key_data(data, impl=KEY_IMPL)
        wave = jax.random.fold_in(base, t // self.rounds)
        durations = jnp.ones((self.schedule.slots,), jnp.int32)
        h = step(self.schedule, empty(self.schedule), 0, wave, durations)
        return clique_table(h, self.schedule.n)


@TOPOLOGIES.register("hyperedges")
def hyperedges(n: int, seed: int, uniform: int = 3, rounds: int = 3):
    """SMPL's sessions: disjoint random cliques of ``uniform`` peers, new every
    ``rounds`` rounds (each peer in at most one at a time; a peer left over
    sits the session out)."""
    require(rounds >= 1, "rounds", f"must be >= 1, got {rounds}")
    if not 2 <= uniform <= n:
        fail("uniform", f"must be in 2..{n} (peers), got {uniform}")
    schedule = Schedule(n, uniform, 1, 0)
    data = jax.random.key_data(root_key(seed))
    return Sampler(Sessions(schedule, rounds), data, doubly_stochastic=True)
