"""A node's jitted steps: the simulator's phases, run on one block of peers.

``local``, ``resend`` and ``combine`` are ``workbench.rounds.Phases``' own
functions called on the block (its peers' rows of state, data and the
topology view), with the same ``fold_in(seed, round, purpose, peer)`` keys;
``send`` runs the exchange's ``prepare`` and ``cost`` on the round's messages
(rows of peers on other nodes are zeros there and never read), ``deliver``
its ``deliver`` on the messages assembled from the wire. For the exchanges a
server runs (``SERVED``), the outboxes themselves travel to rank 0, whose
``serve`` runs the whole exchange on them as the simulator does. Every stacked
message array keeps the simulator's shape, so the node's numbers are the
simulator's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.comm.exchange import EXCHANGES
from workbench.comm.messages import plain
from workbench.rounds import RoundSpec, make_phases, peer_topology

# exchanges whose server side runs on rank 0 (the uploads' routes: routing.py)
SERVED = frozenset({"server", "coordinator", "hierarchy"})


class NodeSteps(NamedTuple):
    topology: Callable  # (topo_data, t) -> arrays, table, view (the whole graph)
    view_of: Callable  # (arrays) -> table, view (a W changed by a fault)
    local: Callable  # (state_b, x_b, y_b, size_b, t, view) -> state_b, outbox, peers
    resend: Callable | None  # (state_b, view) -> outbox (n, ...) of all peers
    send: Callable  # (outbox, arrays, table, peers, weights, t) -> msgs, sent, srv
    deliver: Callable  # (msgs, arrays, table, peers, weights, t) -> inbox rows (b, ...)
    combine: Callable  # (state_b, inbox_b, view) -> state_b
    # (outbox, arrays, table, peers, weights, t) -> inbox (n, ...), sent (n,), srv
    serve: Callable


def _take(tree, ids):
    return None if tree is None else jax.tree.map(lambda a: a[ids], tree)


def _rows_of(mask: jax.Array, a: jax.Array) -> jax.Array:
    return mask.reshape(mask.shape + (1,) * (a.ndim - 1))


def node_steps(spec: RoundSpec, seed: int, block: np.ndarray) -> NodeSteps:
    """Jitted steps for the peers ``block`` (sorted ids) of ``spec``'s run."""
    alg, n, m = spec.algorithm, spec.num_peers, spec.participants
    ph = make_phases(spec, seed)
    kind = EXCHANGES[alg.exchange]
    ids = jnp.asarray(block, jnp.int32)

    def local(state, x, y, size, t, view):
        peers = ph.select(t)
        new, outbox = ph.local(state, x, y, size, ids, t, _take(view, ids))
        pos = jnp.searchsorted(peers, ids)
        active = peers[jnp.minimum(pos, m - 1)] == ids
        if m < n:  # only participants step (the others' results are dropped)
            pick = lambda a, b: jnp.where(_rows_of(active, a), a, b)
            new = jax.tree.map(pick, new, state)
        where = jnp.where(active, pos, m)
        full = jax.tree.map(
            lambda a: (
                jnp.zeros((m,) + a.shape[1:], a.dtype).at[where].set(a, mode="drop")
            ),
            outbox,
        )
        return new, full, peers

    resend = None
    if ph.resend is not None:

        def resend(state, view):
            outbox = ph.resend(state, _take(view, ids))
            return jax.tree.map(
                lambda a: jnp.zeros((n,) + a.shape[1:], a.dtype).at[ids].set(a), outbox
            )

    def send(outbox, arrays, table, peers, weights, t):
        ctx = ph.context(arrays, table, peers, weights[peers], t)
        messages = kind.prepare(outbox, ctx)
        sent, server = kind.cost(messages, ctx)
        return plain(messages), sent, server

    def deliver(messages, arrays, table, peers, weights, t):
        ctx = ph.context(arrays, table, peers, weights[peers], t)
        return _take(kind.deliver(messages, ctx), ids)

    def combine(state, inbox, view):
        return ph.combine(state, inbox, _take(view, ids))

    def serve(outbox, arrays, table, peers, weights, t):
        return ph.exchange(outbox, arrays, table, peers, weights[peers], t)

    def view_of(arrays):
        return peer_topology(arrays, n)

    return NodeSteps(
        jax.jit(ph.topology),
        jax.jit(view_of),
        jax.jit(local),
        None if resend is None else jax.jit(resend),
        jax.jit(send),
        jax.jit(deliver),
        jax.jit(combine),
        jax.jit(serve),
    )
