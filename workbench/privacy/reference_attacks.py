"""LiRA and RMIA on captured messages, with centralized-proxy shadow models.

The shadows ("reference models") are S models of the scenario's architecture,
trained vmapped on complementary halves of the attack pool (every peer's
training examples and the test set, padding left out) with the peers'
optimizer, batch size and as many SGD steps as a victim had taken when it sent
the message (``round x local_steps``; ``steps`` overrides). This is the
centralized proxy of a decentralized run: an averaged model has seen its
neighbours' data, so a single model trained on a random half of the pool
stands in for it. Each example is IN for exactly S/2 shadows, members and
non-members alike, so the attack reads a target's membership, not the pool's.

Shadows are trained once per attacked round and reused by every attack of the
same ``shadows``/``steps``/``seed`` in that call (``ctx.cache``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Annotated, Literal, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import numpy as np

from workbench.errors import WorkbenchError
from workbench.privacy.lira import lira_offline, lira_online, rmia_offline, rmia_online
from workbench.privacy.run import (
    EVAL_BATCH,
    AttackContext,
    AttackResult,
    by_round,
    nonmembers_of,
    register_attack,
    score_rows,
)
from workbench.privacy.shadows import complementary_masks, shadow_outputs, train_shadows

# an even number of shadows (complementary pairs), at least one pair
ShadowCount = Annotated[int, annotated_types.Ge(2), annotated_types.MultipleOf(2)]
Steps = Annotated[int, annotated_types.Ge(0)]
Chunk = Annotated[int, annotated_types.Ge(1)]


class Shadows(NamedTuple):
    """S shadow models' outputs on the pool (host arrays, NaN off the pool)."""

    phi: np.ndarray  # (S, P) LiRA statistic
    p_true: np.ndarray  # (S, P) probability of the true label
    in_mask: np.ndarray  # (S, P) bool trained on that example


def shadow_steps(ctx: AttackContext, round_: int, steps: int | None) -> int:
    """SGD steps of a shadow for messages of (1-based) round ``round_``.

    By default as many passes over its data as a peer made over its own by
    then: ``round x local_steps`` steps on a peer's m examples become
    ``round x local_steps x (P / 2) / m`` steps on half the pool's P examples.
    """
    if steps is not None:
        return steps
    valid = ctx.pool.valid
    pool_half = valid.sum() / 2
    per_peer = (valid & (ctx.pool.owner >= 0)).sum() / ctx.num_peers
    return math.ceil(round_ * ctx.train["local_steps"] * pool_half / per_peer)


def shadows_for(
    ctx: AttackContext, round_: int, count: int, steps: int | None, chunk: int | None
) -> Shadows:
    """The shadows of one attacked round, trained once per context."""
    n_steps = shadow_steps(ctx, round_, steps)
    key = ("shadows", count, n_steps)
    if key not in ctx.cache:
        ctx.cache[key] = _train(ctx, count, n_steps, chunk)
    return ctx.cache[key]


def _train(ctx: AttackContext, count: int, steps: int, chunk: int | None) -> Shadows:
    valid = np.flatnonzero(ctx.pool.valid)
    x, y = ctx.pool.x[valid], ctx.pool.y[valid]
    root = jax.random.fold_in(jax.random.key(ctx.seed), 0x5AD0)
    mask_key, train_key = jax.random.split(root)
    in_mask = complementary_masks(mask_key, count, valid.size)
    params = train_shadows(
        ctx.apply_fn,
        ctx.init_fn,
        train_key,
        x,
        y,
        in_mask,
        steps=steps,
        batch_size=ctx.train["batch_size"],
        optimizer=ctx.train["optimizer"],
        chunk=chunk,
    )
    out = jax.device_get(shadow_outputs(ctx.apply_fn, params, x, y, EVAL_BATCH))
    size = ctx.pool.valid.shape[0]

    def spread(values, fill):  # (S, |valid|) -> (S, P)
        full = np.full((count, size), fill, dtype=np.asarray(values).dtype)
        full[:, valid] = values
        return full

    return Shadows(
        spread(out.phi, np.nan),
        spread(out.p_true, np.nan),
        spread(np.asarray(in_mask), False),
    )


def per_round_scores(ctx: AttackContext, score, shadow_args) -> np.ndarray:
    """(M, P) scores: ``score(target_rows, shadows)`` for each round's messages."""
    scores = np.full(ctx.tables.phi.shape, np.nan, np.float32)
    for r, msgs in by_round(ctx).items():
        scores[msgs] = score(msgs, shadows_for(ctx, r, *shadow_args))
    return scores


@register_attack("lira")
def lira(
    ctx: AttackContext,
    *,
    variant: Literal["online", "offline"] = "online",
    fixed_variance: bool = False,
    shadows: ShadowCount = 16,
    shadow: Literal["proxy", "runs"] = "proxy",
    steps: Steps | None = None,
    chunk: Chunk | None = None,
) -> AttackResult:
    """LiRA (Carlini et al. 2022) against each message, S shadows per round:
    online compares the IN and OUT Gaussians of the shadows' phi, offline
    the OUT one alone. ``shadow: runs`` uses S decentralized shadow runs
    (``workbench.privacy.shadow_runs``) instead of the centralized proxy."""
    attack = partial(
        lira_online if variant == "online" else lira_offline,
        fixed_variance=fixed_variance,
    )
    name = "lira" if variant == "online" else "lira_offline"
    if shadow == "runs":

        def one(target, stats, inside, outsiders):
            del outsiders
            return attack(target, stats, inside)

        return run_rows(ctx, name + "_runs", "phi", one, shadows)

    valid = np.flatnonzero(ctx.pool.valid)  # padding would enter pooled variances

    def score(msgs, sh: Shadows):
        shadow_in = jnp.asarray(sh.in_mask[:, valid])
        phi = jnp.asarray(sh.phi[:, valid])
        one = lambda t: attack(t, phi, shadow_in)  # noqa: E731
        out = np.full((len(msgs), ctx.pool.valid.size), np.nan, np.float32)
        out[:, valid] = jax.vmap(one)(jnp.asarray(ctx.tables.phi[msgs][:, valid]))
        return out

    scores = per_round_scores(ctx, score, (shadows, steps, chunk))
    return score_rows(ctx, name, scores)


@register_attack("rmia")
def rmia(
    ctx: AttackContext,
    *,
    variant: Literal["online", "offline"] = "online",
    gamma: Annotated[float, annotated_types.Gt(0)] = 1.0,
    a: Annotated[float, annotated_types.Interval(ge=0, le=1)] = 0.3,
    shadows: ShadowCount = 16,
    shadow: Literal["proxy", "runs"] = "proxy",
    steps: Steps | None = None,
    chunk: Chunk | None = None,
) -> AttackResult:
    """RMIA (Zarifzadeh et al. 2024) against each message: the fraction of
    population samples z (the test set) that x dominates in likelihood ratio.
    Offline uses only each example's OUT shadows, with p(x) scaled by ``a``.
    ``shadow: runs``: decentralized shadow runs, z the victim's outsiders."""
    name = "rmia" if variant == "online" else "rmia_offline"

    def one(target, ref, inside, zs):  # scores of x (P,) against population zs
        if variant == "online":
            return rmia_online(target, ref, target[zs], ref[:, zs], gamma)
        out = ~inside  # offline: each example's OUT shadows only
        mean_out = jnp.sum(jnp.where(out, ref, 0), 0) / jnp.sum(out, 0)
        return rmia_offline(
            target, mean_out[None], target[zs], mean_out[None, zs], a, gamma
        )

    if shadow == "runs":
        return run_rows(ctx, name + "_runs", "p_true", one, shadows)
    z = jnp.asarray(nonmembers_of(ctx))

    def score(msgs, sh: Shadows):
        ref, inside = jnp.asarray(sh.p_true), jnp.asarray(sh.in_mask)
        each = lambda t: one(t, ref, inside, z)  # noqa: E731
        return np.asarray(jax.vmap(each)(jnp.asarray(ctx.tables.p_true[msgs])))

    scores = per_round_scores(ctx, score, (shadows, steps, chunk))
    return score_rows(ctx, name, scores)


def run_rows(ctx: AttackContext, name: str, field: str, score, count: int):
    """Rows of ``score(target, shadows, in, outsider idx)`` on each message's
    candidates, its shadows being the decentralized shadow runs' messages."""
    from workbench.privacy import shadow_runs  # it builds on this module's peers

    if ctx.runs is None:
        raise WorkbenchError(f"{name}: shadow runs need the run's simulation")
    runs = shadow_runs.shadow_messages(ctx, count, ctx.receive)

    def split(i):
        target, stats, inside, members, outsiders = shadow_runs.message_view(
            ctx, runs, i, field
        )
        s = np.asarray(
            score(
                jnp.asarray(target),
                jnp.asarray(stats),
                jnp.asarray(inside),
                jnp.asarray(outsiders),
            )
        )
        return s[members], s[outsiders]

    return score_rows(ctx, name, None, split=split)
