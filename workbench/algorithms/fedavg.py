"""FedAvg and its family: FedOpt server optimizers, FedProx, robust aggregation.

Each round the sampled clients run tau local steps from the global model and
upload their models; the server aggregates them (the weighted mean: uniform,
by data size n_i / sum n, or by the softmax of the clients' training losses;
or a robust AGGREGATORS entry) and takes one step of its server optimizer on
the pseudo-gradient ``x - aggregate`` (plain FedAvg: sgd with lr 1, x <- the
aggregate; FedAvgM, FedAdam, FedYogi, FedAdagrad: SERVER_OPTIMIZERS). FedProx
adds ``mu/2 ||w - x||^2`` to the local loss. With a ``compressor`` (e.g.
dyn-fed's ``uniform`` L-level quantization) a client uploads its compressed
update w - x instead of its model (``send: update`` uploads the update
uncompressed: dyn-fed's sending of gradients); an error-feedback residual is
the one piece of client state kept across rounds. Otherwise clients are
stateless: their local optimizer state restarts every round, as in FedJAX and
Flower. Every
peer holds a copy of the server's model and optimizer state; the copies stay
equal because every peer applies the same step to the same aggregate.
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
)
from workbench.algorithms.compressed import CompressorSpec, build_compressor
from workbench.algorithms.registry import AGGREGATORS, ALGORITHMS, SERVER_OPTIMIZERS
from workbench.comm.messages import Coded, Scored
from workbench.compression import Compressor
from workbench.errors import ScenarioError

Weighting = Literal["uniform", "data_size", "loss"]
Send = Literal["model", "update"]  # what a client uploads (dyn-fed: gradients)


class Update(NamedTuple):
    """A compressed upload: the client's update w - x, not its model."""

    delta: PyTree


class FedAvgState(NamedTuple):
    params: PyTree  # the global model as this client last received it
    loss: jax.Array  # () mean training loss of the last local steps
    server: PyTree  # the server optimizer's state (the same on every peer)
    link: PyTree  # the upload compressor's state (its residual; () without one)


def proximal(loss_fn: LossFn, mu: float, anchor: PyTree) -> LossFn:
    """``loss_fn + mu/2 ||params - anchor||^2`` (FedProx's local objective)."""

    def loss(params, batch):
        sq = sum(
            jnp.sum((p - a) ** 2)
            for p, a in zip(
                jax.tree.leaves(params), jax.tree.leaves(anchor), strict=True
            )
        )
        return loss_fn(params, batch) + 0.5 * mu * sq

    return loss


def fedavg(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    server_lr: float = 1.0,
    steps: int = 1,
    client_fraction: float = 1.0,
    weighting: Weighting = "data_size",
    *,
    server_opt: optax.GradientTransformation | None = None,
    mu: float = 0.0,
    aggregate=None,
    compressor: Compressor | None = None,
    send: Send = "model",
) -> Algorithm:
    """FedAvg: ``steps`` local steps on a ``client_fraction`` of the clients,
    whose models the server aggregates (``weighting``, or ``aggregate``) and
    steps to with ``server_opt`` (default sgd with ``server_lr``)."""
    server_opt_given = server_opt
    server_opt = server_opt or optax.sgd(server_lr)

    def init(params, key):
        del key
        link = compressor.init(params) if compressor else ()
        return FedAvgState(params, jnp.zeros(()), server_opt.init(params), link)

    def local(state, batches, topo, key):
        del topo
        objective = proximal(loss_fn, mu, state.params) if mu else loss_fn
        params, _, loss = local_steps(
            objective, local_opt, state.params, local_opt.init(state.params), batches
        )
        upload, link = params, state.link
        if compressor or send == "update":
            update = jax.tree.map(jnp.subtract, params, state.params)
            upload = Update(update)
        if compressor:
            q, link, bits = compressor.apply(update, state.link, key)
            upload = Update(Coded(q, bits))
        upload = Scored(upload, loss) if weighting == "loss" else upload
        return state._replace(loss=loss, link=link), upload

    def combine(state, inbox, topo):
        del topo
        if isinstance(inbox, Update):  # the aggregate of the updates
            inbox = jax.tree.map(jnp.add, state.params, inbox.delta)
        pseudo = jax.tree.map(lambda g, avg: g - avg, state.params, inbox)
        updates, server = server_opt.update(pseudo, state.server, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, server=server)

    static = "uniform" if weighting == "loss" else weighting
    plain_server = server_opt_given is None and server_lr == 1.0
    rounds = RoundStructure(
        steps, client_fraction, static, server_copies=not plain_server
    )
    return Algorithm(init, local, combine, "server", rounds, aggregate=aggregate)


def _server_parts(server_lr: float, server_optimizer, aggregator):
    """(server optimizer, aggregate) from the scenario's keys."""
    opt = None
    if server_optimizer is not None:
        if server_lr != 1.0:
            raise ScenarioError(
                "algorithm.server_lr",
                "set the step size in server_optimizer.lr, not both",
            )
        opt = SERVER_OPTIMIZERS.build(
            dict(server_optimizer), "algorithm.server_optimizer"
        )
    aggregate = None
    if aggregator is not None:
        aggregate = AGGREGATORS.build(dict(aggregator), "algorithm.aggregator")
        if dict(aggregator).get("name") == "mean":
            aggregate = None  # the exchange's own weighted mean
    return opt, aggregate


def _family(loss_fn, optimizer, mu: float, local_steps: int, server_lr: float,
            client_fraction: float, weighting: Weighting, server_optimizer,
            aggregator, compressor, send) -> Algorithm:  # fmt: skip
    """FedAvg or FedProx from the scenario's keys (the registry entries below)."""
    opt, aggregate = _server_parts(server_lr, server_optimizer, aggregator)
    return fedavg(
        loss_fn,
        optimizer(local_steps),
        server_lr=server_lr,
        steps=local_steps,
        client_fraction=client_fraction,
        weighting=weighting,
        server_opt=opt,
        mu=mu,
        aggregate=aggregate,
        compressor=build_compressor(compressor) if compressor else None,
        send=send,
    )


@ALGORITHMS.register("fedavg")
def _fedavg(
    loss_fn,
    optimizer,
    *,
    local_steps: int = 1,
    server_lr: float = 1.0,
    client_fraction: float = 1.0,
    weighting: Weighting = "data_size",
    server_optimizer: dict | None = None,
    aggregator: dict | None = None,
    compressor: CompressorSpec | None = None,
    send: Send = "model",
) -> Algorithm:
    return _family(loss_fn, optimizer, 0.0, local_steps, server_lr,
                   client_fraction, weighting, server_optimizer, aggregator,
                   compressor, send)  # fmt: skip


@ALGORITHMS.register("fedprox")
def _fedprox(
    loss_fn,
    optimizer,
    *,
    mu: float = 0.01,
    local_steps: int = 1,
    server_lr: float = 1.0,
    client_fraction: float = 1.0,
    weighting: Weighting = "data_size",
    server_optimizer: dict | None = None,
    aggregator: dict | None = None,
    compressor: CompressorSpec | None = None,
    send: Send = "model",
) -> Algorithm:
    if mu < 0:
        raise ScenarioError("algorithm.mu", f"must be >= 0, got {mu}")
    return _family(loss_fn, optimizer, mu, local_steps, server_lr,
                   client_fraction, weighting, server_optimizer, aggregator,
                   compressor, send)  # fmt: skip
