"""Hierarchical FedAvg (HierFAVG, arXiv 1905.06641; the HiPS seed): parties, global.

Peers belong to ``parties`` parties (peer i to party i mod P; party 0 is the
central party, which hosts the global server). Each round a worker runs
``local_steps`` (kappa1) local steps and its party server averages its
workers' models (weighted by data size or uniformly). Every ``kappa2`` party
rounds, each party server sends its party's update d_p = w_p - w_t (w_t: the
global model of the last global round) to the global server, through the
link ``compressor`` if one is given (error feedback is the compressor's own:
``threshold_2bit`` keeps the MXNet residual r <- r + d; q = Q(r); r <- r - q),
and the global server adds the weighted sum of the party updates,
w_t+1 = w_t + sum_p (n_p / n) q_p, which every worker takes. With
``central_trains: false`` the central party's workers hold the global model
and do not train (their weight is 0).

A round is two exchanges (``hierarchy``): the workers' uploads to their party
servers, then the party leaders' (the lowest-numbered worker of each party)
compressed updates to the global server, sent only in global rounds. Every
worker of a party computes the same party mean, residual and q, so the
simulation stores the party server's state on its workers; only the leader's
upload is paid for.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
    tree_where,
)
from workbench.algorithms.compressed import CompressorSpec, build_compressor
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.exchange import Tiered, Tiers
from workbench.comm.messages import Coded, sent_if
from workbench.compression import Compressor, identity
from workbench.errors import ScenarioError
from workbench.keys import PARTY, round_key


class HierState(NamedTuple):
    params: PyTree  # w_k: this worker's model
    anchor: PyTree  # w_t: the global model of the last global round (everywhere)
    link: PyTree  # the party -> global compressor's state (the same in a party)
    update: PyTree  # q_p: the party's compressed update, pending in a global round
    bits: jax.Array  # () what q_p costs on the link (the compressor's count)
    peer: jax.Array  # () int32 this worker's id
    round: jax.Array  # () int32 party rounds done
    stage: jax.Array  # () int32 0: the party exchange comes next, 1: the global
    loss: jax.Array  # () mean training loss of the last local steps


def hierarchical(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    parties: int = 2,
    kappa2: int = 1,
    steps: int = 1,
    compressor: Compressor | None = None,
    central_trains: bool = True,
    weighting: Literal["uniform", "data_size"] = "data_size",
    seed: int = 0,
) -> Algorithm:
    link = compressor or identity()

    def party_of(peer):
        return peer % parties

    def trains(state):
        return central_trains | (party_of(state.peer) != 0)

    def is_global(state):
        return (state.round + 1) % kappa2 == 0

    def init(params, key, topo):
        del key
        anchor = jax.tree.map(jnp.copy, params)  # own buffers (donation)
        update = jax.tree.map(jnp.zeros_like, params)
        zero = jnp.zeros((), jnp.int32)
        return HierState(
            params, anchor, link.init(params), update, jnp.zeros(()), topo.idx[0],
            zero, zero, jnp.zeros(()),
        )  # fmt: skip

    def local(state, batches, topo, key):
        del topo, key
        params, _, loss = local_steps(
            loss_fn, local_opt, state.params, local_opt.init(state.params), batches
        )
        on = trains(state)
        params = tree_where(on, params, state.params)
        up = Tiered(sent_if(params, on), party_of(state.peer), on.astype(jnp.float32))
        state = state._replace(
            params=params, loss=loss, stage=jnp.zeros_like(state.stage)
        )
        return state, up

    def resend(state, topo):
        del topo
        leader = state.peer < parties  # the lowest-numbered worker of its party
        on = trains(state)
        q = sent_if(Coded(state.update, state.bits), leader & on & is_global(state))
        return Tiered(q, party_of(state.peer), on.astype(jnp.float32))

    def combine(state, inbox: Tiers, topo):
        del topo
        glob = is_global(state)
        # stage 0: the party mean; in a global round, the party's update
        party = tree_where(trains(state), inbox.group, state.anchor)
        delta = jax.tree.map(jnp.subtract, party, state.anchor)
        # the party's draw, the same on each of its workers
        key = jax.random.fold_in(
            round_key(seed, state.round, PARTY), party_of(state.peer)
        )
        q, link_state, bits = link.apply(delta, state.link, key)
        first = state._replace(
            params=party,
            update=tree_where(glob, q, state.update),
            bits=jnp.where(glob, bits, state.bits).astype(state.bits.dtype),
            link=tree_where(glob, link_state, state.link),
            stage=jnp.ones_like(state.stage),
        )
        # stage 1: in a global round every worker takes w_t + sum_p (n_p/n) q_p
        anchor = tree_where(
            glob, jax.tree.map(jnp.add, state.anchor, inbox.total), state.anchor
        )
        second = state._replace(
            params=tree_where(glob, anchor, state.params),
            anchor=anchor,
            round=state.round + 1,
            stage=jnp.zeros_like(state.stage),
        )
        return tree_where(state.stage == 0, first, second)

    rounds = RoundStructure(steps, 1.0, weighting, gossip_steps=2)
    return Algorithm(
        init, local, combine, "hierarchy", rounds, resend=resend,
        uses_topology=True, init_topology=True,  # the peer's id: topo.idx[0]
    )  # fmt: skip


@ALGORITHMS.register("hierarchical")
def _hierarchical(
    loss_fn,
    optimizer,
    seed: int = 0,
    *,
    parties: int = 2,
    kappa2: int = 1,
    local_steps: int = 1,
    compressor: CompressorSpec | None = None,
    central_trains: bool = True,
    weighting: Literal["uniform", "data_size"] = "data_size",
) -> Algorithm:
    if parties < 1 or kappa2 < 1:
        raise ScenarioError(
            "algorithm.parties",
            f"parties and kappa2 must be >= 1, got {parties}, {kappa2}",
        )
    if parties == 1 and not central_trains:
        raise ScenarioError(
            "algorithm.central_trains",
            "with one party every worker is in the central party: nobody would train",
        )
    link = build_compressor(compressor) if compressor is not None else None
    return hierarchical(
        loss_fn,
        optimizer(local_steps),
        parties,
        kappa2,
        local_steps,
        link,
        central_trains,
        weighting,
        seed,
    )
