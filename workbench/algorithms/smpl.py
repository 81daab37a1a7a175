"""SMPL (Simultaneous Multi-Party Learning): learning in short-lived cliques.

Runs over the ``hyperedges`` topology, whose disjoint cliques of ``uniform``
peers stay for 3 rounds (``rounds: 3``), one session:

1. **offer**: every member sends its validation accuracy to the others;
2. **start**: with probability ``epsilon`` the member with the best accuracy
   (ties: the lowest id), otherwise a uniformly drawn member (the same draw on
   every member: from the run's seed, the session and the clique) sends its
   model; every member starts from it;
3. **train**: every member trains from the start (``local_steps`` steps;
   ``explore`` k > 1 trains k copies with the step size times 1, 1/10, ...,
   1/10^(k-1) and keeps the best on validation; ``hogwild`` k sums k
   gradients taken at the same parameters in each step), sends its delta
   top-k sparsified (``fraction`` kept, one cut over all tensors), applies the
   mean of the members' deltas (its own included) to the start, validates
   the result and, with ``keep_best``, keeps it only if it beats its best
   model so far.

A peer that a session leaves out trains alone from its model every round. A
peer is evaluated on its kept model. SMPL's help text says epsilon picks a
random member and its code that it picks the best; here epsilon is the
probability of the best member (the code's reading). The seed's own peer
update is effectively a no-op; this is the protocol as described.

On the virtual clock (a ``clock:`` section, or ``regular`` > 1) the same
member steps run as concurrent sessions, each peer in up to ``regular`` at
once and each new session with at least ``variety`` members new to its
originator: ``Algorithm.sessions``, run by workbench.clock.sessions.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
import optax
from pydantic import Field

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    Sessions,
    tree_where,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.exchange import weighted_mean
from workbench.comm.messages import Coded, Inbox, sent_if
from workbench.compression import COMPRESSORS, uncompressed_bits
from workbench.errors import ScenarioError
from workbench.keys import SESSION, round_key
from workbench.objective import Batch

OFFER, START, TRAIN = 0, 1, 2  # the rounds of a session
NOBODY = jnp.iinfo(jnp.int32).max


class SmplState(NamedTuple):
    params: PyTree  # the kept model (what the peer is evaluated on)
    best: jax.Array  # () its validation accuracy
    start: PyTree  # the session's starting model
    sender: jax.Array  # () int32 the member whose model starts the session
    peer: jax.Array  # () int32 this peer's id
    round: jax.Array  # () int32 rounds done
    loss: jax.Array  # () mean training loss of the last local steps


class Message(NamedTuple):
    model: Coded  # the start (its sender), a sparse delta (train), or nothing
    acc: Coded  # () the sender's validation accuracy (offer only)


def accuracy(apply_fn, params, x, y, size) -> jax.Array:
    """() accuracy on the first ``size`` rows of (x, y)."""
    real = jnp.arange(y.shape[0]) < size
    hit = jnp.argmax(apply_fn(params, x), -1) == y
    return jnp.sum(hit & real) / jnp.maximum(size, 1)


def choose_sender(ids, real, accs, key, epsilon: float) -> jax.Array:
    """The start's sender among the clique ``ids[real]``: the best accuracy
    (ties: lowest id) with probability epsilon, else a uniform member. Every
    member computes the same answer from the same key (order-free)."""
    k_eps, k_member = jax.random.split(key)
    score = jnp.where(real, accs, -jnp.inf)
    best = jnp.min(jnp.where(real & (score == jnp.max(score)), ids, NOBODY))
    by_id = jnp.sort(jnp.where(real, ids, NOBODY))
    drawn = by_id[jax.random.randint(k_member, (), 0, jnp.sum(real))]
    return jnp.where(jax.random.uniform(k_eps) < epsilon, best, drawn)


def smpl(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    apply_fn,
    validation,
    seed: int = 0,
    steps: int = 1,
    epsilon: float = 0.5,
    fraction: float = 0.1,
    explore: int = 1,
    hogwild: int = 1,
    keep_best: bool = True,
    uniform: int = 2,
    regular: int = 1,
    variety: int = 1,
) -> Algorithm:
    val_x, val_y, val_n = (jnp.asarray(a) for a in validation)
    topk = COMPRESSORS.build({"name": "topk", "fraction": fraction}, "compressor")
    scales = jnp.asarray([10.0**-j for j in range(explore)])  # step size factors

    def validate(params, peer):
        return accuracy(apply_fn, params, val_x[peer], val_y[peer], val_n[peer])

    def init(params, key, topo):
        del key
        start = jax.tree.map(jnp.copy, params)  # own buffers (donation)
        peer = topo.idx[0]
        zero = jnp.zeros((), jnp.int32)
        sender = jnp.copy(peer)  # its own buffer (donation)
        return SmplState(params, validate(params, peer), start, sender, peer, zero,
                         jnp.zeros(()))  # fmt: skip

    def train(start, batches: Batch, scale):
        """``steps`` steps of summed hogwild gradients, updates times ``scale``."""

        def step(carry, batch):
            params, opt_state = carry
            losses, grads = jax.vmap(jax.value_and_grad(loss_fn), (None, 0))(
                params, batch
            )
            g = jax.tree.map(lambda x: x.sum(0), grads)
            updates, opt_state = local_opt.update(g, opt_state, params)
            updates = jax.tree.map(lambda u: u * scale, updates)
            return (optax.apply_updates(params, updates), opt_state), losses.mean()

        carry = (start, local_opt.init(start))
        (params, _), losses = jax.lax.scan(step, carry, batches)
        return params, losses.mean()

    def alone(topo):
        return ~jnp.any(topo.mask)

    def member(state, origin, batches, key):
        """(state with its loss, its top-k delta from ``origin``)."""
        shaped = jax.tree.map(
            lambda a: a.reshape((steps, hogwild) + a.shape[1:]), batches
        )
        if explore > 1:  # divergent exploration: the best copy on validation
            copies, losses = jax.vmap(lambda s: train(origin, shaped, s))(scales)
            accs = jax.vmap(lambda p: validate(p, state.peer))(copies)
            which = jnp.argmax(accs)
            trained = jax.tree.map(lambda c: c[which], copies)
            loss = losses[which]
        else:
            trained, loss = train(origin, shaped, 1.0)
        delta = jax.tree.map(jnp.subtract, trained, origin)
        q, _, bits = topk.apply(delta, topk.init(delta), key)
        return state._replace(loss=loss), Coded(q, bits)

    def keep(state, origin, mean):
        """The session's end: ``origin`` + the mean delta, kept if it validates
        better than the best so far (always without ``keep_best``)."""
        result = jax.tree.map(jnp.add, origin, mean)
        acc = validate(result, state.peer)
        better = (acc > state.best) | (not keep_best)
        return state._replace(
            params=tree_where(better, result, state.params),
            best=jnp.where(better, acc, state.best),
        )

    def local(state, batches, topo, key):
        stage = state.round % 3
        solo = alone(topo)
        origin = tree_where(solo, state.params, state.start)
        trained, delta = member(state, origin, batches, key)
        training = (stage == TRAIN) | solo
        sends_start = (stage == START) & (state.sender == state.peer) & ~solo
        model = tree_where(training, delta.value, state.params)  # alone: own delta
        model_bits = jnp.where(
            (stage == TRAIN) & ~solo, delta.bits,
            jnp.where(sends_start, uncompressed_bits(state.params), 0.0),
        )  # fmt: skip
        acc = sent_if(state.best.astype(jnp.float32), (stage == OFFER) & ~solo)
        loss = jnp.where(training, trained.loss, 0.0)
        return state._replace(loss=loss), Message(Coded(model, model_bits), acc)

    def combine(state, inbox: Inbox, topo):
        stage = state.round % 3
        solo = alone(topo)
        ids, real = topo.idx, inbox.mask.at[0].set(True)
        # offer: who starts the session
        accs = inbox.messages.acc.at[0].set(state.best.astype(inbox.messages.acc.dtype))
        clique = jnp.min(jnp.where(real, ids, NOBODY))
        key = jax.random.fold_in(round_key(seed, state.round // 3, SESSION), clique)
        sender = choose_sender(ids, real, accs, key, epsilon)
        # start: the sender's model (its kept one, sent this round)
        col = jnp.argmax(real & (ids == state.sender))
        start = jax.tree.map(lambda m: m[col], inbox.messages.model)  # col 0: own
        # train: start + the members' mean delta (a lone peer: its own)
        origin = tree_where(solo, state.params, state.start)
        w = real.astype(jnp.float32) / jnp.sum(real)  # column 0: its own delta
        trained = keep(state, origin, weighted_mean(inbox.messages.model, w))
        offered = state._replace(sender=sender)
        started = state._replace(start=start)
        out = tree_where(
            stage == OFFER, offered, tree_where(stage == START, started, trained)
        )
        out = tree_where(solo, trained, out)
        return out._replace(round=state.round + 1)

    def choose(ids, scores, key):
        return choose_sender(ids, jnp.ones(ids.shape, bool), scores, key, epsilon)

    sessions = Sessions(
        uniform, regular, variety, lambda state: state.best, choose, member, keep
    )
    rounds = RoundStructure(steps * hogwild, 1.0, "uniform")
    return Algorithm(init, local, combine, "gather", rounds, uses_topology=True,
                     init_topology=True, sessions=sessions)  # fmt: skip


@ALGORITHMS.register("smpl")
def _smpl(
    loss_fn,
    optimizer,
    apply_fn=None,
    validation=None,
    seed: int = 0,
    graph: dict | None = None,
    *,
    local_steps: int = 1,
    epsilon: float = 0.5,
    fraction: float = 0.1,
    explore: int = 1,
    hogwild: int = 1,
    keep_best: bool = True,
    regular: Annotated[int, Field(ge=1)] = 1,
    variety: Annotated[int, Field(ge=0)] = 1,
) -> Algorithm:
    if graph is not None and graph.get("session_rounds") != 3:
        given = graph.get("name")
        if given == "hyperedges":
            given = f"hyperedges with rounds: {graph.get('session_rounds')}"
        raise ScenarioError(
            "topology.name",
            f"smpl runs its sessions on the 'hyperedges' topology with rounds: 3, "
            f"not '{given}'",
        )
    if not 0 <= epsilon <= 1:
        raise ScenarioError("algorithm.epsilon", f"must be in [0, 1], got {epsilon}")
    if not 0 < fraction <= 1:
        raise ScenarioError("algorithm.fraction", f"must be in (0, 1], got {fraction}")
    if explore < 1 or hogwild < 1:
        raise ScenarioError(
            "algorithm.explore",
            f"explore and hogwild must be >= 1, got {explore}, {hogwild}",
        )
    uniform = (graph or {}).get("uniform", 2)
    if variety > uniform - 1:
        raise ScenarioError(
            "algorithm.variety",
            f"must be in 0..{uniform - 1} (the topology's uniform - 1), got {variety}",
        )
    if apply_fn is None or validation is None:
        raise ScenarioError(
            "algorithm.name", "smpl needs the engine's model and validation split"
        )
    return smpl(
        loss_fn, optimizer(local_steps), apply_fn, validation, seed, local_steps,
        epsilon, fraction, explore, hogwild, keep_best,
        uniform, regular, variety,
    )  # fmt: skip
