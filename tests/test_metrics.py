"""Every reported metric against a value computed by hand on a tiny case.

Two peers with a linear model and distinct train, validation and test sets, so
a metric computed from the wrong split, the wrong model (peer 0 instead of the
average), or with the wrong normalisation (a factor n) gives another number.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.data.federated import FederatedData, PeerArrays
from workbench.engine import _eval_data
from workbench.evaluation import (
    METRICS_FIELDS,
    PEER_FIELDS,
    columns,
    make_evaluate,
    rows,
)
from workbench.rounds import EvalData, PeerData

W = np.array(
    [
        [[1.0, -1.0, 0.0], [0.0, 2.0, -1.0]],  # peer 0
        [[-1.0, 0.5, 1.0], [1.0, 0.0, 0.0]],  # peer 1
    ],
    np.float32,
)
B = np.array([[0.1, 0.0, -0.1], [0.0, 0.2, 0.0]], np.float32)

TRAIN_X = np.array(
    [[[1, 0], [0, 1], [1, 1], [9, 9]], [[2, 1], [-1, 0], [9, 9], [9, 9]]], np.float32
)
TRAIN_Y = np.array([[0, 1, 2, 0], [2, 0, 0, 0]], np.int32)
TRAIN_SIZE = np.array([3, 2], np.int32)
VAL_X = np.array([[[0, -1], [3, 0]], [[1, -1], [0, 0]]], np.float32)
VAL_Y = np.array([[1, 0], [2, 1]], np.int32)
VAL_SIZE = np.array([2, 1], np.int32)
TEST_X = np.array([[1, 2], [-2, 1], [0.5, -1], [7, 7]], np.float32)
TEST_Y = np.array([1, 0, 2, 0], np.int32)
TEST_MASK = np.array([1, 1, 1, 0], np.float32)


def apply_fn(params, x):
    return x @ params["w"] + params["b"][None]


def ce_and_hits(w, b, x, y):
    logits = x.astype(np.float64) @ w + b
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -logp[np.arange(len(y)), y], (logits.argmax(-1) == y).astype(float)


def by_hand(w, b, x, y):
    ce, hit = ce_and_hits(w, b, x, y)
    return hit.mean(), ce.mean()


@pytest.fixture(scope="module")
def evaluated():
    params = {"w": jnp.asarray(W), "b": jnp.asarray(B)}
    data = EvalData(
        PeerData(TRAIN_X, TRAIN_Y, TRAIN_SIZE),
        PeerData(VAL_X, VAL_Y, VAL_SIZE),
        TEST_X,
        TEST_Y,
        TEST_MASK,
    )
    evaluate = make_evaluate(
        apply_fn, jax.vmap, 2, ("param_norm", "generalization_gap")
    )
    out = evaluate(params, jax.tree.map(jnp.asarray, data))
    return {k: np.asarray(v) for k, v in out.values.items()}, bool(out.finite)


def expected_split(i, split):
    x, y, size = {
        "train": (TRAIN_X, TRAIN_Y, TRAIN_SIZE),
        "val": (VAL_X, VAL_Y, VAL_SIZE),
    }[split]
    return by_hand(W[i], B[i], x[i, : size[i]], y[i, : size[i]])


@pytest.mark.parametrize("split", ["train", "val"])
def test_own_split_accuracy_and_loss(evaluated, split):
    values, _ = evaluated
    for i in range(2):
        acc, loss = expected_split(i, split)
        assert values[f"{split}_acc"][i] == pytest.approx(acc, abs=1e-6)
        assert values[f"{split}_loss"][i] == pytest.approx(loss, rel=1e-5)


def test_test_split_uses_the_global_test_set_without_padding(evaluated):
    values, finite = evaluated
    for i in range(2):
        acc, loss = by_hand(W[i], B[i], TEST_X[:3], TEST_Y[:3])
        assert values["test_acc"][i] == pytest.approx(acc, abs=1e-6)
        assert values["test_loss"][i] == pytest.approx(loss, rel=1e-5)
    assert finite


def test_averaged_model_is_the_mean_of_all_peers(evaluated):
    values, _ = evaluated
    acc, loss = by_hand(W.mean(0), B.mean(0), TEST_X[:3], TEST_Y[:3])
    assert values["averaged_model_acc"] == pytest.approx(acc, abs=1e-6)
    assert values["averaged_model_loss"] == pytest.approx(loss, rel=1e-5)
    peer0 = by_hand(W[0], B[0], TEST_X[:3], TEST_Y[:3])
    assert values["averaged_model_loss"] != pytest.approx(peer0[1], rel=1e-3)


def test_consensus_distance_per_peer_and_mean(evaluated):
    values, _ = evaluated
    flat = np.concatenate([W.reshape(2, -1), B], axis=1).astype(np.float64)
    per_peer = ((flat - flat.mean(0)) ** 2).sum(1)
    np.testing.assert_allclose(values["consensus_distance"], per_peer, rtol=1e-6)
    np.testing.assert_allclose(values["param_norm"], np.linalg.norm(flat, axis=1))


def test_generalization_gap_is_test_minus_train_loss(evaluated):
    values, _ = evaluated
    np.testing.assert_allclose(
        values["generalization_gap"],
        values["test_loss"] - values["train_loss"],
        rtol=1e-5,
    )


def test_rows_summarise_exactly(evaluated):
    values, _ = evaluated
    row, peers = rows(values, 4, 1.5, np.array([80.0, 160.0]), 16.0, 2)
    test_acc = values["test_acc"].astype(np.float64)
    assert row["test_acc_mean"] == pytest.approx(test_acc.mean())
    assert row["test_acc_min"] == pytest.approx(test_acc.min())
    assert row["test_acc_max"] == pytest.approx(test_acc.max())
    assert row["test_acc_std"] == pytest.approx(test_acc.std())
    test_loss = values["test_loss"].astype(np.float64)
    assert row["test_loss_mean"] == pytest.approx(test_loss.mean())
    assert row["test_loss_min"] == pytest.approx(test_loss.min())
    assert row["test_loss_max"] == pytest.approx(test_loss.max())
    assert row["test_loss_std"] == pytest.approx(test_loss.std())
    for split in ("train", "val"):
        for kind in ("acc", "loss"):
            col = f"{split}_{kind}"
            assert row[f"{col}_mean"] == pytest.approx(values[col].mean()), col
    assert row["averaged_model_loss"] == pytest.approx(values["averaged_model_loss"])
    assert (row["round"], row["virtual_time"], row["wall_time"]) == (4, 4.0, 1.5)
    assert row["active_peers"] == 2
    assert row["consensus_distance"] == pytest.approx(
        values["consensus_distance"].mean()
    )
    assert row["averaged_model_acc"] == pytest.approx(values["averaged_model_acc"])
    # bits -> bytes: (10 + 20) by the peers and 2 by the server
    assert row["bytes_sent_total"] == 32.0
    assert row["bytes_sent_per_peer"] == 15.0
    assert row["bytes_per_round_per_peer"] == 15.0 / 4
    assert row["param_norm_mean"] == pytest.approx(values["param_norm"].mean())
    assert [p["bytes_sent"] for p in peers] == [10.0, 20.0]
    assert [(p["round"], p["peer"]) for p in peers] == [(4, 0), (4, 1)]
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss"):
        for i in range(2):
            assert peers[i][col] == pytest.approx(values[col][i]), col
    assert peers[1]["consensus_distance"] == pytest.approx(
        values["consensus_distance"][1]
    )
    assert peers[1]["val_loss"] == pytest.approx(values["val_loss"][1])
    assert peers[0]["generalization_gap"] == pytest.approx(
        values["generalization_gap"][0]
    )
    metric_cols, peer_cols = columns(values)
    assert set(row) == set(metric_cols)
    assert set(peers[0]) == set(peer_cols)
    assert metric_cols[: len(METRICS_FIELDS)] == METRICS_FIELDS
    assert peer_cols[: len(PEER_FIELDS)] == PEER_FIELDS


def test_eval_data_takes_each_split_from_its_source():
    """Markers: train inputs are 1, validation 2, test 3."""

    def peer_arrays(value, m, sizes):
        return PeerArrays(
            np.full((2, m, 2), value, np.float32),
            np.zeros((2, m), np.int32),
            np.asarray(sizes, np.int32),
        )

    fed = FederatedData(
        peer_arrays(1.0, 5, [5, 3]),
        peer_arrays(2.0, 2, [2, 1]),
        np.full((3, 2), 3.0, np.float32),
        np.zeros(3, np.int32),
        3,
        (2,),
    )
    data = _eval_data(fed)
    train, val = data.train, data.val
    assert np.all(np.asarray(train.x)[:, :5] == 1) and list(train.size) == [5, 3]
    assert np.all(np.asarray(val.x)[:, :2] == 2) and list(val.size) == [2, 1]
    assert np.all(np.asarray(data.test_x)[:3] == 3)
    assert np.asarray(data.test_mask).sum() == 3


def test_test_samples_evaluates_a_fixed_seeded_subset():
    m = 300
    fed = FederatedData(
        PeerArrays(
            np.zeros((2, 4, 1), np.float32),
            np.zeros((2, 4), np.int32),
            np.array([4, 4]),
        ),
        PeerArrays(
            np.zeros((2, 1, 1), np.float32),
            np.zeros((2, 1), np.int32),
            np.array([1, 1]),
        ),
        np.arange(m, dtype=np.float32)[:, None],
        np.arange(m, dtype=np.int32),
        m,
        (1,),
    )
    data = _eval_data(fed, 50, seed=3)
    kept = np.asarray(data.test_y)[np.asarray(data.test_mask) > 0]
    assert len(kept) == 50 and len(set(kept.tolist())) == 50
    assert np.array_equal(np.asarray(data.test_x)[:50, 0], kept)  # rows kept whole
    assert np.array_equal(kept, np.asarray(_eval_data(fed, 50, seed=3).test_y)[:50])
    assert not np.array_equal(kept, np.asarray(_eval_data(fed, 50, seed=4).test_y)[:50])
    assert np.asarray(_eval_data(fed, None).test_mask).sum() == m
    assert np.asarray(_eval_data(fed, 10_000).test_mask).sum() == m


def test_scenario_test_samples_reaches_the_evaluation():
    from tests.test_engine import TINY
    from workbench.engine import build
    from workbench.scenario import parse_scenario

    sim = build(parse_scenario({**TINY, "evaluation": {"test_samples": 20}}))
    assert np.asarray(sim.eval_data.test_mask).sum() == 20
