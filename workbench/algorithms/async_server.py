"""Asynchronous server algorithms: FedAsync, FedBuff, ASGD and DC-ASGD.

Each has a stateful :class:`~workbench.algorithms.base.Server` and runs on
the virtual clock (the default clock, every client finishing every round,
when the scenario has no ``clock:`` section). A client pulls the server's
model, works on it for one step of its own duration, uploads, and pulls
again; the server applies the uploads one at a time in the order they
arrive, and the tick's uploaders pull the model after the tick's last one.

- FedAsync (Xie et al. 2019, arXiv 1903.03934): the client trains tau local
  steps and uploads its model x with the server version tau_i it started
  from; the server mixes w <- (1 - a) w + a x, a = alpha s(t - tau_i),
  staleness function s = 1 (``constant``) or (t - tau_i + 1)^(-power)
  (``polynomial``).
- FedBuff (Nguyen et al. 2022, arXiv 2106.06639): the client uploads its
  delta x - w_pulled; the server sums K of them and then steps
  w <- w + server_lr * sum / K. With K equal to the cohort and server_lr 1
  it is FedAvg with uniform weights. A client may be a party of ``workers``
  (HiPS, with a buffer of 1: ASGD on party deltas): each of its
  ``local_steps`` party rounds is ``kappa1`` steps of every worker from the
  party model, then their mean. The workers draw their batches from the
  party's data (the party's data split among them i.i.d.).
- ASGD: the client uploads the gradient at the model it pulled; the server
  applies it with the scenario's optimizer (optax: lr, momentum, schedule).
- DC-ASGD (Zheng et al. 2017, arXiv 1609.08326), the paper's version: the
  server compensates the delay, g <- g + lambda g * g * (w - w_bak(m)), with
  w_bak(m) the model worker m last pulled, kept per worker on the server
  (MXNet's implementation keeps only the last step instead). With no delay
  (w = w_bak) it is SGD.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from pydantic import Field

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    Server,
    local_steps,
    mean_gradient,
)
from workbench.algorithms.registry import ALGORITHMS


class ClientState(NamedTuple):
    params: PyTree  # the server model as this client last pulled it
    version: jax.Array  # () int32 the server version it pulled
    loss: jax.Array  # () mean training loss of the last local steps


class Versioned(NamedTuple):
    params: PyTree  # the server model
    version: jax.Array  # () int32 uploads applied so far


def _client_init(params, key):
    del key
    return ClientState(params, jnp.zeros((), jnp.int32), jnp.zeros(()))


def _pull(state: ClientState, reply, topo) -> ClientState:
    """Takes the server's reply: its model, and its version when it sends one."""
    del topo
    if isinstance(reply, Versioned):
        return state._replace(params=reply.params, version=reply.version)
    return state._replace(params=reply)


def _reply_versioned(server, pulled):
    del pulled
    return server, Versioned(server.params, server.version)


def _reply(server, pulled):
    del pulled
    return server, server.params


def _trained(loss_fn, opt, state: ClientState, batches):
    """The client's model after tau local steps from the pulled one (its
    optimizer state restarts every step, like FedAvg's clients)."""
    params, _, loss = local_steps(
        loss_fn, opt, state.params, opt.init(state.params), batches
    )
    return params, loss


class Party(NamedTuple):
    """A client that is a party of workers (HiPS): each of its ``local_steps``
    party rounds is ``kappa1`` local steps of each of its ``workers`` from the
    party model, then the party model becomes their mean."""

    workers: int
    kappa1: int

    def batches_per_round(self) -> int:
        return self.workers * self.kappa1


def party_trained(loss_fn, opt, params, batches, party: Party):
    """(the party model after its rounds, the mean loss): ``batches`` leaves
    (rounds * workers * kappa1, ...), worker w's steps of round r at rows
    r * workers * kappa1 + w * kappa1 + [0, kappa1)."""
    w, k = party.workers, party.kappa1

    def party_round(x, round_batches):
        def worker(b):
            y, _, loss = local_steps(loss_fn, opt, x, opt.init(x), b)
            return y, loss

        split = jax.tree.map(lambda a: a.reshape((w, k) + a.shape[1:]), round_batches)
        ys, losses = jax.vmap(worker)(split)
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), ys), jnp.mean(losses)

    rounds = jax.tree.map(lambda a: a.reshape((-1, w * k) + a.shape[1:]), batches)
    params, losses = jax.lax.scan(party_round, params, rounds)
    return params, jnp.mean(losses)


# ------------------------------------------------------------------ FedAsync


def fedasync(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    alpha: float = 0.6,
    staleness: Literal["constant", "polynomial"] = "polynomial",
    power: float = 0.5,
    steps: int = 1,
) -> Algorithm:
    def local(state, batches, topo, key):
        del topo, key
        params, loss = _trained(loss_fn, local_opt, state, batches)
        return state._replace(loss=loss), Versioned(params, state.version)

    def init(params, n):
        del n
        return Versioned(params, jnp.zeros((), jnp.int32))

    def receive(server, upload: Versioned, peer):
        del peer
        stale = (server.version - upload.version).astype(jnp.float32)
        weight = 1.0 if staleness == "constant" else (stale + 1.0) ** (-power)
        a = alpha * weight
        params = jax.tree.map(
            lambda w, x: (
                (1 - a).astype(w.dtype) * w + a.astype(w.dtype) * x
                if hasattr(a, "astype")
                else (1 - a) * w + a * x
            ),
            server.params,
            upload.params,
        )
        return Versioned(params, server.version + 1)

    rounds = RoundStructure(local_steps=steps)
    server = Server(init, receive, _reply_versioned)
    return Algorithm(_client_init, local, _pull, "server", rounds, server=server)


# ------------------------------------------------------------------- FedBuff


class Buffer(NamedTuple):
    params: PyTree  # the server model
    version: jax.Array  # () int32 server steps taken
    total: PyTree  # sum of the buffered deltas, like params
    count: jax.Array  # () int32 deltas in the buffer


def fedbuff(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    buffer: int = 10,
    server_lr: float = 1.0,
    steps: int = 1,
    party: Party | None = None,
) -> Algorithm:
    def local(state, batches, topo, key):
        del topo, key
        if party is None:
            params, loss = _trained(loss_fn, local_opt, state, batches)
        else:
            params, loss = party_trained(
                loss_fn, local_opt, state.params, batches, party
            )
        return state._replace(loss=loss), jax.tree.map(
            jnp.subtract, params, state.params
        )

    def init(params, n):
        del n
        zeros = jax.tree.map(jnp.zeros_like, params)
        return Buffer(params, jnp.zeros((), jnp.int32), zeros, jnp.zeros((), jnp.int32))

    def receive(server, delta, peer):
        del peer
        total = jax.tree.map(jnp.add, server.total, delta)
        full = server.count + 1 >= buffer
        params = jax.tree.map(
            lambda w, s: jnp.where(full, w + server_lr * s / buffer, w),
            server.params,
            total,
        )
        total = jax.tree.map(lambda s: jnp.where(full, jnp.zeros_like(s), s), total)
        return Buffer(
            params,
            server.version + full.astype(jnp.int32),
            total,
            jnp.where(full, 0, server.count + 1),
        )

    batches = steps * (party.batches_per_round() if party else 1)
    rounds = RoundStructure(local_steps=batches)
    server = Server(init, receive, _reply)
    return Algorithm(_client_init, local, _pull, "server", rounds, server=server)


# ------------------------------------------------------------ ASGD, DC-ASGD


class SGDServer(NamedTuple):
    params: PyTree  # the server model
    version: jax.Array  # () int32 gradients applied
    opt_state: PyTree  # the server optimizer's state
    backup: PyTree  # DC-ASGD: leaves (n, ...) w_bak of each worker; ASGD: None


def asgd(
    loss_fn: LossFn,
    server_opt: optax.GradientTransformation,
    compensation: float | None = None,
    steps: int = 1,
) -> Algorithm:
    """ASGD on a server; ``compensation`` = lambda makes it DC-ASGD."""

    def local(state, batches, topo, key):
        del topo, key
        loss, grads = mean_gradient(loss_fn, state.params, batches)
        return state._replace(loss=loss), grads

    def init(params, n):
        backup = None
        if compensation is not None:
            backup = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
        return SGDServer(
            params, jnp.zeros((), jnp.int32), server_opt.init(params), backup
        )

    def receive(server, grads, peer):
        if compensation is not None:
            lam = compensation
            grads = jax.tree.map(
                lambda g, w, b: g + lam * g * g * (w - b[peer]),
                grads,
                server.params,
                server.backup,
            )
        updates, opt_state = server_opt.update(grads, server.opt_state, server.params)
        params = optax.apply_updates(server.params, updates)
        return server._replace(
            params=params, version=server.version + 1, opt_state=opt_state
        )

    def send(server, pulled):
        backup = server.backup
        if backup is not None:
            backup = jax.tree.map(
                lambda b, w: jnp.where(
                    pulled.reshape((-1,) + (1,) * w.ndim), w[None], b
                ),
                backup,
                server.params,
            )
        server = server._replace(backup=backup)
        return server, server.params

    rounds = RoundStructure(local_steps=steps)
    server = Server(init, receive, send)
    return Algorithm(_client_init, local, _pull, "server", rounds, server=server)


@ALGORITHMS.register("fedasync")
def _fedasync(
    loss_fn,
    optimizer,
    *,
    alpha: Annotated[float, Field(gt=0, le=1)] = 0.6,
    staleness: Literal["constant", "polynomial"] = "polynomial",
    power: Annotated[float, Field(ge=0)] = 0.5,
    local_steps: int = 1,
) -> Algorithm:
    return fedasync(
        loss_fn, optimizer(local_steps), alpha, staleness, power, local_steps
    )


@ALGORITHMS.register("fedbuff")
def _fedbuff(
    loss_fn,
    optimizer,
    *,
    buffer: Annotated[int, Field(ge=1)] = 10,
    server_lr: float = 1.0,
    local_steps: int = 1,
    workers: Annotated[int, Field(ge=1)] = 1,
    kappa1: Annotated[int, Field(ge=1)] = 1,
) -> Algorithm:
    party = Party(workers, kappa1) if workers * kappa1 > 1 else None
    return fedbuff(
        loss_fn, optimizer(local_steps * kappa1), buffer, server_lr, local_steps,
        party,
    )  # fmt: skip


@ALGORITHMS.register("asgd")
def _asgd(loss_fn, optimizer, *, local_steps: int = 1) -> Algorithm:
    return asgd(loss_fn, optimizer(1), None, local_steps)


@ALGORITHMS.register("dcasgd")
def _dcasgd(
    loss_fn, optimizer, *, compensation: float = 0.04, local_steps: int = 1
) -> Algorithm:
    return asgd(loss_fn, optimizer(1), compensation, local_steps)
