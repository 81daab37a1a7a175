"""End-to-end runs on tiny scenarios: CLI, run directory, resume, divergence."""

import csv
import json

import numpy as np
import pytest
import yaml

import workbench.runner as runner
from workbench.cli import main
from workbench.errors import DivergenceError, RunInterrupted

TINY = {
    "name": "tiny",
    "seed": 1,
    "peers": 4,
    "rounds": 6,
    "eval_every": 2,
    "data": {"name": "digits", "batch_size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "topology": {"name": "ring"},
    "algorithm": {"name": "dsgd", "lr": 0.05, "momentum": 0.9},
}


def write_scenario(tmp_path, **changes):
    sc = {**TINY, **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_quickstart_few_rounds(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "scenarios/quickstart.yaml",
            "--set",
            "rounds=4",
            "--set",
            "eval_every=2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert "final mean test accuracy" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "rounds",
        "final_mean_test_accuracy",
        "final_min_test_accuracy",
        "wall_seconds",
        "compile_seconds",
        "peer_steps_per_second",
        "rho",
    ):
        assert summary[key] is not None, key
    assert summary["rounds"] == 4
    assert summary["rho"] == pytest.approx(
        1 / 3 + 2 / 3 * np.cos(2 * np.pi / 16), abs=1e-6
    )
    metrics = rows(out / "metrics.csv")
    assert [int(r["round"]) for r in metrics] == [2, 4]
    assert len(rows(out / "peers.csv")) == 2 * 16
    # every peer sends its 64-16... MLP to 2 neighbours per round
    n_params = summary["num_params"]
    assert float(metrics[-1]["bytes_sent_total"]) == 4 * 16 * 2 * 4 * n_params
    resolved = yaml.safe_load((out / "scenario.yaml").read_text())
    assert resolved["rounds"] == 4 and resolved["peers"] == 16


def test_resume_matches_uninterrupted(tmp_path, monkeypatch):
    path = write_scenario(tmp_path)
    full = runner.run(str(path), [], out=str(tmp_path / "full"), progress=False)
    full_dir = full.run_dir

    real_save = runner.save_checkpoint

    def killed_after_round_4(run_dir, round_, *args, **kwargs):
        path = real_save(run_dir, round_, *args, **kwargs)
        if round_ == 4:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(runner, "save_checkpoint", killed_after_round_4)
    with pytest.raises(RunInterrupted, match="resume"):
        runner.run(str(path), [], out=str(tmp_path / "cut"), progress=False)
    assert [int(r["round"]) for r in rows(tmp_path / "cut" / "metrics.csv")] == [2, 4]
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    runner.run(None, [], resume=str(tmp_path / "cut"), progress=False)

    full, cut = rows(full_dir / "metrics.csv"), rows(tmp_path / "cut" / "metrics.csv")
    assert [r["round"] for r in cut] == ["2", "4", "6"]
    for a, b in zip(full, cut, strict=True):
        for key in (
            "test_acc_mean",
            "test_loss_mean",
            "consensus_distance",
            "bytes_sent_total",
            "averaged_model_acc",
        ):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key
    peers_full = rows(full_dir / "peers.csv")
    peers_cut = rows(tmp_path / "cut" / "peers.csv")
    assert len(peers_cut) == len(peers_full)
    assert [p["test_loss"] for p in peers_cut] == [p["test_loss"] for p in peers_full]


def test_divergence_stops_with_clear_message_and_keeps_checkpoint(tmp_path):
    path = write_scenario(
        tmp_path,
        algorithm={
            "name": "dsgd",
            "lr": 0.05,
            "schedule": {"name": "step", "boundaries": [4], "factor": 1e30},
        },
    )
    with pytest.raises(DivergenceError, match="diverged .* rounds 5-6") as info:
        runner.run(str(path), [], out=str(tmp_path / "run"), progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts[-1] == "round_00000004.msgpack"
    kept = tmp_path / "run" / "checkpoints" / "round_00000004.msgpack"
    assert str(kept) in str(info.value) and kept.is_file()
    assert [r["round"] for r in rows(tmp_path / "run" / "metrics.csv")] == ["2", "4"]


def test_divergence_through_cli_is_one_line(tmp_path, capsys):
    path = write_scenario(tmp_path, algorithm={"name": "dsgd", "lr": 1e30})
    code = main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "diverged" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["simulate", "missing.yaml"], "missing.yaml"),
        (["simulate", "scenarios/quickstart.yaml", "--set", "rounds=zero"], "rounds"),
        (
            ["simulate", "scenarios/quickstart.yaml", "--set", "topology.name=rign"],
            "did you mean 'ring'",
        ),
        (["simulate", "scenarios/quickstart.yaml", "--bogus"], "--bogus"),
        (["simulate"], "SCENARIO"),
        (["simulate", "--resume", "/nonexistent/run"], "scenario.yaml"),
    ],
)
def test_cli_errors_are_one_line(argv, fragment, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and len(err.splitlines()) == 1, err


def test_tensorboard_scalars_written(tmp_path):
    path = write_scenario(tmp_path, rounds=2, output={"tensorboard": True})
    run_dir, summary, _ = runner.run(
        str(path), [], out=str(tmp_path / "tb"), progress=False
    )
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert summary["rounds"] == 2


def test_cifar_ring_runs_on_tiny_cifar_directory(tmp_path, capsys):
    from tests.test_data import write_cifar

    write_cifar(tmp_path / "data", rows=40)
    out = tmp_path / "run"
    code = main(
        [
            "simulate",
            "scenarios/cifar_ring.yaml",
            "--set",
            "rounds=2",
            "--set",
            "eval_every=1",
            "--set",
            "data.partition.min_size=2",
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_peers"] == 16
    assert 0.0 <= summary["final_mean_test_accuracy"] <= 1.0
    assert len(rows(out / "peers.csv")) == 2 * 16


def test_missing_cifar_files_is_one_line(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "scenarios/cifar_ring.yaml",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cifar-10-batches-py" in err and "workbench data fetch cifar10" in err


@pytest.mark.parametrize(
    "topology",
    [
        {"name": "peer_sampler", "d": 2},
        {"name": "one_peer_exponential"},
        {"name": "random_matching"},
    ],
)
def test_dynamic_topology_compiles_once_and_learns(tmp_path, topology):
    path = write_scenario(tmp_path, rounds=6, eval_every=2, topology=topology)
    summary = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    assert summary["compilations"] + summary["cached_compilations"] == 1
    losses = [float(r["test_loss_mean"]) for r in rows(tmp_path / "r" / "metrics.csv")]
    assert losses[-1] < losses[0] < np.log(10) + 0.5


def test_cli_topology_describe_json(capsys):
    assert main(["topology", "describe", "torus:n=64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 64 and info["num_edges"] == 128
    assert info["rho"] == pytest.approx(1 - 0.4 * (1 - np.cos(2 * np.pi / 8)), abs=1e-9)
    assert info["spectral_gap"] == pytest.approx(1 - info["rho"])


def test_cli_topology_describe_bad_spec_is_one_line(capsys):
    assert main(["topology", "describe", "random_regular:n=5,d=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "d" in err


def test_cli_data_fetch_unknown_dataset_is_one_line(tmp_path, capsys):
    assert main(["data", "fetch", "cifar100", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cifar10" in err


def test_plot_runs_figure_from_run_directories(tmp_path):
    from paper_figures.plot_runs import load_curve
    from paper_figures.plot_runs import main as plot_main

    path = write_scenario(tmp_path, rounds=4)
    for name in ("ring", "complete"):
        runner.run(
            str(path),
            [f"topology.name={name}"],
            out=str(tmp_path / name),
            progress=False,
        )
    out = tmp_path / "fig.png"
    assert (
        plot_main([str(tmp_path / "ring"), str(tmp_path / "complete"), "-o", str(out)])
        == 0
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    curve = load_curve(tmp_path / "complete")
    np.testing.assert_array_equal(curve["round"], [2, 4])
    # complete graph of 4 peers: each peer sends to 3 others every round
    params = json.loads((tmp_path / "complete" / "summary.json").read_text())
    assert curve["bytes_sent_total"][-1] == 4 * 4 * 3 * 4 * params["num_params"]


def test_fedavg_partial_participation_end_to_end(tmp_path):
    path = write_scenario(
        tmp_path,
        peers=8,
        rounds=4,
        algorithm={
            "name": "fedavg",
            "lr": 0.1,
            "local_steps": 3,
            "client_fraction": 0.25,
        },
    )
    summary = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    metrics = rows(tmp_path / "r" / "metrics.csv")
    # 2 of 8 clients upload and 2 downloads per round
    assert float(metrics[-1]["bytes_sent_total"]) == 4 * (2 + 2) * (
        4 * summary["num_params"]
    )
    assert int(metrics[-1]["active_peers"]) == 2
    # every client holds the global model after each round: consensus is exact
    assert summary["final_consensus_distance"] == pytest.approx(0.0, abs=1e-10)
