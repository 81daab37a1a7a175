"""A node process: one block of peers, the simulator's jitted steps, pyzmq between.

Every node builds the scenario exactly as ``workbench simulate`` does (same
seed, same data split, same initial state) and keeps its block's rows. Rank 0
also coordinates: it starts each round with a ``go`` message naming the live
ranks, runs the server side of a ``server``, ``coordinator`` or ``hierarchy``
exchange (the nodes' outboxes in, each node's part of the reply and its
peers' bits out), gathers each node's
``done`` (bits sent; at evaluation rounds its block's state), evaluates the
whole model stack with the simulator's evaluation, and writes the run
directory in the usual layout.

A round on a node: ``local`` on its block; for each gossip step, ``send``
(the exchange's prepare and cost), the rows other nodes need go out as
``data`` messages, the rows it needs come in, ``deliver`` and ``combine``.

Faults. A node that rank 0 has not heard from (heartbeats included) for
``timeout`` seconds when a round ends is declared dead at that round
boundary: the next ``go`` leaves it out, so every survivor drops it at the
same round; its peers' edges are removed and the weights of the surviving
graph are Metropolis–Hastings (``routing.surviving``). A dead rank that is
heard from again (a restarted node says ``ready``) rejoins at the next round
boundary from its block of the last checkpoint rank 0 holds. A message that
does not arrive within ``timeout`` is a failed link for the rest of the round:
its weight moves to the receiver's own (as ``link_failures`` in simulation).
Rank 0 is the coordinator: if it stops, the other nodes stop too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workbench.cluster.hosts import Hosts, blocks, owner_of
from workbench.cluster.routing import Route, drop_edges, route, surviving
from workbench.cluster.steps import SERVED, node_steps
from workbench.cluster.transport import Transport
from workbench.cluster.wire import Expect
from workbench.comm.arrays import Table, weight_dtype
from workbench.comm.exchange import EXCHANGES
from workbench.comm.kernels import as_table
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.cluster")


def leaf_names(tree, prefix: str) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [prefix + jax.tree_util.keystr(p) for p, _ in paths]


def named(tree, prefix: str) -> dict[str, Any]:
    """{name: leaf} of a pytree, names from the leaves' paths."""
    leaves = jax.tree.leaves(tree)
    return dict(zip(leaf_names(tree, prefix), leaves, strict=True))


def unnamed(like, arrays: dict, prefix: str):
    """The pytree shaped like ``like`` from {name: array}."""
    names = leaf_names(like, prefix)
    return jax.tree.unflatten(jax.tree.structure(like), [arrays[k] for k in names])


def _specs(tree, prefix: str, lead: int | None) -> dict:
    """{name: (dtype, shape)}; the first ``lead`` axes become one free axis."""
    out = {}
    for name, leaf in named(tree, prefix).items():
        shape = tuple(leaf.shape)
        if lead is not None:
            shape = (-1,) + shape[lead:]
        out[name] = (str(jnp.dtype(leaf.dtype)), shape)
    return out


@dataclasses.dataclass
class Stats:
    exchange_bytes: float = 0.0  # bytes of the exchanges' messages (data, up, down)
    exchange_seconds: float = 0.0  # seconds from first send to last delivery
    round_seconds: float = 0.0


class Node:
    """One node's state and steps; ``round`` runs one round on its block."""

    def __init__(self, sim, hosts: Hosts, rank: int, keypair):
        sc = sim.scenario
        self.sim, self.hosts, self.rank = sim, hosts, rank
        self.n, self.ranks = sc.peers, len(hosts.nodes)
        self.blocks = blocks(self.n, self.ranks)
        self.owner = owner_of(self.n, self.ranks)
        self.block = self.blocks[rank]
        self.alg = sim.spec.algorithm
        self.steps = node_steps(sim.spec, sc.seed, self.block)
        take = lambda tree: jax.tree.map(lambda a: a[self.block], tree)  # noqa: E731
        self.state = take(sim.state)
        self.data = take(tuple(sim.data))
        self.weights = sim.weights
        self.table_of = jax.jit(lambda arrays: as_table(arrays, self.n))
        # a static graph's round arrays and routes, per set of live ranks
        self.static = not sim.topology.info.get("dynamic")
        self.graphs: dict = {}
        self.routes: dict = {}
        self.stats = Stats()
        self._shapes()
        self.transport = Transport(hosts, rank, keypair, self._expect())

    # ---------------------------------------------------------- setup

    def _shapes(self) -> None:
        """Shapes of the round's messages (traced, nothing runs): those of
        gossip step 0 (``local``'s outbox) and of later steps (``resend``'s)."""
        st = self.steps
        t = jnp.int32(0)
        arrays, table, view = jax.eval_shape(st.topology, self.sim.topology.data, t)
        state, outbox, peers = jax.eval_shape(st.local, self.state, *self.data, t, view)
        outboxes = [outbox]
        if self.alg.rounds.gossip_steps > 1:
            outboxes.append(jax.eval_shape(st.resend, state, view))
        args = (arrays, table, peers, self.weights, t)
        if self.served:  # the outboxes travel; rank 0 serves them
            self.msgs_like = outboxes
            inbox = jax.eval_shape(st.serve, outboxes[0], *args)[0]
        else:
            self.msgs_like = [jax.eval_shape(st.send, o, *args)[0] for o in outboxes]
            inbox = jax.eval_shape(st.deliver, self.msgs_like[0], *args)
        # a node's part of the reply: one row when it is the same for all
        first = 1 if self.same_reply else 0
        self.down_like = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape[first:], a.dtype), inbox
        )

    @property
    def served(self) -> bool:
        return self.alg.exchange in SERVED

    @property
    def same_reply(self) -> bool:
        return EXCHANGES[self.alg.exchange].same_reply

    @property
    def lead(self) -> int:
        """Leading axes of a message array that index deliveries: (n, k) per
        edge for the ``edge`` exchange, else (m,) senders."""
        return 2 if self.alg.exchange == "edge" else 1

    def _expect(self) -> Expect:
        msg = tuple(_specs(like, "msg", self.lead) for like in self.msgs_like)
        own_state = _specs(self.state, "state", None)
        kinds: dict[str, tuple] = {"data": msg, "stop": ({},)}
        if self.rank == 0:
            any_state = _specs(self.state, "state", 1)
            done = {"sent": ("float64", (-1,)), "wire": ("float64", (4,))}
            nonce = {"nonce": ("uint8", (8,))}
            kinds.update(
                up=msg,
                done=(done, {**done, **any_state}),
                ready=({"scenario": ("uint8", (32,)), **nonce},),
                heartbeat=(nonce,),
            )
        else:
            rows = None if self.same_reply else 1
            down = {**_specs(self.down_like, "msg", rows), "sent": ("float64", (-1,))}
            nonce = {"nonce": ("uint8", (8,))}
            go = (nonce, {**nonce, **own_state})
            kinds.update(go=go, down=(down,))
        return Expect(self.rank, self.ranks, kinds)

    # ---------------------------------------------------------- the round

    def graph(self, t: int, live):
        """The round's (arrays, table, view, host idx, host weight), faults applied;
        computed once per live set for a static graph."""
        key = frozenset(live)
        if not self.static:
            return self._graph(t, live)
        if key not in self.graphs:
            self.graphs[key] = self._graph(t, live)
        return self.graphs[key]

    def route(self, idx, weight, peers: np.ndarray, live, fresh: bool = False):
        """The round's route (see routing.py); cached for a static graph unless
        ``fresh`` (weights changed by failed links)."""
        if fresh or not self.static:
            return route(self.alg.exchange, idx, weight, peers, self.owner,
                         self.rank, live)  # fmt: skip
        key = (frozenset(live), peers.tobytes())
        if key not in self.routes:
            self.routes[key] = self.route(idx, weight, peers, live, fresh=True)
        return self.routes[key]

    def _graph(self, t: int, live):
        arrays, table, view = self.steps.topology(self.sim.topology.data, jnp.int32(t))
        base = self.table_of(arrays)
        idx, weight = np.asarray(base.idx), np.asarray(base.weight, np.float64)
        alive = np.isin(self.owner, list(live))
        if alive.all():
            return arrays, table, view, idx, weight
        weight = surviving(idx, weight, alive)
        return self.reweighted(idx, weight)

    def reweighted(self, idx, weight):
        arrays = Table(jnp.asarray(idx), jnp.asarray(weight, weight_dtype()))
        table, view = self.steps.view_of(arrays)
        return arrays, table, view, idx, weight

    def round(self, t: int, live) -> tuple[np.ndarray, float]:
        """Round t with the ``live`` ranks; (bits each block peer sent, server bits)."""
        t0 = time.perf_counter()
        self.transport.advance(t)
        st, jt = self.steps, jnp.int32(t)
        arrays, table, view, idx, weight = self.graph(t, live)
        state, outbox, peers = st.local(self.state, *self.data, jt, view)
        peers_host = np.asarray(peers)
        sent_bits = np.zeros(len(self.block))
        server_bits = 0.0
        kind = self.alg.exchange
        plan = self.route(idx, weight, peers_host, live)
        for step in range(self.alg.rounds.gossip_steps):
            if step:
                outbox = st.resend(state, view)
            e0 = time.perf_counter()
            if kind in SERVED:
                inbox, sent, server = self.server_exchange(
                    t, step, outbox, plan, (arrays, table, peers), live
                )
                sent_bits += sent
                server_bits += server
            else:
                msgs, sent, server = st.send(
                    outbox, arrays, table, peers, self.weights, jt
                )
                sent_bits += np.asarray(sent, np.float64)[self.block]
                server_bits += float(server)
                e0 = time.perf_counter()
                messages, dropped = self.peer_exchange(t, step, msgs, plan, idx)
                if dropped is not None:  # late messages: failed links this round
                    weight = drop_edges(weight, dropped)
                    arrays, table, view, idx, weight = self.reweighted(idx, weight)
                    plan = self.route(idx, weight, peers_host, live, fresh=True)
                inbox = st.deliver(messages, arrays, table, peers, self.weights, jt)
            self.stats.exchange_seconds += time.perf_counter() - e0
            state = st.combine(state, inbox, view)
        self.state = jax.block_until_ready(state)
        self.stats.round_seconds += time.perf_counter() - t0
        return sent_bits, server_bits

    def _flat(self, msgs) -> dict[str, np.ndarray]:
        return {
            k: np.asarray(v).reshape((-1,) + v.shape[self.lead :])
            for k, v in named(msgs, "msg").items()
        }

    def _unflat(self, flat: dict[str, np.ndarray], step: int):
        like = self.msgs_like[min(step, len(self.msgs_like) - 1)]
        shaped = {k: flat[k].reshape(v.shape) for k, v in named(like, "msg").items()}
        return unnamed(like, shaped, "msg")

    def _post(self, dst: int, kind: str, t: int, step: int, arrays) -> None:
        self.stats.exchange_bytes += self.transport.send(dst, kind, t, step, arrays)

    def wire(self) -> np.ndarray:
        """(4,) bytes sent (all, exchanges), seconds exchanging, seconds in rounds."""
        s = self.stats
        return np.array(
            [self.transport.sent_bytes, s.exchange_bytes, s.exchange_seconds,
             s.round_seconds]
        )  # fmt: skip

    def _send_rows(self, kind: str, t: int, step: int, flat, plan: Route) -> None:
        for (src, dst), rows in plan.rows.items():
            if src == self.rank:
                arrays = {k: v[rows] for k, v in flat.items()}
                self._post(dst, kind, t, step, arrays)

    def _gather_rows(self, kind: str, t: int, step: int, flat, plan: Route):
        """Own rows plus the rows received; (assembled, ranks that did not deliver)."""
        timeout = self.hosts.timeout
        out = {k: np.zeros_like(v) for k, v in flat.items()}
        for k, v in flat.items():
            out[k][plan.own] = v[plan.own]
        senders = {s: rows for (s, d), rows in plan.rows.items() if d == self.rank}
        got = self.transport.wait(kind, t, step, senders, timeout)
        missing = set(senders) - set(got)
        for s, msg in got.items():
            rows = senders[s]
            if any(a.shape[0] != len(rows) for a in msg.arrays.values()):
                log.warning(
                    "rank %d dropped a '%s' message from rank %d: %d rows, expected %d",
                    self.rank, kind, s, next(iter(msg.arrays.values())).shape[0],
                    len(rows),
                )  # fmt: skip
                missing.add(s)
                continue
            for k, a in msg.arrays.items():
                out[k][rows] = a
        if missing:
            log.warning(
                "rank %d: no '%s' message from rank(s) %s in round %d within %.1f s; "
                "their links fail this round",
                self.rank, kind, sorted(missing), t, timeout,
            )  # fmt: skip
        return out, missing

    def peer_exchange(self, t, step, msgs, plan, idx):
        """(messages assembled from the wire, (n, k) table entries whose message
        never came, or None)."""
        flat = self._flat(msgs)
        self._send_rows("data", t, step, flat, plan)
        got, missing = self._gather_rows("data", t, step, flat, plan)
        if not missing:
            return self._unflat(got, step), None
        rows = np.arange(self.n)[:, None]
        mine = np.isin(rows, self.block)
        dropped = mine & np.isin(self.owner[idx], list(missing)) & (idx != rows)
        return self._unflat(got, step), dropped

    def server_exchange(self, t, step, outbox, plan, graph, live):
        """The block's (inbox rows, bits its peers sent, server bits): the
        outboxes go to rank 0, which runs the exchange and sends each node its
        part of the reply and its peers' bits."""
        arrays, table, peers = graph
        flat = self._flat(outbox)
        b = len(self.block)
        if self.rank != 0:
            self._send_rows("up", t, step, flat, plan)
            got = self.transport.wait("down", t, step, [0], 3 * self.hosts.timeout)
            if 0 not in got:
                raise WorkbenchError(
                    f"rank 0 (the coordinator) sent no aggregate in round {t}; stopping"
                )
            arrays_in = dict(got[0].arrays)
            sent = np.asarray(arrays_in.pop("sent"), np.float64)
            rows = {len(sent)} | (
                set() if self.same_reply else {a.shape[0] for a in arrays_in.values()}
            )
            if rows != {b}:
                raise WorkbenchError(
                    f"rank 0's reply in round {t} has rows for {sorted(rows)} peers, "
                    f"this node holds {b}; stopping"
                )
            part = unnamed(self.down_like, arrays_in, "msg")
            if self.same_reply:
                part = jax.tree.map(lambda a: jnp.broadcast_to(a, (b,) + a.shape), part)
            return part, sent, 0.0
        got, missing = self._gather_rows("up", t, step, flat, plan)
        weights = np.asarray(self.weights).copy()
        absent = np.isin(self.owner, list(missing))
        weights[absent] = 0.0  # participants whose update never came
        inbox, sent, server = self.steps.serve(
            self._unflat(got, step), arrays, table, peers, jnp.asarray(weights),
            jnp.int32(t),
        )  # fmt: skip
        sent = np.asarray(sent, np.float64)
        for r in sorted(set(live) - {0}):
            rows = self.blocks[r]
            pick = rows[0] if self.same_reply else rows  # one row, or the block's
            part = named(jax.tree.map(lambda a, p=pick: a[p], inbox), "msg")
            self._post(r, "down", t, step, {**part, "sent": sent[rows]})
        mine = jax.tree.map(lambda a: a[self.block], inbox)
        return mine, sent[self.block], float(server)


def state_rows(state, block: np.ndarray, full):
    """``full`` (host, leaves (n, ...)) with ``block``'s rows set from ``state``."""

    def put(f, s):
        f[block] = np.asarray(s)
        return f

    return jax.tree.map(put, full, state)


def host_copy(tree):
    return jax.tree.map(lambda a: np.array(a), tree)
