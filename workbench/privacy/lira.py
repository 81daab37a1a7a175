"""LiRA and RMIA membership scores from shadow (reference) model outputs.

Every score is "higher = more likely a member" and is computed per example from
arrays, so the attacks vmap over examples and over targets; nothing loops over
examples in Python.

- LiRA (arXiv 2112.03570). The statistic is the logit-scaled confidence
  phi = log p_y - log sum_{j != y} p_j. Online:
  log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2) with mu the median and
  s the standard deviation over the shadows that had the example IN (OUT);
  offline (the paper's one-sided test): Pr[Z < phi], Z ~ N(mu_out, s_out^2).
- RMIA (arXiv 2312.03262): the fraction of population samples z with
  (p(x|theta) / p(x)) / (p(z|theta) / p(z)) > gamma, p(.|theta) the target's
  probability of the true label and p(.) its mean over reference models.
- :func:`leave_one_out`: each shadow in turn is the target and the others its
  shadows, so the S models give S x m labelled scores.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

# Added to every variance so that shadows that agree exactly (s = 0) still give
# a finite Gaussian: s = sqrt(var + VAR_EPS). 1e-8 leaves any variance above
# ~1e-6 unchanged in float32.
VAR_EPS = 1e-8
# Probabilities are floored here before RMIA takes logs (0 / 0 would be NaN).
_P_FLOOR = 1e-30

# attack(target_stat (m,), shadow_stat (S, m), shadow_in (S, m) bool) -> (m,)
Attack = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------ statistic


def lira_statistic(logits: jax.Array, y: jax.Array) -> jax.Array:
    """phi = log p_y - log sum_{j != y} p_j for logits (m, c), labels (m,) -> (m,).

    Computed as z_y - logsumexp_{j != y} z_j (the softmax normalizer cancels),
    so it stays finite when p_y -> 1 (logits [100, 0, 0] give 100 - log 2).
    With augmentations (a, m, c), the caller averages the statistic:
    ``jax.vmap(lira_statistic, (0, None))(logits, y).mean(0)``.
    """
    true = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)  # (m, c)
    z_y = jnp.sum(jnp.where(true, logits, 0.0), axis=-1)
    others = jax.nn.logsumexp(jnp.where(true, -jnp.inf, logits), axis=-1)
    return z_y - others


# ------------------------------------------------------------ masked moments


def _masked_median(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Median of values[mask] for values, mask (S,) -> (); NaN if mask is empty."""
    count = jnp.sum(mask)
    ordered = jnp.sort(jnp.where(mask, values, jnp.inf))  # selected ones first
    low = ordered[jnp.maximum(count - 1, 0) // 2]
    high = ordered[count // 2]
    return jnp.where(count > 0, (low + high) / 2, jnp.nan)


def _masked_var(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Population variance (ddof 0) of values[mask] along ``axis``."""
    count = jnp.sum(mask, axis=axis)
    mean = jnp.sum(jnp.where(mask, values, 0.0), axis=axis) / count
    dev = values - (mean if axis is None else jnp.expand_dims(mean, axis))
    return jnp.sum(jnp.where(mask, dev**2, 0.0), axis=axis) / count


def _first_equal(mask: jax.Array) -> jax.Array:
    """mask (S, m) keeping, per example, only its first min_j count_j selected."""
    keep = jnp.min(jnp.sum(mask, axis=0))
    return mask & (jnp.cumsum(mask, axis=0) <= keep)


def _gaussian(
    shadow_phi: jax.Array, mask: jax.Array, fixed_variance: bool, equal_counts: bool
) -> tuple[jax.Array, jax.Array]:
    """(mu (m,), s (m,) or ()) of the shadows' phi (S, m) where ``mask`` (S, m).

    ``fixed_variance``: one s for all examples, the standard deviation of every
    selected value pooled (np.std(dat) in the LiRA reference code).
    ``equal_counts``: every example uses as many values, its first ones.
    """
    mask = _first_equal(mask) if equal_counts else mask
    mu = jax.vmap(_masked_median, in_axes=1)(shadow_phi, mask)
    var = _masked_var(shadow_phi, mask, axis=None if fixed_variance else 0)
    return mu, jnp.sqrt(var + VAR_EPS)


# ---------------------------------------------------------------------- LiRA


def lira_online(
    target_phi: jax.Array,
    shadow_phi: jax.Array,
    shadow_in: jax.Array,
    fixed_variance: bool = False,
    equal_counts: bool = False,
) -> jax.Array:
    """LiRA online: log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2).

    Args:
      target_phi: (m,) the target model's statistic.
      shadow_phi: (S, m) the shadows' statistic.
      shadow_in: (S, m) bool, whether example j was in shadow i's training set.
      fixed_variance: one global s_in and one s_out (pooled over examples)
        instead of one per example. The reference code uses its s_in for both;
        here s_out comes from the OUT values.
      equal_counts: use the same number of IN values for every example (the
        first min_j #IN_j shadows in order), and likewise OUT, as the reference
        code does. In leave-one-model-out a member has one IN shadow fewer than
        a non-member, which biases members' scores down; this removes that
        part of the bias (for complementary masks, prefer
        ``leave_one_out(..., paired=True)``, which removes all of it).

    Returns:
      (m,) scores; NaN for an example with no IN or no OUT shadow.
    """
    mu_in, s_in = _gaussian(shadow_phi, shadow_in, fixed_variance, equal_counts)
    mu_out, s_out = _gaussian(shadow_phi, ~shadow_in, fixed_variance, equal_counts)
    return norm.logpdf(target_phi, mu_in, s_in) - norm.logpdf(target_phi, mu_out, s_out)


def lira_offline(
    target_phi: jax.Array,
    shadow_phi: jax.Array,
    shadow_in: jax.Array,
    fixed_variance: bool = False,
    equal_counts: bool = False,
) -> jax.Array:
    """LiRA offline, one-sided: orders like Pr[Z < phi], Z ~ N(mu_out, s_out^2).

    Returns ``-log Pr[Z >= phi]`` (so Pr[Z < phi] = 1 - exp(-score)): the same
    order as the probability, but it keeps separating examples far above
    mu_out where the float32 CDF has already rounded to 1. Only OUT shadows are
    used; arguments as in :func:`lira_online`.
    """
    mu_out, s_out = _gaussian(shadow_phi, ~shadow_in, fixed_variance, equal_counts)
    return -norm.logsf(target_phi, mu_out, s_out)


# ---------------------------------------------------------------------- RMIA


def _log(p: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(p, _P_FLOOR))


def _rmia(log_ratio_x: jax.Array, log_ratio_z: jax.Array, gamma: float) -> jax.Array:
    """Fraction of z with ratio_x / ratio_z > gamma, from log ratios (m,), (k,)."""
    ordered = jnp.sort(log_ratio_z)
    below = jnp.searchsorted(ordered, log_ratio_x - jnp.log(gamma), side="left")
    return below / log_ratio_z.shape[0]


def rmia_online(
    target_p_x: jax.Array,
    ref_p_x: jax.Array,
    target_p_z: jax.Array,
    ref_p_z: jax.Array,
    gamma: float = 1.0,
) -> jax.Array:
    """RMIA online: Pr_z[(p(x|theta)/p(x)) / (p(z|theta)/p(z)) > gamma].

    Args:
      target_p_x: (m,) the target's probability of the true label of each x.
      ref_p_x: (R, m) the same for the reference models (IN and OUT ones).
      target_p_z: (k,) the target on the population samples z.
      ref_p_z: (R, k) the reference models on z.
      gamma: the likelihood-ratio threshold.

    Returns:
      (m,) scores in [0, 1]; p(.) is the mean over the reference models.
    """
    ratio_x = _log(target_p_x) - _log(jnp.mean(ref_p_x, axis=0))
    ratio_z = _log(target_p_z) - _log(jnp.mean(ref_p_z, axis=0))
    return _rmia(ratio_x, ratio_z, gamma)


def _offline_marginal(ref_out_p: jax.Array, a: float) -> jax.Array:
    """p(x) ~ ((1 + a) / 2) mean_OUT(x) + (1 - a) / 2 from OUT models (R, m)."""
    return (1 + a) / 2 * jnp.mean(ref_out_p, axis=0) + (1 - a) / 2


def rmia_offline(
    target_p_x: jax.Array,
    ref_out_p_x: jax.Array,
    target_p_z: jax.Array,
    ref_out_p_z: jax.Array,
    a: float,
    gamma: float = 1.0,
) -> jax.Array:
    """RMIA offline: :func:`rmia_online` with p(.) from OUT references only.

    p(x) = ((1 + a) / 2) mean_OUT(x) + (1 - a) / 2, the same for each z; ``a``
    is tuned on a paired reference model. Shapes as in :func:`rmia_online`.
    """
    ratio_x = _log(target_p_x) - _log(_offline_marginal(ref_out_p_x, a))
    ratio_z = _log(target_p_z) - _log(_offline_marginal(ref_out_p_z, a))
    return _rmia(ratio_x, ratio_z, gamma)


# ------------------------------------------------------- leave one model out


def _others(count: int, paired: bool) -> jax.Array:
    """(S, S - 1) or, paired, (S, S - 2): row t lists the shadows of target t.

    Row t is (t + 1, ..., t + S - 1) mod S, every model but t; paired, it starts
    after t's pair {2 (t // 2), 2 (t // 2) + 1} and skips both.
    """
    target = jnp.arange(count)[:, None]
    start = 2 * (target // 2) + 2 if paired else target + 1
    return (start + jnp.arange(count - 1 - paired)[None, :]) % count


def leave_one_out(
    stat: jax.Array, in_mask: jax.Array, attack: Attack, paired: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Each of S models in turn is the target; the other models are its shadows.

    With complementary masks, plain leave-one-out ties the shadows to the
    target's membership: its partner is always on the opposite side, and a
    member has one IN shadow fewer than OUT ones. Untrained models then score
    members low: LiRA-online AUC 0.478-0.493 over 7 seeds of the toy in
    tests/test_privacy_lira.py. ``paired`` leaves the partner out too, so every
    example has S/2 - 1 IN and S/2 - 1 OUT shadows: 0.486-0.499 there (the rest
    comes from pooling targets whose fits share models), 0.500 +- 0.006 on
    synthetic i.i.d. models with a per-model offset (plain: 0.482 +- 0.025).

    Args:
      stat: (S, m) each model's statistic (phi) on every example.
      in_mask: (S, m) bool, membership of example j in model i.
      attack: ``attack(target (m,), shadows (K, m), shadows_in (K, m)) -> (m,)``,
        e.g. :func:`lira_online` or a ``functools.partial`` of it.
      paired: models 2i and 2i + 1 form a complementary pair
        (:func:`workbench.privacy.shadows.complementary_masks`); target t's
        shadows are then the S - 2 models outside its pair (else K = S - 1).

    Returns:
      (scores (S, m), in_mask (S, m)): row t scores model t's membership; the
      labels are ``in_mask``, ready for ``attack_metrics``.

    Raises:
      ValueError: ``paired`` with an odd S.
    """
    stat, in_mask = jnp.asarray(stat), jnp.asarray(in_mask, bool)
    count = stat.shape[0]
    if paired and count % 2:
        raise ValueError(f"paired leave-one-out needs an even model count, got {count}")

    def one(target, rows):
        return attack(stat[target], stat[rows], in_mask[rows])

    return jax.vmap(one)(jnp.arange(count), _others(count, paired)), in_mask
