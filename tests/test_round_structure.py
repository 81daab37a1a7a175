"""The round structure comes from the algorithm: its declared defaults are the
ones the engine uses, and every hyperparameter reaches the round."""

import jax
import numpy as np
import pytest

from tests.quadratic import ring_weights, run
from tests.test_engine import rows, write_scenario
from workbench.algorithms import ALGORITHMS
from workbench.engine import build
from workbench.runner import run as run_scenario
from workbench.scenario import load_scenario

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)


def registry_alg(**keys):
    def make(loss_fn, local_opt):
        return ALGORITHMS.build(
            {"name": "fedavg", **keys},
            "algorithm",
            loss_fn=loss_fn,
            optimizer=lambda steps: local_opt,
        )

    return make


def test_fedavg_default_weighting_is_data_size(tmp_path):
    path = write_scenario(
        tmp_path,
        peers=6,
        data={"name": "digits", "batch_size": 8, "partition": {"name": "unbalanced"}},
        algorithm={"name": "fedavg", "lr": 0.1},
    )
    sim = build(load_scenario(path))
    sizes = np.asarray(sim.data.size, np.float32)
    assert len(set(sizes.tolist())) > 1  # unbalanced: the weighting matters
    assert sim.spec.algorithm.rounds.weighting == "data_size"
    np.testing.assert_array_equal(np.asarray(sim.weights), sizes)


def test_fedavg_uniform_weighting_when_asked(tmp_path):
    path = write_scenario(
        tmp_path,
        peers=6,
        data={"name": "digits", "batch_size": 8, "partition": {"name": "unbalanced"}},
        algorithm={"name": "fedavg", "lr": 0.1, "weighting": "uniform"},
    )
    sim = build(load_scenario(path))
    np.testing.assert_array_equal(np.asarray(sim.weights), np.ones(6))


@pytest.mark.parametrize("server_lr", [1.0, 0.5, 0.25])
def test_fedavg_server_lr_is_not_ignored(server_lr):
    """One round from 0 with all clients: global = server_lr * mean(local models)."""
    with jax.enable_x64(True):
        state = run(registry_alg(server_lr=server_lr), ring_weights(8), A, B, 0.1, 1)
    locals_ = 0.1 * A * B  # one GD step from 0 on (a/2)(x - b)^2
    np.testing.assert_allclose(np.asarray(state.params), server_lr * locals_.mean())


def test_local_steps_key_reaches_the_round(tmp_path):
    path = write_scenario(
        tmp_path, algorithm={"name": "dsgd", "lr": 0.05, "local_steps": 3}
    )
    sim = build(load_scenario(path))
    assert sim.spec.local_steps == 3
    summary = run_scenario(str(path), [], out=str(tmp_path / "r"), progress=False)
    assert summary.summary["rounds"] == 6


def test_client_fraction_sets_participants(tmp_path):
    path = write_scenario(
        tmp_path,
        peers=8,
        algorithm={"name": "fedavg", "lr": 0.1, "client_fraction": 0.25},
    )
    assert build(load_scenario(path)).spec.participants == 2


def test_extra_metrics_from_the_scenario_land_in_both_csvs(tmp_path):
    path = write_scenario(
        tmp_path, evaluation={"metrics": ["param_norm", "generalization_gap"]}
    )
    run_scenario(str(path), [], out=str(tmp_path / "r"), progress=False)
    metrics, peers = (
        rows(tmp_path / "r" / "metrics.csv"),
        rows(tmp_path / "r" / "peers.csv"),
    )
    assert [r["round"] for r in metrics] == ["2", "4", "6"]
    for row in metrics:
        mine = [p for p in peers if p["round"] == row["round"]]
        assert len(mine) == 4
        for col in ("param_norm", "generalization_gap"):
            mean = np.mean([float(p[col]) for p in mine])
            assert float(row[f"{col}_mean"]) == pytest.approx(mean, rel=1e-6)
        gap = [float(p["test_loss"]) - float(p["train_loss"]) for p in mine]
        got = [float(p["generalization_gap"]) for p in mine]
        np.testing.assert_allclose(got, gap, rtol=1e-4, atol=1e-6)


def test_choco_on_a_dynamic_topology_is_refused_in_one_line(tmp_path, capsys):
    from workbench.cli import main

    path = write_scenario(
        tmp_path,
        topology={"name": "peer_sampler", "d": 2},
        algorithm={"name": "choco", "lr": 0.05, "gamma": 0.1},
    )
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "topology.name: algorithm 'choco' needs a static graph" in err
    assert not (tmp_path / "r").exists()
