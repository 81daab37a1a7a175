"""Attacks on captured messages: the ATTACKS registry, privacy.csv rows, ROC curves.

Every received message (see ``messages.py``) is evaluated once, vmapped over
messages and examples, on a pool of labelled examples: each peer's training
examples (the evaluation's first ones per peer) and the test set. Members of a
message are its victim's training examples, non-members the test examples
(the decentralizepy / Zip-DL evaluation). An attack reads these tables and
returns rows: one per message, and one per round pooling the messages of
that round (victim ``all``; attacker ``all`` for the single neighbours, and
a row of its own for each colluding set and the marginalized attacker), since
low-FPR figures need many non-members. Attacks are registry entries; a
scenario names them, with keyword arguments:
``attacks: [threshold, {name: lira, shadows: 16}]``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench.privacy.attacks import BIASED_KS, lowest_member_fraction, source_ranks
from workbench.privacy.messages import Received
from workbench.privacy.metrics import METRIC_KEYS, attack_metrics
from workbench.privacy.shadows import shadow_outputs
from workbench.registry import Registry

ATTACKS = Registry("attack", context=("ctx",))
PRIVACY_FIELDS = [
    "round",
    "victim",
    "attacker",
    "attack",
    "class",
    *METRIC_KEYS,
    "top1",
    "top5",
    "mean_rank",
    *(f"lowest_{k}" for k in BIASED_KS),
]
EVAL_BATCH = 128


class Pool(NamedTuple):
    """The labelled examples every message is evaluated on (device arrays)."""

    x: jax.Array  # (P, ...) each peer's training examples, then the test set
    y: jax.Array  # (P,) int32
    owner: np.ndarray  # (P,) int peer whose training example it is; -1: test
    valid: np.ndarray  # (P,) bool a real example (not padding)


class Tables(NamedTuple):
    """Each message's outputs on every pool example (host arrays)."""

    loss: np.ndarray  # (M, P) cross-entropy
    phi: np.ndarray  # (M, P) LiRA statistic log p_y - log sum_{j != y} p_j
    p_true: np.ndarray  # (M, P) probability of the true label


class AttackContext(NamedTuple):
    received: Received
    pool: Pool
    tables: Tables
    num_peers: int
    num_classes: int
    seed: int
    apply_fn: Callable  # (params, x) -> logits of one model
    init_fn: Callable  # key -> params of one fresh model (shadows)
    train: Any  # {"optimizer", "batch_size", "local_steps", "rounds"} of the peers
    cache: dict  # what attacks share, kept by the Attacker across chunks
    runs: Any = None  # shadow_runs.RunSetup: what decentralized shadow runs need
    receive: Callable | None = None  # one shadow run's Captured -> Received


class AttackResult(NamedTuple):
    rows: list[dict]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> pooled scores
    messages: int = 0  # messages attacked


def register_attack(name: str):
    """Registers ``fn(ctx: AttackContext, **kwargs) -> AttackResult``."""
    return ATTACKS.register(name)


def pool_of(eval_data) -> Pool:
    """The pool from the engine's EvalData: every peer's train rows, then test."""
    tx, ty, size = eval_data.train
    n, m = ty.shape
    owner = np.concatenate(
        [np.repeat(np.arange(n), m), np.full(eval_data.test_y.shape[0], -1)]
    )
    valid = np.concatenate(
        [
            (np.arange(m)[None] < np.asarray(size)[:, None]).reshape(-1),
            np.asarray(eval_data.test_mask) > 0,
        ]
    )
    x = jnp.concatenate([tx.reshape((n * m,) + tx.shape[2:]), eval_data.test_x])
    y = jnp.concatenate([ty.reshape(-1), eval_data.test_y])
    return Pool(x, y, owner, valid)


def tables_of(apply_fn: Callable, models, pool: Pool) -> Tables:
    """Every message's loss, LiRA statistic and p_true on every pool example."""
    out = shadow_outputs(apply_fn, models, pool.x, pool.y, EVAL_BATCH)
    out = jax.device_get(out)
    return Tables(-np.asarray(out.log_p), np.asarray(out.phi), np.asarray(out.p_true))


# --------------------------------------------------------------------- rows


def row(round_, victim, attacker, attack, **values) -> dict:
    return {
        "round": int(round_),
        "victim": victim,
        "attacker": attacker,
        "attack": attack,
        **values,
    }


def members_of(ctx: AttackContext, i: int) -> np.ndarray:
    """Pool indices of message i's members: its victim's training examples."""
    v = ctx.received.victim[i]
    return np.flatnonzero((ctx.pool.owner == v) & ctx.pool.valid)


def nonmembers_of(ctx: AttackContext) -> np.ndarray:
    return np.flatnonzero((ctx.pool.owner < 0) & ctx.pool.valid)


def by_round(ctx: AttackContext) -> dict[int, np.ndarray]:
    """{round: indices of its messages}, rounds ascending."""
    r = ctx.received.round
    return {int(k): np.flatnonzero(r == k) for k in np.unique(r)}


def score_rows(
    ctx: AttackContext,
    attack: str,
    scores: np.ndarray | None,
    extra: Callable | None = None,
    split: Callable | None = None,
) -> AttackResult:
    """Rows of a membership score (M, P): per message and pooled per round.

    ``extra(i, member_idx, nonmember_idx)`` adds columns to message i's row.
    ``split(i) -> (member scores, non-member scores)`` replaces ``scores`` for
    attacks whose members and non-members differ per message.
    The curve (pooled scores) is that of the last round.
    """
    out, curves = [], {}
    out_idx = nonmembers_of(ctx)
    rec = ctx.received
    for r, msgs in by_round(ctx).items():
        ins, outs = {}, {}
        for i in msgs:
            in_idx = members_of(ctx, i)
            if split is not None:
                inside, outside = split(i)
            else:
                inside, outside = scores[i, in_idx], scores[i, out_idx]
            kind = attacker_kind(rec.attacker[i])
            ins.setdefault(kind, []).append(inside)
            outs.setdefault(kind, []).append(outside)
            more = extra(i, in_idx, out_idx) if extra else {}
            metrics = attack_metrics(inside, outside)
            out.append(
                row(r, int(rec.victim[i]), rec.attacker[i], attack, **metrics, **more)
            )
        curves = {}
        for kind in ins:
            pooled = np.concatenate(ins[kind]), np.concatenate(outs[kind])
            out.append(row(r, "all", kind, attack, **attack_metrics(*pooled)))
            curves[attack if kind == "all" else f"{attack} ({kind})"] = pooled
    return AttackResult(out, curves)


def by_kind(ctx: AttackContext, msgs: np.ndarray) -> dict[str, np.ndarray]:
    """{attacker kind: the messages of ``msgs`` pooled under it}, first-seen order."""
    kinds = np.asarray([attacker_kind(ctx.received.attacker[i]) for i in msgs])
    return {k: msgs[kinds == k] for k in dict.fromkeys(kinds.tolist())}


def attacker_kind(attacker: str) -> str:
    """The pooled row an attacker's messages go to: single neighbours pool as
    ``all``; each colluding set and the marginalized attacker on their own."""
    return (
        "all" if attacker == "neighbours" or attacker.startswith("peer ") else attacker
    )


# ------------------------------------------------------------------ attacks


@register_attack("threshold")
def threshold(ctx: AttackContext) -> AttackResult:
    """Loss threshold (Yeom et al. 2018): score = -loss; every message's row also
    has the biased threshold (fraction of members among the k lowest losses)."""

    def biased(i, in_idx, out_idx):
        loss = ctx.tables.loss[i]
        frac = lowest_member_fraction(loss[in_idx], loss[out_idx], BIASED_KS)
        return {
            f"lowest_{k}": float(f)
            for k, f in zip(BIASED_KS, np.asarray(frac), strict=True)
        }

    return score_rows(ctx, "threshold", -ctx.tables.loss, biased)


@register_attack("threshold_balanced")
def threshold_balanced(ctx: AttackContext) -> AttackResult:
    """The loss threshold with non-members subsampled to the member count."""
    out_idx = nonmembers_of(ctx)
    rows = []
    rec = ctx.received
    for r, msgs in by_round(ctx).items():
        for i in msgs:
            inside = members_of(ctx, i)
            who = zlib.crc32(rec.attacker[i].encode())  # same draw however batched
            rng = np.random.default_rng((ctx.seed, r, int(rec.victim[i]), who))
            take = rng.permutation(out_idx)[: len(inside)]
            loss = ctx.tables.loss[i]
            rows.append(
                row(
                    r,
                    int(ctx.received.victim[i]),
                    ctx.received.attacker[i],
                    "threshold_balanced",
                    **attack_metrics(-loss[inside], -loss[take]),
                )
            )
    return AttackResult(rows, {})


@register_attack("threshold_class")
def threshold_class(ctx: AttackContext) -> AttackResult:
    """The loss threshold per class, pooled over each round's messages (per
    attacker kind, as the pooled rows of the other attacks)."""
    labels = np.asarray(ctx.pool.y)
    out_idx = nonmembers_of(ctx)
    rows = []
    for r, all_msgs in by_round(ctx).items():
        for kind, msgs in by_kind(ctx, all_msgs).items():
            rows += _class_rows(ctx, r, kind, msgs, labels, out_idx)
    return AttackResult(rows, {})


def _class_rows(ctx, r, kind, msgs, labels, out_idx) -> list[dict]:
    """Round r's per-class rows of the messages ``msgs`` (one attacker kind)."""
    ins = np.concatenate([members_of(ctx, i) for i in msgs])
    which = np.concatenate([np.full(len(members_of(ctx, i)), i) for i in msgs])
    outs = np.tile(out_idx, len(msgs))
    which_out = np.repeat(msgs, len(out_idx))
    s_in = -ctx.tables.loss[which, ins]
    s_out = -ctx.tables.loss[which_out, outs]
    rows = []
    for c in range(ctx.num_classes):
        a, b = s_in[labels[ins] == c], s_out[labels[outs] == c]
        if a.size and b.size:
            metrics = attack_metrics(a, b)
            rows.append(
                row(r, "all", kind, "threshold_class", **{"class": c}, **metrics)
            )
    return rows


@register_attack("linkability")
def linkability(ctx: AttackContext) -> AttackResult:
    """Guess each message's source as the peer whose training set gives it the
    lowest mean loss: top-1, top-5 and mean rank of the true source."""
    n = ctx.num_peers
    valid = ctx.pool.valid & (ctx.pool.owner >= 0)
    onehot = (ctx.pool.owner[None] == np.arange(n)[:, None]) & valid[None]  # (n, P)
    mean_loss = ctx.tables.loss @ onehot.T / np.maximum(onehot.sum(1), 1)  # (M, n)
    ranks = np.asarray(
        source_ranks(jnp.asarray(mean_loss), jnp.asarray(ctx.received.victim))
    )
    rows = []

    def figures(rk):
        return {
            "top1": float(np.mean(rk <= 1)),
            "top5": float(np.mean(rk <= 5)),
            "mean_rank": float(np.mean(rk)),
        }

    for r, msgs in by_round(ctx).items():
        for i in msgs:
            rows.append(
                row(
                    r,
                    int(ctx.received.victim[i]),
                    ctx.received.attacker[i],
                    "linkability",
                    **figures(ranks[i : i + 1]),
                )
            )
        for kind, group in by_kind(ctx, msgs).items():
            rows.append(row(r, "all", kind, "linkability", **figures(ranks[group])))
    return AttackResult(rows, {})


# ---------------------------------------------------------------- running


def attack_specs(names) -> list[dict]:
    """The scenario's attacks as ``{name, **kwargs}`` specs."""
    return [{"name": a} if isinstance(a, str) else dict(a) for a in names]


def run_attacks(ctx: AttackContext, specs) -> AttackResult:
    """Runs each attack spec; their rows in order, and all their curves."""
    rows, curves = [], {}
    for i, spec in enumerate(attack_specs(specs)):
        result = ATTACKS.build(spec, f"privacy.attacks[{i}]", ctx=ctx)
        rows += result.rows
        curves.update(result.curves)
    return AttackResult(rows, curves, len(ctx.received.round))


# registers lira and rmia (they build on the helpers above)
from workbench.privacy import reference_attacks  # noqa: E402, F401
