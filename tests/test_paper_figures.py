"""Figure scripts in --quick mode, shrunk with --set: the PNG, and the CSV's
numbers recomputed from the run directories; a rerun reuses the runs."""

import csv

import numpy as np
import pytest

from tests.test_run_safety import snapshot


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_topology_comparison_quick_plots_each_graph_with_its_rho(tmp_path, capsys):
    from paper_figures.topology_comparison import NAME, TOPOLOGIES, main

    tiny = ["--quick", "--out", str(tmp_path), "--set", "rounds=4",
            "--set", "eval_every=2"]  # fmt: skip
    assert main(tiny) == 0
    folder = tmp_path / NAME
    assert (folder / f"{NAME}.png").read_bytes()[:4] == b"\x89PNG"
    rows = read(folder / f"{NAME}.csv")
    assert [r["series"] for r in rows] == [t for t in TOPOLOGIES for _ in (2, 4)]
    for t in TOPOLOGIES:
        metrics = read(folder / "quick-1-seeds" / t / "points/p000/metrics.csv")
        got = [r for r in rows if r["series"] == t]
        assert [float(r["round"]) for r in got] == [2.0, 4.0]
        assert [float(r["test_acc_mean"]) for r in got] == pytest.approx(
            [float(m["test_acc_mean"]) for m in metrics], rel=1e-12
        )
        assert all(float(r["std"]) == 0.0 for r in got)  # one seed
    runs = snapshot(folder / "quick-1-seeds")
    capsys.readouterr()
    assert main(tiny) == 0  # a rerun reuses every run
    assert snapshot(folder / "quick-1-seeds") == runs
    assert "ring: 1 run(s)" in capsys.readouterr().out


def test_stragglers_quick_plots_accuracy_against_virtual_time(tmp_path):
    from paper_figures.common import slug
    from paper_figures.stragglers import NAME, SERIES, main

    assert main(["--quick", "--out", str(tmp_path), "--set", "rounds=6",
                 "--set", "eval_every=3"]) == 0  # fmt: skip
    rows = read(tmp_path / NAME / f"{NAME}.csv")
    for s in SERIES:
        series = tmp_path / NAME / "quick-1-seeds" / slug(s.label)
        metrics = read(series / "points/p000/metrics.csv")
        got = [r for r in rows if r["series"] == s.label]
        for key in ("virtual_time", "test_acc_mean"):
            assert [float(r[key]) for r in got] == [float(m[key]) for m in metrics]
    times = [float(r["virtual_time"]) for r in rows]
    assert len(set(times)) > 2  # the three protocols' clocks differ
    assert (tmp_path / NAME / f"{NAME}.png").stat().st_size > 10_000


def test_a_curve_is_the_mean_and_sample_std_over_seeds(tmp_path):
    from paper_figures.common import curve

    runs = []
    for seed, (acc, time) in enumerate([([0.5, 0.7, 0.9], [1, 2, 3]),
                                        ([0.3, 0.6, 0.8], [2, 4, 5])]):  # fmt: skip
        run = tmp_path / f"s{seed}"
        run.mkdir()
        lines = ["round,virtual_time,test_acc_mean"]
        lines += [
            f"{r},{t},{a}" for r, (a, t) in enumerate(zip(acc, time, strict=True))
        ]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
        runs.append(run)
    x, mean, std = curve(runs, "virtual_time")
    np.testing.assert_allclose(x, [1.5, 3.0, 4.0])
    np.testing.assert_allclose(mean, [0.4, 0.65, 0.85])
    np.testing.assert_allclose(
        std, np.std([[0.5, 0.7, 0.9], [0.3, 0.6, 0.8]], 0, ddof=1)
    )
