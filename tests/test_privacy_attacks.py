"""Loss-based attacks: hand-computed losses, rankings and fractions, and the
memorised / indistinguishable extremes of the loss threshold attack."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.privacy.attacks import (
    balanced_indices,
    biased_threshold,
    example_losses,
    linkability,
    lowest_member_fraction,
    per_class_metrics,
    source_ranks,
    threshold_scores,
)
from workbench.privacy.metrics import attack_metrics


def test_example_losses_by_hand():
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, -1.0, 0.5]])
    y = jnp.array([2, 0, 1])
    # loss = log sum_j exp(l_j) - l_y
    expected = [
        math.log(math.e + math.e**2 + math.e**3) - 3.0,  # 0.4076...
        math.log(3.0),
        math.log(math.e**2 + math.e**-1 + math.e**0.5) + 1.0,
    ]
    np.testing.assert_allclose(jax.jit(example_losses)(logits, y), expected, rtol=1e-6)


@jax.jit
def _scores(logits, y):
    """(m,) threshold scores of logits (m, c) at labels y (m,)."""
    return threshold_scores(example_losses(logits, y))


def _logits(seed, count, classes=10, margin=0.0):
    """(count, classes) standard normal logits, plus ``margin`` at the label,
    and (count,) uniform labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, count)
    logits = rng.normal(size=(count, classes)) + margin * np.eye(classes)[y]
    return jnp.asarray(logits, jnp.float32), jnp.asarray(y)


def test_memorised_members_are_found():
    member_scores = _scores(*_logits(0, 5000, margin=30.0))
    assert float(jnp.min(member_scores)) > -1e-6  # near-zero member losses
    result = attack_metrics(member_scores, _scores(*_logits(1, 5000)))
    assert result["auc"] == 1.0
    assert result["tpr_at_fpr_0.1pct"] == 1.0


def test_identical_losses_are_chance():
    result = attack_metrics(_scores(*_logits(2, 5000)), _scores(*_logits(3, 5000)))
    assert result["auc"] == pytest.approx(0.5, abs=0.02)


def test_threshold_scores_vmap_over_victims():
    logits, y = _logits(4, 4 * 7)
    logits, y = logits.reshape(4, 7, 10), y.reshape(4, 7)  # (victims, m, ...)
    batched = jax.jit(jax.vmap(_scores))(logits, y)  # (victims, m)
    assert batched.shape == (4, 7)
    for v in range(4):
        np.testing.assert_allclose(batched[v], _scores(logits[v], y[v]), rtol=1e-6)


def test_balanced_indices():
    key = jax.random.key(5)
    draw = jax.jit(balanced_indices, static_argnums=(1, 2))
    idx = np.asarray(draw(key, 100, 30))
    assert idx.shape == (30,)
    assert len(set(idx.tolist())) == 30
    assert idx.min() >= 0 and idx.max() < 100
    np.testing.assert_array_equal(idx, draw(key, 100, 30))
    assert not np.array_equal(idx, draw(jax.random.key(6), 100, 30))
    # fewer non-members than members: all of them
    assert sorted(np.asarray(draw(key, 20, 30)).tolist()) == list(range(20))


def test_biased_threshold_by_hand():
    # pooled and sorted: .1 m, .2 n, .3 m, .4 n, .5 m, 1.0 n, 1.5 n, 2.0 m, 3.0 n
    # k=1 -> 1/1; k=5 -> 3 members of 5 = 0.6; k=10 capped to 9 -> 4/9.
    result = biased_threshold(
        [0.1, 0.3, 0.5, 2.0], [0.2, 0.4, 1.0, 1.5, 3.0], (1, 5, 10)
    )
    assert list(result) == [1, 5, 10]
    assert result[1] == 1.0
    assert result[5] == pytest.approx(0.6)
    assert result[10] == pytest.approx(4 / 9)


def test_biased_threshold_ties_rank_nonmembers_first_and_vmap():
    assert biased_threshold([0.2], [0.2, 0.9], (1, 2)) == {1: 0.0, 2: 0.5}
    member = jnp.array([[0.1, 0.3], [0.9, 0.8]])  # (targets, m)
    nonmember = jnp.array([[0.2, 0.4, 0.5], [0.1, 0.2, 0.3]])  # (targets, k)
    fractions = jax.jit(jax.vmap(lambda a, b: lowest_member_fraction(a, b, (1, 3))))(
        member, nonmember
    )
    np.testing.assert_allclose(fractions, [[1.0, 2 / 3], [0.0, 0.0]])


def test_per_class_metrics():
    # class 0: members above non-members (auc 1); class 1: reversed (auc 0);
    # class 2: members only -> skipped; class 3: absent -> skipped.
    member_scores = np.array([5.0, 6.0, 0.0, 1.0, 3.0])
    member_labels = np.array([0, 0, 1, 1, 2])
    nonmember_scores = np.array([1.0, 2.0, 3.0, 7.0, 8.0, 9.0])
    nonmember_labels = np.array([0, 0, 0, 1, 1, 1])
    result = per_class_metrics(
        member_scores, member_labels, nonmember_scores, nonmember_labels, 4
    )
    assert sorted(result) == [0, 1]
    assert result[0]["auc"] == 1.0
    assert result[1]["auc"] == 0.0
    assert (result[0]["members"], result[0]["nonmembers"]) == (2, 3)
    assert result[1] == attack_metrics([0.0, 1.0], [7.0, 8.0, 9.0])
    assert result[0] == attack_metrics([5.0, 6.0], [1.0, 2.0, 3.0])


MEAN_LOSSES = jnp.array(
    [
        [0.1, 0.5, 0.6, 0.7, 0.8, 0.9],  # source 0: rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.9],  # source 4: rank 5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # source 5: rank 6
        [0.5, 0.5, 0.1, 0.9, 0.9, 0.9],  # source 1: tie with 0, one lower: rank 2
    ]
)  # (messages, peers)
SOURCE = jnp.array([0, 4, 5, 1])


def test_linkability_by_hand():
    np.testing.assert_array_equal(source_ranks(MEAN_LOSSES, SOURCE), [1, 5, 6, 2])
    result = jax.jit(linkability)(MEAN_LOSSES, SOURCE)
    assert float(result["top1"]) == 0.25
    assert float(result["top5"]) == 0.75
    assert float(result["mean_rank"]) == 3.5  # (1 + 5 + 6 + 2) / 4


def test_linkability_few_peers_and_vmap():
    three = MEAN_LOSSES[:, :3]  # (messages, 3)
    source = jnp.array([0, 2, 1, 1])  # ranks 1, 3, 2, 2
    result = jax.jit(linkability)(three, source)
    assert float(result["top5"]) == 1.0
    assert float(result["top1"]) == 0.25
    assert float(result["mean_rank"]) == 2.0
    batched = jax.jit(jax.vmap(linkability))(
        jnp.stack([MEAN_LOSSES, -MEAN_LOSSES]), jnp.stack([SOURCE, SOURCE])
    )
    # negated losses reverse the order: ranks 6, 2, 1, 4 (ties: 3 strictly lower)
    np.testing.assert_allclose(batched["top1"], [0.25, 0.25])
    np.testing.assert_allclose(batched["top5"], [0.75, 0.75])
    np.testing.assert_allclose(batched["mean_rank"], [3.5, 3.25])
