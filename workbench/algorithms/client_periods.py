"""Per-client communication periods (the dyn-fed seed's modes 1 and 2).

Each client spends its own share of a budget of ``communications`` (N) over
the run of T rounds (a round is ``period`` local steps). A client whose
schedule starts at round s and covers R rounds with c communications sends in
round u when floor((u - s + 1) c / R) > floor((u - s) c / R): c sends, evenly
spaced, the last in the schedule's last round. Its share is

    c_i = min(R, max(1, ceil(score_i * N * R / T)))

with scores min-max normalised over the clients (all 1 when they are equal):

- ``svd`` (mode 1): the first index k_i at which the cumulative singular
  values of the client's training matrix (one flattened sample per row) reach
  ``percentile`` of their sum; fixed for the run (s = 0, R = T). Clients with
  more complex data communicate more often.
- ``loss`` (mode 2): the client's training loss when it last sent. The reply
  carries the lowest and highest loss the server holds (each client's last
  report); a client that sent rescores itself and starts a new schedule over
  the rounds left. Until its first report a client's score is 1. Clients with
  a higher loss communicate more often.

The clients that send take the (weighted) mean of their models; the others
keep training their own. Only senders pay: their upload (the model and the
loss) and, once each, the reply. A round in which nobody sends is free.

Where the seed differs: it sends at the start of each period of
ceil(T / c_i) iterations, then every iteration near the end to make up the
missing ones (which may leave it short of c_i); here exactly c_i, spaced
evenly. Its loss mode renormalises over only the clients that sent in that
round and budgets one communication per remaining iteration; here the server's
last report of every client, and N scaled to the rounds left. It computes the
singular values on raw samples; here on the standardised ones the run trains on.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
    tree_where,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.exchange import Decision, weighted_mean
from workbench.errors import ScenarioError

Mode = Literal["svd", "loss"]


class PeriodState(NamedTuple):
    params: PyTree  # this client's model
    peer: jax.Array  # () int32 its id
    round: jax.Array  # () int32 rounds done
    start: jax.Array  # () int32 the round its schedule starts
    span: jax.Array  # () int32 R: rounds its schedule covers
    count: jax.Array  # () int32 c: communications in its schedule
    sends: jax.Array  # () bool it sends this round
    loss: jax.Array  # () mean training loss of the last local steps
    reported: jax.Array  # () its loss at its last send (nan: none yet)


class Report(NamedTuple):
    """A client's upload; only a sender's costs its bits."""

    model: PyTree
    loss: jax.Array  # () its training loss this round
    reported: jax.Array  # () its last report (the server holds it already)
    sends: jax.Array  # () bool


class Reply(NamedTuple):
    model: PyTree  # the mean of the senders' models
    low: jax.Array  # () the lowest loss reported so far (nan: none)
    high: jax.Array  # () the highest


def effective_rank(x: np.ndarray, percentile: float = 0.95) -> int:
    """First index at which the cumulative singular values of ``x`` (samples
    flattened, one per row) reach ``percentile`` of their sum."""
    s = np.linalg.svd(x.reshape(len(x), -1).astype(np.float64), compute_uv=False)
    share = np.cumsum(s) / max(np.sum(s), 1e-300)
    return int(np.argmax(share >= percentile - 1e-12))


def normalised(score: np.ndarray | jax.Array, low, high):
    """Min-max normalised scores; all 1 when ``high`` is not above ``low``."""
    spread = high - low
    return jnp.where(spread > 0, (score - low) / jnp.where(spread > 0, spread, 1), 1.0)


def share(score, budget: int, span, horizon: int):
    """c: communications of a schedule of ``span`` rounds (int32)."""
    c = jnp.ceil(score * budget * span / horizon - 1e-6)
    return jnp.clip(c, 1, jnp.maximum(span, 1)).astype(jnp.int32)


def sends_at(u, start, span, count):
    """Whether a schedule (start, span, count) sends in round ``u``."""
    i = u - start
    r = jnp.maximum(span, 1)
    inside = (i >= 0) & (i < span)
    return inside & ((i + 1) * count // r > i * count // r)


def decide(uploads: Report, weights, key):
    """The coordinator takes the senders and replies their mean model."""
    del key
    taken = uploads.sends
    c = jnp.where(taken, weights, 0.0)
    mean = weighted_mean(uploads.model, c / jnp.maximum(jnp.sum(c), 1e-30))
    held = jnp.where(taken, uploads.loss, uploads.reported)
    low = jnp.min(jnp.where(jnp.isnan(held), jnp.inf, held))
    high = jnp.max(jnp.where(jnp.isnan(held), -jnp.inf, held))
    none = jnp.all(jnp.isnan(held))
    return Decision(
        Reply(mean, jnp.where(none, jnp.nan, low), jnp.where(none, jnp.nan, high)),
        taken,
    )


def client_periods(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    mode: Mode,
    communications: int,
    horizon: int,
    scores: np.ndarray | None = None,
    period: int = 1,
    weighting: Literal["uniform", "data_size"] = "uniform",
) -> Algorithm:
    """``scores`` (n,): the svd mode's normalised scores (None: loss mode)."""
    table = None if scores is None else jnp.asarray(scores, jnp.float32)

    def init(params, key, topo):
        del key
        peer = topo.idx[0]
        score = 1.0 if table is None else table[peer]
        zero = jnp.zeros((), jnp.int32)
        return PeriodState(
            params, peer, zero, zero, jnp.int32(horizon),
            share(score, communications, horizon, horizon), jnp.zeros((), bool),
            jnp.zeros(()), jnp.full((), jnp.nan),
        )  # fmt: skip

    def local(state, batches, topo, key):
        del topo, key
        params, _, loss = local_steps(
            loss_fn, local_opt, state.params, local_opt.init(state.params), batches
        )
        go = sends_at(state.round, state.start, state.span, state.count)
        state = state._replace(params=params, sends=go, loss=loss)
        return state, Report(params, loss, state.reported, go)

    def combine(state, reply: Reply, topo):
        del topo
        go, t = state.sends, state.round
        state = state._replace(
            params=tree_where(go, reply.model, state.params),
            reported=jnp.where(go, state.loss, state.reported),
            round=t + 1,
        )
        if table is not None:
            return state
        span = jnp.int32(horizon) - t - 1
        score = normalised(state.loss, reply.low, reply.high)
        return state._replace(
            start=jnp.where(go, t + 1, state.start),
            span=jnp.where(go, span, state.span),
            count=jnp.where(go, share(score, communications, span, horizon),
                            state.count),
        )  # fmt: skip

    rounds = RoundStructure(period, 1.0, weighting)
    return Algorithm(
        init, local, combine, "coordinator", rounds, aggregate=decide,
        uses_topology=True, init_topology=True,  # the peer's id: topo.idx[0]
    )  # fmt: skip


def svd_scores(training, percentile: float) -> np.ndarray:
    """(n,) normalised effective ranks of each peer's training split."""
    x, _, size = training
    ranks = np.array(
        [
            effective_rank(np.asarray(x[i, : size[i]]), percentile)
            for i in range(len(size))
        ],
        np.float64,
    )
    return np.asarray(normalised(ranks, ranks.min(), ranks.max()))


@ALGORITHMS.register("client_periods")
def _client_periods(
    loss_fn,
    optimizer,
    *,
    mode: Mode,
    communications: int,
    period: int = 1,
    percentile: float = 0.95,
    weighting: Literal["uniform", "data_size"] = "uniform",
    rounds: int | None = None,
    training=None,
) -> Algorithm:
    if communications < 1:
        raise ScenarioError(
            "algorithm.communications", f"must be >= 1, got {communications}"
        )
    if period < 1:
        raise ScenarioError("algorithm.period", f"must be >= 1, got {period}")
    if not 0 < percentile <= 1:
        raise ScenarioError(
            "algorithm.percentile", f"must be in (0, 1], got {percentile}"
        )
    if rounds is None or (mode == "svd" and training is None):
        raise ScenarioError(
            "algorithm.name", "client_periods needs the run's rounds and training data"
        )
    scores = svd_scores(training, percentile) if mode == "svd" else None
    return client_periods(
        loss_fn, optimizer(period), mode, communications, rounds, scores, period,
        weighting,
    )  # fmt: skip
