"""Evaluation: a registry of metric functions, and the rows they become.

A metric is ``fn(ctx: MetricContext) -> {column: array}`` (``ctx.values`` holds
the columns of the metrics computed before it); an array of shape
(n,) is per peer (written to peers.csv and summarised in metrics.csv), one of
shape () is global (metrics.csv only). The defaults give the columns every run
has; a scenario adds others by name (``evaluation: {metrics: [param_norm]}``).
``make_evaluate`` jits the chosen metrics into one function of the stacked
parameters; ``rows`` turns its output and the traffic into CSV rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.errors import ScenarioError, one_of
from workbench.objective import EvalSums, eval_sums
from workbench.registry import Registry
from workbench.rounds import EvalData

Metric = Callable[["MetricContext"], dict[str, jax.Array]]
METRICS = Registry("metric", context=("ctx",))  # name -> metric function
DEFAULT_METRICS = ("accuracy", "averaged_model", "consensus")


class MetricContext(NamedTuple):
    apply_fn: Callable  # (params, x) -> logits, for one peer's params
    params: Any  # stacked parameters, leaves (n, ...)
    data: EvalData
    lift: Callable  # per-peer fn -> stacked fn (the run's execution strategy)
    batch_size: int
    values: dict[str, jax.Array] = {}  # columns of the metrics computed before


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Registers ``fn(ctx) -> {column: (n,) or () array}`` under ``name``."""
    return METRICS.register(name)


def check_metrics(names, path: str = "evaluation.metrics") -> tuple[str, ...]:
    """The names, each a METRICS entry; a one-line ScenarioError otherwise."""
    for name in names:
        if name not in METRICS:
            raise ScenarioError(path, f"metric {one_of(name, METRICS)}")
    return tuple(names)


def _ratio(sums: EvalSums) -> tuple[jax.Array, jax.Array]:
    """(accuracy, mean loss) from sums; 0 where there are no examples."""
    count = jnp.maximum(sums.count, 1.0)
    return sums.correct / count, sums.loss / count


def _own(ctx: MetricContext, params, split) -> EvalSums:
    x, y, size = split
    mask = (jnp.arange(x.shape[0]) < size).astype(jnp.float32)
    return eval_sums(ctx.apply_fn, params, x, y, mask, ctx.batch_size)


def _test(ctx: MetricContext, params) -> EvalSums:
    d = ctx.data
    return eval_sums(
        ctx.apply_fn, params, d.test_x, d.test_y, d.test_mask, ctx.batch_size
    )


def mean_model(params):
    return jax.tree.map(lambda p: jnp.mean(p, axis=0), params)


@register_metric("accuracy")
def accuracy(ctx: MetricContext) -> dict[str, jax.Array]:
    """Each peer's own model on its train and validation sets and the test set."""

    def peer(p, train, val):
        return _own(ctx, p, train), _own(ctx, p, val), _test(ctx, p)

    sums = ctx.lift(peer)(ctx.params, tuple(ctx.data.train), tuple(ctx.data.val))
    out = {}
    for split, s in zip(("train", "val", "test"), sums, strict=True):
        out[f"{split}_acc"], out[f"{split}_loss"] = _ratio(s)
    return out


@register_metric("averaged_model")
def averaged_model(ctx: MetricContext) -> dict[str, jax.Array]:
    """The average of all peers' parameters, evaluated on the test set."""
    acc, loss = _ratio(_test(ctx, mean_model(ctx.params)))
    return {"averaged_model_acc": acc, "averaged_model_loss": loss}


def _per_peer_sq(tree, ref) -> jax.Array:
    leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(ref), strict=True)
    return sum(
        jnp.sum((p - r[None]) ** 2, axis=tuple(range(1, p.ndim))) for p, r in leaves
    )


@register_metric("consensus")
def consensus(ctx: MetricContext) -> dict[str, jax.Array]:
    """||x_i - xbar||^2 per peer; its mean is the consensus distance."""
    return {"consensus_distance": _per_peer_sq(ctx.params, mean_model(ctx.params))}


@register_metric("param_norm")
def param_norm(ctx: MetricContext) -> dict[str, jax.Array]:
    """||x_i|| per peer (all parameters as one vector)."""
    zero = jax.tree.map(lambda p: jnp.zeros(p.shape[1:], p.dtype), ctx.params)
    return {"param_norm": jnp.sqrt(_per_peer_sq(ctx.params, zero))}


@register_metric("generalization_gap")
def generalization_gap(ctx: MetricContext) -> dict[str, jax.Array]:
    """Test loss minus own training loss per peer (what membership attacks exploit).

    Reads the ``accuracy`` columns, a default metric computed first.
    """
    own = ctx.values
    return {"generalization_gap": own["test_loss"] - own["train_loss"]}


class Evaluated(NamedTuple):
    values: dict[str, jax.Array]  # column -> (n,) per peer or () global
    finite: jax.Array  # () bool: every parameter is finite


def make_evaluate(
    apply_fn: Callable, lift: Callable, batch_size: int, names=DEFAULT_METRICS
) -> Callable:
    """``evaluate(params (n, ...), data: EvalData) -> Evaluated`` (jitted)."""
    chosen = [METRICS[name] for name in dict.fromkeys((*DEFAULT_METRICS, *names))]

    def evaluate(params, data: EvalData):
        values: dict[str, jax.Array] = {}
        for metric in chosen:
            ctx = MetricContext(apply_fn, params, data, lift, batch_size, values)
            values = {**values, **metric(ctx)}
        leaves = jax.tree.leaves(params)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in leaves]))
        return Evaluated(values, finite)

    return jax.jit(evaluate)


# ------------------------------------------------------------------- rows

METRICS_FIELDS = [
    "round",
    "virtual_time",
    "wall_time",
    "test_acc_mean",
    "test_acc_min",
    "test_acc_max",
    "test_acc_std",
    "test_loss_mean",
    "test_loss_min",
    "test_loss_max",
    "test_loss_std",
    "train_loss_mean",
    "train_acc_mean",
    "val_loss_mean",
    "val_acc_mean",
    "averaged_model_acc",
    "averaged_model_loss",
    "consensus_distance",
    "bytes_sent_total",
    "bytes_sent_per_peer",
    "bytes_per_round_per_peer",
    "active_peers",
]
PEER_FIELDS = [
    "round",
    "virtual_time",
    "peer",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "consensus_distance",
    "bytes_sent",
]
SPREAD = ("test_acc", "test_loss")  # per-peer columns summarised with min/max/std
MEAN_AS = {"consensus_distance": "consensus_distance"}  # mean keeps the name


def _summary_columns(key: str, ndim: int) -> list[str]:
    if ndim == 0:
        return [key]
    if key in SPREAD:
        return [f"{key}_{stat}" for stat in ("mean", "min", "max", "std")]
    return [MEAN_AS.get(key, f"{key}_mean")]


def columns(shapes: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(metrics.csv, peers.csv) columns for an evaluation with these outputs.

    Args:
      shapes: column -> array or ShapeDtypeStruct (``jax.eval_shape`` of the
        evaluation's ``values``).
    """
    metric_cols, peer_cols = list(METRICS_FIELDS), list(PEER_FIELDS)
    for key, shape in shapes.items():
        for col in _summary_columns(key, len(shape.shape)):
            if col not in metric_cols:
                metric_cols.append(col)
        if len(shape.shape) == 1 and key not in peer_cols:
            peer_cols.append(key)
    return metric_cols, peer_cols


def _stats(values: np.ndarray, prefix: str) -> dict:
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
        f"{prefix}_std": float(values.std()),
    }


def rows(
    values: dict[str, Any],
    round_: int,
    wall: float,
    sent_bits: np.ndarray,
    server_bits: float,
    active: float,
    virtual_time: float | None = None,
) -> tuple[dict, list[dict]]:
    """(metrics.csv row, peers.csv rows) of one evaluation.

    Args:
      values: the evaluation's columns, host arrays (n,) or ().
      sent_bits: (n,) bits each peer has sent so far; ``server_bits`` likewise.
      active: peers active per round (clocked: mean over the chunk's ticks of
        the peers that finished a step).
      virtual_time: the clock's time at ``round_`` (None: unclocked, the round).
    """
    values = {k: np.asarray(v, np.float64) for k, v in values.items()}
    peer_bytes = np.asarray(sent_bits, np.float64) / 8
    vt = float(round_) if virtual_time is None else round(float(virtual_time), 6)
    row = {"round": round_, "virtual_time": vt, "wall_time": round(wall, 4)}
    per_peer = {k: v for k, v in values.items() if v.ndim == 1}
    for key, value in values.items():
        if key in SPREAD:
            row.update(_stats(value, key))
        else:
            (col,) = _summary_columns(key, value.ndim)
            row[col] = float(value.mean())
    row["bytes_sent_total"] = float(peer_bytes.sum() + server_bits / 8)
    row["bytes_sent_per_peer"] = float(peer_bytes.mean())
    row["bytes_per_round_per_peer"] = float(peer_bytes.mean() / max(round_, 1))
    row["active_peers"] = active
    n = len(peer_bytes)
    peers = [
        {
            "round": round_,
            "virtual_time": vt,
            "peer": i,
            **{k: float(v[i]) for k, v in per_peer.items()},
            "bytes_sent": float(peer_bytes[i]),
        }
        for i in range(n)
    ]
    return row, peers
