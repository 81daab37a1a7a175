"""AD-PSGD's pairs: each tick, a random matching of the graph among busy peers.

AD-PSGD (Lian et al. 2018, arXiv 1710.06952) has a worker that finishes a
step average its model with one random neighbour, atomically. Simulated per
tick: a random maximal matching of the graph's live edges, built greedily in
a random order that takes the edges of peers finishing a step first, so each
of them gets a partner if one is free. Matched pairs average (W = 1/2, 1/2);
the partner takes part even when idle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.clock.delivery import real_edges
from workbench.comm.arrays import Table
from workbench.keys import PAIRING, round_key


def pair_up(table: Table, active, alive, seed: int, t) -> tuple[Table, jax.Array]:
    """(pair weights as a Table on the same columns, partner (n,) int32 or -1)."""
    n, k = table.idx.shape
    live = real_edges(table) & alive[:, None] & alive[table.idx]
    wanted = live & (active[:, None] | active[table.idx])
    u = jax.random.uniform(round_key(seed, t, PAIRING), (n, k))
    priority = jnp.where(wanted, u + jnp.where(active[:, None], 0.0, 1.0), jnp.inf)
    order = jnp.argsort(priority.reshape(-1))
    flat = priority.reshape(-1)

    def take(s, partner):
        e = order[s]
        i, j = e // k, table.idx.reshape(-1)[e]
        ok = jnp.isfinite(flat[e]) & (partner[i] < 0) & (partner[j] < 0)
        partner = partner.at[i].set(jnp.where(ok, j, partner[i]))
        return partner.at[j].set(jnp.where(ok, i, partner[j]))

    partner = jax.lax.fori_loop(0, n * k, take, jnp.full((n,), -1, jnp.int32))
    matched = partner >= 0
    cols = jnp.arange(k)[None, :]
    pair = matched[:, None] & (table.idx == partner[:, None]) & (cols > 0)
    weight = jnp.where(pair, 0.5, 0.0)
    weight = weight.at[:, 0].set(jnp.where(matched, 0.5, 1.0))
    return Table(table.idx, weight.astype(table.weight.dtype)), partner
