"""Shipped scenarios: gradient tracking beats D-SGD on gt_vs_dsgd.yaml, as claimed; the
ETRI CPU files run and send what their edge schedules say."""

import csv

import numpy as np
import pytest

from workbench.runner import run


def final(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))[-1]


def test_gradient_tracking_agrees_more_and_is_no_less_accurate_than_dsgd(tmp_path):
    scenario = "scenarios/gt_vs_dsgd.yaml"
    fast = ["eval_every=400"]
    summary = run(scenario, fast, out=str(tmp_path / "gt"), progress=False).summary
    run(
        scenario,
        [*fast, "algorithm.name=dsgd"],
        out=str(tmp_path / "d"),
        progress=False,
    )
    gt, dsgd = final(tmp_path / "gt"), final(tmp_path / "d")
    assert gt["round"] == dsgd["round"] == "400"
    assert float(gt["consensus_distance"]) < 0.5 * float(dsgd["consensus_distance"])
    assert float(gt["test_acc_mean"]) >= float(dsgd["test_acc_mean"])
    # two vectors per round (tracker and model) against one
    assert float(gt["bytes_sent_total"]) == 2 * float(dsgd["bytes_sent_total"])
    for key in ("bytes_sent_total", "bytes_sent_per_peer", "bytes_per_round_per_peer"):
        assert summary[key] == float(gt[key]), key
    # ring: 2 neighbours x (tracker + model) x the float32 parameters
    n_params = summary["num_params"]
    assert summary["bytes_per_round_per_peer"] == 2 * 2 * 4 * n_params


ETRI_CPU = {  # file -> (rounds for 20 steps, vectors sent in 20 steps over K3)
    # every 10 steps each of the 3 edges swaps both ways: (y, x) with rho > 0
    "pdmm_sgd": (20, 2 * 3 * 2 * 2),
    "admm_sgd": (20, 2 * 3 * 2 * 2),
    # round-robin: each edge once every 10 steps, y only
    "pdmm_isvr": (20, 2 * 3 * 2),
    "admm_isvr": (20, 2 * 3 * 2),
    # a round is 10 local steps, then every peer sends to both neighbours
    "dsgd": (2, 2 * 3 * 2),
    # one random edge averages per round
    "gossip": (2, 2 * 2),
}


def test_etri_cpu_files_run_and_send_what_their_schedule_says(tmp_path):
    for name, (rounds, vectors) in ETRI_CPU.items():
        summary = run(
            f"scenarios/etri_k3_cpu/{name}.yaml",
            [f"rounds={rounds}", f"eval_every={rounds}"],
            out=str(tmp_path / name),
            progress=False,
        ).summary
        assert summary["bytes_sent_total"] == vectors * 4 * summary["num_params"], name
        assert float(final(tmp_path / name)["test_acc_mean"]) > 0.1, name


def _acc(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(r["test_acc_mean"]) for r in csv.DictReader(f)]


def test_hips_cpu_with_one_party_and_a_plain_link_is_fedavg(tmp_path):
    fast = ["rounds=4", "eval_every=2"]
    plain = ["algorithm.parties=1", "algorithm.compressor.name=identity"]
    run("scenarios/hips_cpu.yaml", [*fast, *plain], out=str(tmp_path / "h"),
        progress=False)  # fmt: skip
    fedavg = ["algorithm.name=fedavg", "algorithm.local_steps=5"]
    run("scenarios/hips_cpu.yaml", [*fast, *fedavg], out=str(tmp_path / "f"),
        progress=False)  # fmt: skip
    hips, ref = _acc(tmp_path / "h"), _acc(tmp_path / "f")
    assert len(hips) == 2 and hips == pytest.approx(ref, abs=1e-6)
    # the shipped 2-bit link against a plain one: in each of the 2 global
    # rounds the 3 party leaders send 2 bits instead of 32 per parameter
    shipped = run("scenarios/hips_cpu.yaml", fast, out=str(tmp_path / "s"),
                  progress=False).summary  # fmt: skip
    wide = run("scenarios/hips_cpu.yaml", [*fast, "algorithm.compressor.name=identity"],
               out=str(tmp_path / "w"), progress=False).summary  # fmt: skip
    saved = 2 * 3 * (32 - 2) * shipped["num_params"] / 8
    assert wide["bytes_sent_total"] - shipped["bytes_sent_total"] == saved


def test_dynfed_cpu_sends_nothing_at_an_infinite_threshold(tmp_path):
    fast = ["rounds=6", "eval_every=3"]
    summary = run("scenarios/dynfed_cpu.yaml", [*fast, "algorithm.threshold=.inf"],
                  out=str(tmp_path / "inf"), progress=False).summary  # fmt: skip
    assert summary["bytes_sent_total"] == 0.0
    shipped = run("scenarios/dynfed_cpu.yaml", fast, out=str(tmp_path / "d"),
                  progress=False).summary  # fmt: skip
    # someone drifts past 0.1, but not everyone in every round: less than six
    # full syncs (16 uploads of model + priority, 16 replies of model + cut + flag)
    p = shipped["num_params"]
    full = 6 * 16 * ((4 * p + 4) + (4 * p + 4 + 1))
    assert 0 < shipped["bytes_sent_total"] < full


def test_hips_async_cpu_takes_each_party_update_as_it_arrives(tmp_path):
    summary = run("scenarios/hips_async_cpu.yaml", ["rounds=40", "eval_every=20"],
                  out=str(tmp_path / "a"), progress=False).summary  # fmt: skip
    clock = summary["clock"]
    # 20 virtual seconds: the fast parties finish a cycle a second, the
    # straggler party (4x slower) one in four seconds; nobody waits
    assert clock["virtual_time"] == 20.0
    assert clock["steps_per_peer_max"] == 20 and clock["steps_per_peer_min"] == 5
    assert summary["final_mean_test_accuracy"] > 0.5


def test_dynfed_periods_cpu_pays_each_clients_svd_share(tmp_path):
    from workbench.algorithms.client_periods import share, svd_scores
    from workbench.data.federated import load_federated
    from workbench.scenario.yaml_io import load_scenario

    path, over = "scenarios/dynfed_periods_cpu.yaml", ["rounds=8", "eval_every=4"]
    over.append("algorithm.communications=4")
    summary = run(path, over, out=str(tmp_path / "p"), progress=False).summary
    sc = load_scenario(path, over)
    fed = load_federated(sc.data, sc.peers, sc.seed, None)
    counts = np.asarray(share(svd_scores(fed.train, 0.95), 4, 8, 8))
    assert 1 <= counts.min() < counts.max() <= 4  # the data's ranks differ
    # each send: model, loss, last report, flag up (4p + 9 bytes); model, low
    # and high back (4p + 8)
    p = summary["num_params"]
    assert summary["bytes_sent_total"] == counts.sum() * (8 * p + 17)


def test_dynfed_faults_cpu_sends_each_crashed_clients_top_k(tmp_path):
    over = ["rounds=24", "eval_every=24"]
    summary = run("scenarios/dynfed_faults_cpu.yaml", over, out=str(tmp_path / "f"),
                  progress=False).summary  # fmt: skip
    lost = run("scenarios/dynfed_faults_cpu.yaml",
               [*over, "clock.faults.redistribute=null"], out=str(tmp_path / "l"),
               progress=False).summary  # fmt: skip
    # four crashes, 50 samples each (every client holds about 100), 64
    # features and a label at 4 bytes each
    assert summary["clock"]["redistributed_samples"] == 200
    assert lost["clock"]["redistributed_samples"] == 0
    extra = summary["bytes_sent_total"] - lost["bytes_sent_total"]
    assert extra == 200 * 65 * 4
