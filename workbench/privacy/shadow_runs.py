"""Decentralized shadow runs: S copies of the whole run, vmapped as a stacked axis.

A shadow run is the scenario itself (same graph, algorithm, schedule) with
every peer's local dataset redrawn: peer p's candidates are its own evaluated
training examples T_p and as many test examples U_p (disjoint blocks of the
test set while it lasts), and shadow run s trains peer p on a random half of
them; shadows 2i and 2i + 1 take complementary halves, so each candidate is
IN peer p's data for exactly S/2 shadow runs. Every shadow run keeps the
dataset's shapes (a peer holds |T_p| examples, as in the real run), so the S
runs are one ``jax.vmap`` of the engine's own chunk, and each captures the
same victims at the same rounds. Each run has its own seed, so its own
initial model, batch draws and defense noise (a shadow that shared the
target's noise draws would in effect know the defense's noise).

The attack then reads, for the message of victim v at round r, the target's
statistic on C_v = T_v + U_v next to the shadow runs' statistic on the same
examples from the same (round, victim, attacker) message: members T_v,
non-members U_v. The runs advance chunk by chunk with the real run and keep
their state between chunks (``Attacker.cache``); a resumed run, or
``workbench privacy``, replays them from round 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.privacy.run import AttackContext, Tables, tables_of


class RunSetup(NamedTuple):
    """What shadow runs need from the simulation (built by the engine)."""

    chunk: Callable  # seed -> the engine's unjitted chunk (state, data, topo, w, ...)
    init: Callable  # key -> one run's stacked initial state
    data: Any  # PeerData (host arrays): the run's training data, (n, m, ...)
    topo_data: Any
    weights: Any  # (n,)
    eval_every: int
    rounds: int


class Candidates(NamedTuple):
    """Each peer's candidate examples, as pool indices."""

    members: list[np.ndarray]  # T_p: (k_p,) its evaluated training examples
    outsiders: list[np.ndarray]  # U_p: (k_p,) test examples standing against them


class ShadowMessages(NamedTuple):
    """The shadow runs' view of every message attacked in one call."""

    tables: list[Tables]  # per shadow run: fields (M, P) in ctx.received order
    in_mask: np.ndarray  # (S, P, n) bool: pool example in peer p's data in run s
    candidates: Candidates  # each peer's T_p and U_p


def candidates(ctx: AttackContext) -> Candidates:
    """T_p and U_p for every peer; U_p are consecutive test blocks, cycling.

    A peer with more evaluated examples than the test set has keeps its first
    |test| (U_p must not repeat an example).
    """
    pool = ctx.pool
    test = np.flatnonzero((pool.owner < 0) & pool.valid)
    members, outsiders, offset = [], [], 0
    for p in range(ctx.num_peers):
        t = np.flatnonzero((pool.owner == p) & pool.valid)[: test.size]
        members.append(t)
        outsiders.append(test[(offset + np.arange(t.size)) % test.size])
        offset += t.size
    return Candidates(members, outsiders)


def draw_halves(seed: int, count: int, cands: Candidates) -> list[np.ndarray]:
    """Per peer (S, 2 k_p) bool: which candidates run s trains peer p on."""
    rng = np.random.default_rng([seed, 0x5AD0])
    out = []
    for t in cands.members:
        k = t.size
        first = np.stack([rng.permutation(2 * k) < k for _ in range(count // 2)])
        out.append(np.stack([first, ~first], axis=1).reshape(count, 2 * k))
    return out


def shadow_data(ctx: AttackContext, setup: RunSetup, cands, halves):
    """(PeerData with leaves (S, n, m, ...), in_mask (S, P, n))."""
    pool_x, pool_y = np.asarray(ctx.pool.x), np.asarray(ctx.pool.y)
    x0, y0 = np.asarray(setup.data.x), np.asarray(setup.data.y)
    count, n = halves[0].shape[0], ctx.num_peers
    x = np.zeros((count,) + x0.shape, x0.dtype)
    y = np.zeros((count,) + y0.shape, y0.dtype)
    size = np.zeros((count, n), np.asarray(setup.data.size).dtype)
    in_mask = np.zeros((count, pool_y.shape[0], n), bool)
    for p in range(n):
        both = np.concatenate([cands.members[p], cands.outsiders[p]])  # (2 k,)
        for s in range(count):
            chosen = both[halves[p][s]]
            x[s, p, : chosen.size] = pool_x[chosen]
            y[s, p, : chosen.size] = pool_y[chosen]
            size[s, p] = chosen.size
            in_mask[s, chosen, p] = True
    data = type(setup.data)(jnp.asarray(x), jnp.asarray(y), jnp.asarray(size))
    return data, in_mask


def shadow_seeds(seed: int, count: int) -> jax.Array:
    """(S,) int32 seeds of the shadow runs, none equal to the run's own."""
    return (seed + 1 + jnp.arange(count, dtype=jnp.int32) * 7919) % (2**31 - 1)


def _stepper(setup: RunSetup, length: int, steps: dict) -> Callable:
    """One jitted vmapped chunk of ``length`` rounds, compiled once per length."""
    if length not in steps:

        def one(state, data, start, seed):
            chunk = setup.chunk(seed)
            return chunk(state, data, setup.topo_data, setup.weights, start, length)

        steps[length] = jax.jit(jax.vmap(one, in_axes=(0, 0, None, 0)))
    return steps[length]


def advance(setup: RunSetup, runs, data, seeds, start: int, stop: int, steps=None):
    """Runs every shadow from round ``start`` to ``stop``; the chunks' captures.

    ``seeds`` (S,): each run's seed; ``steps`` caches the compiled chunks.
    """
    captured, steps = [], {} if steps is None else steps
    while start < stop:
        length = min(setup.eval_every, setup.rounds - start)
        runs, _, buf = _stepper(setup, length, steps)(
            runs, data, jnp.int32(start), seeds
        )
        captured.append(jax.device_get(buf))
        start += length
    return runs, captured


def shadow_messages(
    ctx: AttackContext, count: int, receive: Callable
) -> ShadowMessages:
    """The shadow runs' messages for every message of ``ctx.received``.

    Args:
      receive: ``Captured -> Received`` for one shadow run (the Attacker's, so
        that colluding sets and the marginalized attacker are there too).
    """
    setup: RunSetup = ctx.runs
    key = ("runs", count)
    if key not in ctx.cache:
        cands = candidates(ctx)
        halves = draw_halves(ctx.seed, count, cands)
        data, in_mask = shadow_data(ctx, setup, cands, halves)
        root = jax.random.fold_in(jax.random.key(ctx.seed), 0x5AD1)
        keys = jax.vmap(partial(jax.random.fold_in, root))(jnp.arange(count))
        ctx.cache[key] = {
            "runs": jax.vmap(setup.init)(keys),
            "data": data,
            "in": in_mask,
            "seeds": shadow_seeds(ctx.seed, count),
            "candidates": cands,
            "at": 0,
            "msgs": {},
            "steps": {},
        }
    cache = ctx.cache[key]
    want = {int(r) for r in ctx.received.round}
    last = max(want)  # 1-based: the runs must have done rounds 1..last
    # records come in round order: messages of earlier records are not needed
    cache["msgs"] = {k: m for k, m in cache["msgs"].items() if k[1] >= min(want)}
    if cache["at"] < last:
        start = cache["at"]
        stop = min(setup.rounds, -(-last // setup.eval_every) * setup.eval_every)
        cache["runs"], bufs = advance(
            setup,
            cache["runs"],
            cache["data"],
            cache["seeds"],
            start,
            stop,
            cache["steps"],
        )
        cache["at"] = stop
        for buf in bufs:
            for s in range(count):
                got = receive(jax.tree.map(lambda a, s=s: a[s], buf))
                for i, (r, v, a) in enumerate(
                    zip(got.round, got.victim, got.attacker, strict=True)
                ):
                    model = jax.tree.map(lambda m, i=i: m[i], got.model)
                    cache["msgs"][(s, int(r), int(v), a)] = model
    tables = []
    rec = ctx.received
    for s in range(count):
        models = [
            cache["msgs"][(s, int(r), int(v), a)]
            for r, v, a in zip(rec.round, rec.victim, rec.attacker, strict=True)
        ]
        stacked = jax.tree.map(lambda *m: np.stack(m), *models)
        tables.append(tables_of(ctx.apply_fn, stacked, ctx.pool))
    return ShadowMessages(tables, cache["in"], cache["candidates"])


def message_view(ctx: AttackContext, shadows: ShadowMessages, i: int, field: str):
    """(target (2k,), shadows (S, 2k), in (S, 2k), members idx, outsiders idx) of
    message i on its victim's candidates, for the table ``field``."""
    v = int(ctx.received.victim[i])
    cands = shadows.candidates
    both = np.concatenate([cands.members[v], cands.outsiders[v]])
    target = getattr(ctx.tables, field)[i, both]
    stats = np.stack([getattr(t, field)[i, both] for t in shadows.tables])
    inside = shadows.in_mask[:, both, v]
    k = cands.members[v].size
    return target, stats, inside, np.arange(k), np.arange(k, 2 * k)
