"""Attack metrics: hand-computed cases, an independent brute-force reference,
the separated and indistinguishable extremes, and the ROC plot."""

import numpy as np
import pytest
from sklearn import metrics as skm

from workbench.privacy.metrics import METRIC_KEYS, attack_metrics, plot_roc, roc


def test_keys_in_order():
    result = attack_metrics([1.0, 2.0], [0.0])
    assert tuple(result) == METRIC_KEYS
    assert METRIC_KEYS == (
        "auc",
        "balanced_accuracy",
        "advantage",
        "tpr_at_fpr_1pct",
        "tpr_at_fpr_0.1pct",
        "tpr_at_fpr_0.001pct",
        "members",
        "nonmembers",
    )


def test_four_by_four_by_hand():
    # members 0.9 0.8 0.4 0.3, non-members 0.7 0.5 0.2 0.1.
    # AUC: pairs member > non-member: 4 + 4 + 2 + 2 = 12 of 16 -> 0.75.
    # ROC points (fpr, tpr) by decreasing threshold: (0, 0), (0, .5) at 0.8,
    # (.25, .5) at 0.7, (.5, .5) at 0.5, (.5, 1) at 0.3, (1, 1).
    # balanced accuracy = max (1 + tpr - fpr) / 2 = (1 + .5) / 2 = 0.75;
    # advantage = max |tpr - fpr| = 0.5; at FPR <= 1% and 0.1%: (0, .5) -> 0.5.
    result = attack_metrics([0.9, 0.8, 0.4, 0.3], [0.7, 0.5, 0.2, 0.1])
    assert result["auc"] == pytest.approx(0.75)
    assert result["balanced_accuracy"] == pytest.approx(0.75)
    assert result["advantage"] == pytest.approx(0.5)
    assert result["tpr_at_fpr_1pct"] == pytest.approx(0.5)
    assert result["tpr_at_fpr_0.1pct"] == pytest.approx(0.5)
    assert np.isnan(result["tpr_at_fpr_0.001pct"])
    assert (result["members"], result["nonmembers"]) == (4, 4)


def test_fpr_bound_is_inclusive_by_hand():
    # 100 non-members: one at 5, 99 at 0; members 6, 4, 4, 1.
    # ROC: (0, .25) at 6, (.01, .25) at 5, (.01, 1) at 1, (1, 1) at 0.
    # TPR at FPR <= 1% is 1 (an FPR < 1% rule would give .25); at 0.1%: .25.
    # AUC = (100 + 99 + 99 + 99) / 400 = 0.9925;
    # balanced accuracy = 1 - (.01 + 0) / 2 = 0.995; advantage = 1 - .01 = .99.
    nonmembers = np.array([5.0] + [0.0] * 99)
    result = attack_metrics(np.array([6.0, 4.0, 4.0, 1.0]), nonmembers)
    assert result["tpr_at_fpr_1pct"] == 1.0
    assert result["tpr_at_fpr_0.1pct"] == 0.25
    assert result["auc"] == pytest.approx(0.9925)
    assert result["balanced_accuracy"] == pytest.approx(0.995)
    assert result["advantage"] == pytest.approx(0.99)
    assert (result["members"], result["nonmembers"]) == (4, 100)


def _brute_force(members, nonmembers):
    """Every figure straight from its definition, one threshold at a time."""
    thresholds = np.concatenate([[np.inf], np.unique(np.r_[members, nonmembers])])
    tpr = np.array([np.mean(members >= t) for t in thresholds])
    fpr = np.array([np.mean(nonmembers >= t) for t in thresholds])
    wins = members[:, None] > nonmembers[None, :]
    ties = members[:, None] == nonmembers[None, :]
    return {
        "auc": np.mean(wins + 0.5 * ties),
        "balanced_accuracy": np.max(1 - (fpr + 1 - tpr) / 2),
        "advantage": np.max(np.abs(tpr - fpr)),
        "tpr_at_fpr_1pct": np.max(tpr[fpr <= 0.01]),
        "tpr_at_fpr_0.1pct": np.max(tpr[fpr <= 0.001]),
    }


def test_random_case_matches_definitions_and_sklearn():
    rng = np.random.default_rng(0)
    # rounded scores so that ties occur on both sides
    members = np.round(rng.normal(0.7, 1.0, 300), 1)
    nonmembers = np.round(rng.normal(0.0, 1.0, 1200), 1)
    result = attack_metrics(members, nonmembers)
    expected = _brute_force(members, nonmembers)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-12), key
    labels = np.r_[np.ones(300), np.zeros(1200)]
    assert result["auc"] == pytest.approx(
        skm.roc_auc_score(labels, np.r_[members, nonmembers])
    )
    assert 0.6 < result["auc"] < 0.8  # not a degenerate case
    fpr, tpr = roc(members, nonmembers)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, np.r_[members, nonmembers])
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)


def test_perfect_separation():
    rng = np.random.default_rng(1)
    result = attack_metrics(rng.uniform(2, 3, 500), rng.uniform(0, 1, 2000))
    assert result["auc"] == 1.0
    assert result["tpr_at_fpr_0.1pct"] == 1.0
    assert result["tpr_at_fpr_1pct"] == 1.0
    assert result["balanced_accuracy"] == 1.0
    assert result["advantage"] == 1.0


def test_reversed_scores():
    # members all below: auc 0; |tpr - fpr| reaches 1 at the threshold between
    # the sides, but the attack is no better than guessing: balanced accuracy .5
    # (at the point (0, 0)), and TPR 0 at low FPR.
    result = attack_metrics([0.0, 1.0], [2.0, 3.0, 4.0])
    assert result["auc"] == 0.0
    assert result["advantage"] == 1.0
    assert result["balanced_accuracy"] == 0.5
    assert result["tpr_at_fpr_1pct"] == 0.0


def test_identical_distributions_near_chance():
    rng = np.random.default_rng(2)
    result = attack_metrics(rng.normal(size=20_000), rng.normal(size=20_000))
    assert result["auc"] == pytest.approx(0.5, abs=0.02)
    assert result["balanced_accuracy"] < 0.52
    assert result["tpr_at_fpr_1pct"] < 0.03


def test_lowest_fpr_needs_1e5_nonmembers():
    rng = np.random.default_rng(3)
    members = np.r_[np.full(5, 20.0), np.full(5, 5.0)]
    few = attack_metrics(members, rng.uniform(size=99_999))
    assert np.isnan(few["tpr_at_fpr_0.001pct"])
    assert few["tpr_at_fpr_0.1pct"] == 1.0
    # one non-member at 10: the point (1e-5, .5), then (1e-5, 1) at 5; FPR 1e-5
    # is allowed, so TPR at FPR <= 0.001% is 1 (0.5 under a strict bound).
    many = attack_metrics(members, np.r_[10.0, rng.uniform(size=99_999)])
    assert many["nonmembers"] == 100_000
    assert many["tpr_at_fpr_0.001pct"] == 1.0


@pytest.mark.parametrize("side", ["member", "non-member"])
def test_empty_side_is_named(side):
    scores = {"member": [1.0, 2.0], "non-member": [0.5]}
    scores[side] = []
    with pytest.raises(ValueError, match=f"no {side} scores"):
        attack_metrics(scores["member"], scores["non-member"])
    with pytest.raises(ValueError, match=f"no {side} scores"):
        roc(scores["member"], scores["non-member"])


def test_plot_roc_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    curves = {
        "strong": roc(rng.normal(1, 1, 200), rng.normal(0, 1, 200)),
        "perfect": roc(np.ones(10), np.zeros(10)),
    }
    path = tmp_path / "roc.png"
    plot_roc(curves, path, title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
