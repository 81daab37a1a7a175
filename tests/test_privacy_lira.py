"""LiRA / RMIA scores against hand computations, shadows, and the toy sanity check.

The LiRA paper's toy (shrunk to run in seconds on two CPU cores): 32
two-layer MLPs trained vmapped on complementary halves of 500 samples with 20%
flipped labels, evaluated leave-one-model-out, so 32 x 250 = 8000 members and
8000 non-members are pooled and TPR at 0.1% FPR rests on 8 false positives.
"""

from __future__ import annotations

import math
import statistics
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm
from sklearn.datasets import make_classification

from workbench.models import build_model, init_params
from workbench.privacy.lira import (
    leave_one_out,
    lira_offline,
    lira_online,
    lira_statistic,
    rmia_offline,
    rmia_online,
)
from workbench.privacy.metrics import attack_metrics
from workbench.privacy.shadows import (
    complementary_masks,
    shadow_outputs,
    train_shadows,
)

# philox, as the engine uses: compiles much faster than threefry on CPU
KEY = jax.random.key(0, impl="philox2x32")


def _log_normal(x, mu, s):
    return -0.5 * math.log(2 * math.pi * s * s) - (x - mu) ** 2 / (2 * s * s)


# ------------------------------------------------------------------ statistic


def test_lira_statistic_by_hand():
    logits = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    y = jnp.array([0, 2, 1])
    expected = []
    for row, label in zip(np.asarray(logits), np.asarray(y), strict=True):
        p = np.exp(row) / np.exp(row).sum()
        expected.append(math.log(p[label]) - math.log(p.sum() - p[label]))
    # 1 - log(e^2 + e^3) for the first row, written out
    assert expected[0] == pytest.approx(1 - math.log(math.exp(2) + math.exp(3)))
    np.testing.assert_allclose(lira_statistic(logits, y), expected, rtol=1e-6)


def test_lira_statistic_finite_for_extreme_logits():
    logits = jnp.array([[100.0, 0.0, 0.0], [100.0, 0.0, 0.0], [1e4, -1e4, 0.0]])
    phi = lira_statistic(logits, jnp.array([0, 1, 0]))
    assert np.all(np.isfinite(phi))
    np.testing.assert_allclose(phi, [100 - math.log(2), -100.0, 1e4], rtol=1e-6)


# ---------------------------------------------------------------------- LiRA

# Example 0: IN shadows [1, 2, 3], OUT shadows [-1, 0, 2] (median 0, mean 1/3).
# Example 1: IN [0, 1, 5, 10] (median 3, an even count), OUT [2, 3].
SHADOW_PHI = jnp.array(
    [[1.0, 0.0], [2.0, 1.0], [3.0, 5.0], [-1.0, 10.0], [0.0, 2.0], [2.0, 3.0]]
)
SHADOW_IN = jnp.array([[1, 1], [1, 1], [1, 1], [0, 1], [0, 0], [0, 0]], bool)
TARGET = jnp.array([2.5, 4.0])
IN_VALUES = ([1.0, 2.0, 3.0], [0.0, 1.0, 5.0, 10.0])
OUT_VALUES = ([-1.0, 0.0, 2.0], [2.0, 3.0])


def test_lira_online_by_hand():
    expected = []
    for x, ins, outs in zip(np.asarray(TARGET), IN_VALUES, OUT_VALUES, strict=True):
        s_in, s_out = statistics.pstdev(ins), statistics.pstdev(outs)
        mu_in, mu_out = statistics.median(ins), statistics.median(outs)
        expected.append(_log_normal(x, mu_in, s_in) - _log_normal(x, mu_out, s_out))
    # example 0 written out: mu_in 2, s_in^2 2/3, mu_out 0, s_out^2 14/9
    first = _log_normal(2.5, 2.0, math.sqrt(2 / 3)) - _log_normal(
        2.5, 0.0, math.sqrt(14 / 9)
    )
    assert expected[0] == pytest.approx(first)
    got = lira_online(TARGET, SHADOW_PHI, SHADOW_IN)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_lira_online_fixed_variance_by_hand():
    s_in = statistics.pstdev([v for vs in IN_VALUES for v in vs])  # 7 values pooled
    s_out = statistics.pstdev([v for vs in OUT_VALUES for v in vs])  # 5 values
    expected = [
        _log_normal(x, statistics.median(ins), s_in)
        - _log_normal(x, statistics.median(outs), s_out)
        for x, ins, outs in zip(np.asarray(TARGET), IN_VALUES, OUT_VALUES, strict=True)
    ]
    got = lira_online(TARGET, SHADOW_PHI, SHADOW_IN, fixed_variance=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_lira_online_equal_counts_keeps_the_first_shadows():
    # IN counts (3, 4) -> 3 each: example 1 keeps [0, 1, 5] (median 1);
    # OUT counts (3, 2) -> 2 each: example 0 keeps [-1, 0] (median -0.5)
    ins, outs = ([1.0, 2.0, 3.0], [0.0, 1.0, 5.0]), ([-1.0, 0.0], [2.0, 3.0])
    expected = [
        _log_normal(x, statistics.median(i), statistics.pstdev(i))
        - _log_normal(x, statistics.median(o), statistics.pstdev(o))
        for x, i, o in zip(np.asarray(TARGET), ins, outs, strict=True)
    ]
    got = lira_online(TARGET, SHADOW_PHI, SHADOW_IN, equal_counts=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("fixed", [False, True])
def test_lira_offline_is_the_one_sided_out_cdf(fixed):
    pooled = statistics.pstdev([v for vs in OUT_VALUES for v in vs])
    cdf = [
        norm.cdf(
            x, statistics.median(outs), pooled if fixed else statistics.pstdev(outs)
        )
        for x, outs in zip(np.asarray(TARGET), OUT_VALUES, strict=True)
    ]
    score = lira_offline(TARGET, SHADOW_PHI, SHADOW_IN, fixed_variance=fixed)
    np.testing.assert_allclose(1 - np.exp(-np.asarray(score)), cdf, rtol=1e-5)


def test_lira_offline_keeps_order_where_the_cdf_is_one():
    # 20 and 40 standard deviations above mu_out: the float32 CDF is 1.0 for both
    far = jnp.array([2.5 + 20 * math.sqrt(14 / 9), 2.5 + 40 * math.sqrt(14 / 9)])
    score = np.asarray(
        lira_offline(far, SHADOW_PHI[:, :1].repeat(2, 1), SHADOW_IN[:, :1].repeat(2, 1))
    )
    assert np.all(np.isfinite(score)) and score[1] > score[0] > 100


def test_lira_without_out_shadows_is_nan():
    score = lira_online(jnp.zeros(1), jnp.arange(4.0)[:, None], jnp.ones((4, 1), bool))
    assert np.isnan(score[0])


# ---------------------------------------------------------------------- RMIA


def _pairwise(ratio_x, ratio_z, gamma):
    return np.mean(ratio_x[:, None] / ratio_z[None, :] > gamma, axis=1)


def test_rmia_online_by_hand():
    p_x, ref_x = np.array([0.9, 0.5]), np.array([[0.6, 0.5], [0.4, 0.5]])
    p_z = np.array([0.2, 0.6, 0.8, 0.33])
    ref_z = np.array([[0.4, 0.4, 0.4, 0.2], [0.2, 0.4, 0.4, 0.4]])
    # p(x) = [0.5, 0.5], ratio_x = [1.8, 1.0]; p(z) = [0.3, 0.4, 0.4, 0.3],
    # ratio_z = [2/3, 1.5, 2.0, 1.1]
    for gamma, expected in ((1.0, [3 / 4, 1 / 4]), (2.0, [1 / 4, 0.0])):
        got = rmia_online(p_x, ref_x, p_z, ref_z, gamma)
        np.testing.assert_allclose(got, expected)
        brute = _pairwise(p_x / ref_x.mean(0), p_z / ref_z.mean(0), gamma)
        np.testing.assert_allclose(got, brute)


def test_rmia_counts_only_strictly_larger_ratios():
    # ratio_x = 1 and ratio_z = [1, 0.5], exactly (log 0.5 - log 0.5 = 0): the
    # tied z does not count at gamma = 1
    got = rmia_online(
        jnp.array([0.5]),
        jnp.array([[0.5]]),
        jnp.array([0.25, 0.1]),
        jnp.array([[0.25, 0.2]]),
    )
    np.testing.assert_array_equal(got, [0.5])


def test_rmia_offline_by_hand():
    p_x, ref_x = np.array([0.9, 0.45]), np.array([[0.5, 0.3]])
    p_z, ref_z = np.array([0.2, 0.95, 0.8, 0.33]), np.array([[0.3, 0.5, 0.7, 0.1]])
    # a = 0.5: p = 0.75 mean_OUT + 0.25; p(x) = [0.625, 0.475], ratio_x =
    # [1.44, 0.947]; p(z) = [0.475, 0.625, 0.775, 0.325], ratio_z =
    # [0.421, 1.52, 1.032, 1.015]
    got = rmia_offline(p_x, ref_x, p_z, ref_z, a=0.5)
    np.testing.assert_allclose(got, [3 / 4, 1 / 4])
    brute = _pairwise(p_x / (0.75 * ref_x[0] + 0.25), p_z / (0.75 * ref_z[0] + 0.25), 1)
    np.testing.assert_allclose(got, brute)
    # a = 1 is the online score with the OUT models as the references
    np.testing.assert_allclose(
        rmia_offline(p_x, ref_x, p_z, ref_z, a=1.0, gamma=1.3),
        rmia_online(p_x, ref_x, p_z, ref_z, gamma=1.3),
    )


# ------------------------------------------------------- masks, leave-one-out


def test_complementary_masks():
    masks = np.asarray(complementary_masks(KEY, 6, 11))
    assert masks.shape == (6, 11) and masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(0), 3)
    np.testing.assert_array_equal(masks[1::2], ~masks[0::2])
    assert set(masks.sum(1)) <= {5, 6}
    assert len({row.tobytes() for row in masks[0::2]}) == 3  # pairs differ
    with pytest.raises(ValueError, match="even"):
        complementary_masks(KEY, 5, 11)


@pytest.mark.parametrize("paired", [False, True], ids=["plain", "paired"])
@pytest.mark.parametrize(
    "attack",
    [lira_online, partial(lira_online, fixed_variance=True), lira_offline],
    ids=["online", "fixed_variance", "offline"],
)
def test_leave_one_out_matches_explicit_loop(attack, paired):
    shadows, m = 6, 7
    stat = jax.random.normal(KEY, (shadows, m))
    masks = complementary_masks(jax.random.fold_in(KEY, 1), shadows, m)
    scores, labels = leave_one_out(stat, masks, attack, paired=paired)
    assert scores.shape == (shadows, m)
    np.testing.assert_array_equal(labels, masks)
    for t in range(shadows):
        left_out = {t, t ^ 1} if paired else {t}  # t ^ 1: t's complementary pair
        rest = np.array([i for i in range(shadows) if i not in left_out])
        expected = attack(stat[t], stat[rest], masks[rest])
        np.testing.assert_allclose(scores[t], expected, rtol=1e-5, atol=1e-6)
    if paired:  # every example: S/2 - 1 = 2 IN and 2 OUT shadows for every target
        with pytest.raises(ValueError, match="even"):
            leave_one_out(stat[:5], masks[:5], attack, paired=True)


# ------------------------------------------------------------------- shadows


def _mlp(features: int, classes: int, hidden: int):
    model = build_model({"name": "mlp", "hidden": [hidden]}, classes, (features,))

    def apply(params, x):
        return model.apply({"params": params}, x)

    def init(key):
        return init_params(model, (features,), key)

    return apply, init


def test_train_shadows_weights_chunks_and_outputs():
    apply, init = _mlp(5, 3, 8)
    x = jax.random.normal(KEY, (24, 5))
    y = jnp.arange(24) % 3
    # shadow 0 sees nothing (keeps its initialization), 1 everything, 2-3 halves
    masks = jnp.concatenate(
        [
            jnp.zeros((1, 24), bool),
            jnp.ones((1, 24), bool),
            complementary_masks(KEY, 2, 24),
        ]
    )
    train = partial(
        train_shadows,
        apply,
        init,
        KEY,
        x,
        y,
        masks,
        steps=20,
        batch_size=8,
        optimizer=optax.adam(0.05),
    )
    params = train()
    chunked = train(chunk=2)  # lax.map over 2 chunks of 2 shadows
    initial = train(steps=0)
    for a, b, c in zip(*map(jax.tree.leaves, (params, chunked, initial)), strict=True):
        assert a.shape[0] == 4
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a[0], c[0])  # zero weights: no update
        assert not np.allclose(a[1], c[1])
    out = shadow_outputs(apply, params, x, y, batch=5)  # 24 = 4 x 5 + 4
    logits = jax.vmap(apply, (0, None))(params, x)  # (4, 24, 3)
    phi = jax.vmap(lira_statistic, (0, None))(logits, y)
    p = jnp.take_along_axis(jax.nn.softmax(logits), y[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(out.phi, phi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.p_true, p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.log_p, np.log(p), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- the toy check

TOY_SAMPLES, TOY_FEATURES, TOY_CLASSES, TOY_SHADOWS = 500, 40, 4, 32


def _toy_data():
    x, y = make_classification(
        n_samples=TOY_SAMPLES,
        n_features=TOY_FEATURES,
        n_informative=TOY_FEATURES // 2,
        n_classes=TOY_CLASSES,
        n_clusters_per_class=1,
        class_sep=0.5,
        flip_y=0.0,
        random_state=0,
    )
    rng = np.random.default_rng(0)
    flipped = rng.random(TOY_SAMPLES) < 0.2  # 20% of labels moved to another class
    shift = rng.integers(1, TOY_CLASSES, TOY_SAMPLES)
    y = np.where(flipped, (y + shift) % TOY_CLASSES, y)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def _toy_attacks(steps: int) -> dict[str, dict[str, float]]:
    """Leave-one-model-out figures of every attack after ``steps`` of training.

    LiRA uses paired leave-one-out (each target's 30 shadows exclude its
    complementary partner); ``online_unpaired`` is online LiRA on all 31 others.
    """
    x, y = _toy_data()
    apply, init = _mlp(TOY_FEATURES, TOY_CLASSES, 128)
    masks = complementary_masks(jax.random.fold_in(KEY, 1), TOY_SHADOWS, TOY_SAMPLES)
    params = train_shadows(
        apply,
        init,
        jax.random.fold_in(KEY, 2),
        x,
        y,
        masks,
        steps=steps,
        batch_size=64,
        optimizer=optax.adam(1e-2),
    )
    out = shadow_outputs(apply, params, x, y, batch=128)
    attacks = {
        "online": lira_online,
        "fixed_variance": partial(lira_online, fixed_variance=True),
        "offline": lira_offline,
    }
    scores = {
        name: leave_one_out(out.phi, masks, a, paired=True)[0]
        for name, a in attacks.items()
    }
    scores["online_unpaired"] = leave_one_out(out.phi, masks, lira_online)[0]
    scores["threshold"] = out.log_p  # -cross-entropy of each target model
    members = np.asarray(masks)
    figures = {
        name: attack_metrics(np.asarray(s)[members], np.asarray(s)[~members])
        for name, s in scores.items()
    }
    for name, f in figures.items():
        print(
            f"toy steps={steps} {name:15s} AUC {f['auc']:.3f} "
            f"TPR@1% {f['tpr_at_fpr_1pct']:.3f} TPR@0.1% {f['tpr_at_fpr_0.1pct']:.3f} "
            f"({f['members']:.0f} members / {f['nonmembers']:.0f} non-members)"
        )
    return figures


def test_toy_lira_beats_the_loss_threshold_at_low_fpr():
    f = _toy_attacks(steps=1000)
    online, offline, threshold = f["online"], f["offline"], f["threshold"]
    assert online["nonmembers"] == TOY_SHADOWS * TOY_SAMPLES / 2  # >= 1000 for 0.1%
    # similar AUC ...
    assert online["auc"] > threshold["auc"] > 0.75
    assert online["auc"] - threshold["auc"] < 0.1
    # ... very different TPR at low FPR (at 0.1% FPR, over 8000 pooled non-members)
    for key in ("tpr_at_fpr_0.1pct", "tpr_at_fpr_1pct"):
        assert online[key] >= max(2 * threshold[key], 0.1), key
        assert f["fixed_variance"][key] >= max(2 * threshold[key], 0.1), key
        assert offline[key] >= max(2 * threshold[key], 0.05), key
    assert online["tpr_at_fpr_1pct"] > offline["tpr_at_fpr_1pct"]


def test_toy_untrained_models_leak_nothing():
    f = _toy_attacks(steps=0)
    for name, figures in f.items():
        assert abs(figures["auc"] - 0.5) < 0.05, name
    # no shadows in the fit, no leave-one-out bias (0.496-0.503 over 7 seeds);
    # online LiRA reads 0.49 paired, 0.48 plain (see leave_one_out)
    for name in ("offline", "threshold"):
        assert abs(f[name]["auc"] - 0.5) < 0.01, name
