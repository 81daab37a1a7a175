"""Shipped scenarios: gradient tracking beats D-SGD on gt_vs_dsgd.yaml, as claimed."""

import csv

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
