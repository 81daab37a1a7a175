"""The algorithm interface: pure per-peer functions and the round they run in.

An algorithm is written for ONE peer; the engine lifts it over the peer axis.
Peers interact only through an exchange (workbench.comm.exchange) between
``local`` and ``combine``:

    init(params, key[, topo])              -> state  (topo: ``init_topology``)
    local(state, batches, topo, key)       -> state, outbox  (no communication)
    combine(state, inbox, topo)            -> state          (uses what was sent)
    resend(state, topo)                    -> outbox         (between gossip steps)
    message(outbox, sender, receiver, key) -> message        (``edge`` exchange)

``exchange`` names an EXCHANGES entry; the inbox it delivers depends on it
(``average``: the W-weighted sum; ``gather``/``edge``: an :class:`Inbox` of
in-neighbour messages; ``server``: the weighted mean of the participants).
An outbox is any pytree; a compressed part is wrapped in ``Coded`` so its
exact bit count is what the message costs. ``topo`` is the peer's
:class:`PeerTopo` for the round when ``uses_topology`` (else None).
``server`` is a stateful server (see :class:`Server`). ``rounds`` is the
round structure the engine follows: it never reads an algorithm's
settings from the scenario itself. Every state has a ``params`` field: the
model the peer would deploy, used for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import optax

from workbench.comm.messages import Inbox  # noqa: F401  (part of this interface)

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]  # (params, batch) -> scalar


class RoundStructure(NamedTuple):
    """What happens in one round, as the algorithm declares it."""

    local_steps: int = 1  # optax steps (batches) per round in ``local``
    participation: float = 1.0  # fraction of peers active per round
    weighting: Literal["uniform", "data_size"] = "uniform"  # server-mean weights
    gossip_steps: int = 1  # exchange + combine repetitions per round
    static_graph: bool = False  # needs the same W every round (running sums of W x)
    undirected: bool = False  # needs every edge both ways (per-edge duals)
    # each busy peer averages with one random neighbour, who takes part even
    # when idle (AD-PSGD); the engine draws the pairs (workbench.clock.pairing)
    pairwise: bool = False
    # every peer keeps a copy of server state (a server optimizer's moments,
    # SCAFFOLD's c) that must see every round's aggregate: not on the clock,
    # where only the peers that receive it combine
    server_copies: bool = False


def tree_where(cond, a: PyTree, b: PyTree) -> PyTree:
    """``a`` where the () bool ``cond`` holds, else ``b`` (one peer's trees)."""
    return jax.tree.map(lambda x, y: jax.numpy.where(cond, x, y), a, b)


def rows_where(mask, new: PyTree, old: PyTree) -> PyTree:
    """``new`` on the rows where the (k,) bool ``mask`` holds, else ``old``
    (trees whose leaves have a leading axis k)."""

    def pick(a, b):
        return jax.numpy.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def take_rows(tree: PyTree, ids) -> PyTree:
    """The rows ``ids`` of every leaf (leading axis)."""
    return jax.tree.map(lambda a: a[ids], tree)


def set_rows(tree: PyTree, ids, rows: PyTree) -> PyTree:
    """``tree`` with its rows ``ids`` replaced by ``rows``."""
    return jax.tree.map(lambda a, r: a.at[ids].set(r), tree, rows)


def cohort_size(fraction: float, n: int) -> int:
    """Peers sampled per round for a participation ``fraction`` of ``n``."""
    return max(1, min(n, round(fraction * n)))


class PeerTopo(NamedTuple):
    """One peer's view of the round's graph: its padded in-neighbour row of W."""

    idx: jax.Array  # (k,) int32 in-neighbours; column 0 is the peer itself
    weight: jax.Array  # (k,) W_ij for each column (padding: 0)
    mask: jax.Array  # (k,) bool: a real in-neighbour (not self, not padding)
    degree: jax.Array  # () int32 number of in-neighbours
    out_degree: jax.Array  # () int32 number of out-neighbours


class Server(NamedTuple):
    """A stateful server (asynchronous FL): uploads are applied one at a time,
    in arrival order, then the peers that uploaded pull its reply.

    ``init(params, n) -> server state``; ``receive(server, upload, peer) ->
    server`` (one peer's outbox); ``send(server, pulled (n,) bool) -> (server,
    reply)``: the reply (one model, no peer axis) is every puller's inbox.
    """

    init: Callable
    receive: Callable
    send: Callable


class Sessions(NamedTuple):
    """Sessions on the virtual clock (SMPL): cliques that a scheduler forms
    and ends on their own schedules (workbench.clock.sessions), each peer in
    up to ``regular`` at once. Per member (one peer's state):

    ``score(state) -> ()`` what it offers (the start's choice); ``choose(ids
    (u,), scores (u,), key) -> sender id``; ``train(state, origin, batches,
    key) -> (state with its loss, delta)``: its delta from the session's start
    ``origin``, a Coded tree (what it sends); ``apply(state, origin, mean
    delta) -> state``: the session's end.
    """

    uniform: int  # members per session
    regular: int  # sessions per peer at once, at most
    variety: int  # members new to the originator, at least
    score: Callable
    choose: Callable
    train: Callable
    apply: Callable


class Algorithm(NamedTuple):
    init: Callable[[PyTree, jax.Array], PyTree]
    local: Callable[..., tuple[PyTree, PyTree]]  # (state, batches, topo, key)
    combine: Callable[..., PyTree]  # (state, inbox, topo)
    exchange: str = "average"  # an EXCHANGES entry
    rounds: RoundStructure = RoundStructure()
    resend: Callable | None = None  # (state, topo) -> outbox; gossip_steps > 1
    message: Callable | None = None  # (outbox, sender, receiver, key); edge only
    uses_topology: bool = False  # whether local/combine read ``topo``
    init_topology: bool = False  # init(params, key, topo): state sized by the graph
    # a defense's DP mechanism, {"mechanism": name, **parameters}, for the
    # accounting (workbench.privacy.guarantees); None: no formal guarantee
    privacy: dict | None = None
    # a stateful server (exchange "server"): runs on the virtual clock
    server: Server | None = None
    # the ``server`` exchange's reduction, (uploads (m, ...), weights (m,)) ->
    # model (an AGGREGATORS entry); None: the weighted mean
    aggregate: Callable | None = None
    # its own sessions on the virtual clock (SMPL) instead of rounds there
    sessions: Sessions | None = None


def local_steps(
    loss_fn: LossFn, opt: optax.GradientTransformation, params, opt_state, batches
):
    """Runs one optax step per leading entry of ``batches`` (tau, ...).

    Returns:
      (params, opt_state, mean loss over the steps).
    """

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, losses.mean()


def mean_gradient(loss_fn: LossFn, params, batches):
    """(mean loss, mean gradient) over the leading axis of ``batches`` at ``params``.

    For algorithms that need the raw stochastic gradient (gradient tracking,
    D^2, CHOCO) rather than an optax step.
    """

    def one(batch):
        return jax.value_and_grad(loss_fn)(params, batch)

    losses, grads = jax.lax.map(one, batches)
    return losses.mean(), jax.tree.map(lambda g: g.mean(0), grads)
