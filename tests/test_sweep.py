"""Sweeps and reports: expansion by hand, the index, continuing an interrupted
sweep, a finished sweep changing no file, the report's numbers recomputed."""

import csv
import json

import numpy as np
import pytest

import workbench.runner as runner
from tests.test_engine import write_scenario
from tests.test_run_safety import snapshot
from workbench.cli import main
from workbench.errors import RunInterrupted, ScenarioError, WorkbenchError
from workbench.report import aggregate
from workbench.scenario.sweep import SweepConfig
from workbench.sweep import Point, expand, plan, run_sweep


def spec(**raw):
    return SweepConfig.model_validate(raw)


def test_grid_zip_and_seeds_expand_to_the_hand_listed_points():
    s = spec(
        grid={"algorithm.lr": [0.1, 0.2], "topology.name": ["ring", "complete"]},
        zip={"algorithm.name": ["dsgd", "tracking"], "algorithm.local_steps": [1, 2]},
        seeds=[3, 5],
    )
    got = [(p.index, p.keys, p.seed) for p in expand(s, default_seed=0)]
    want, i = [], 0
    for lr in (0.1, 0.2):
        for topo in ("ring", "complete"):
            for name, steps in (("dsgd", 1), ("tracking", 2)):
                for seed in (3, 5):
                    keys = {"algorithm.lr": lr, "topology.name": topo}
                    keys |= {"algorithm.name": name, "algorithm.local_steps": steps}
                    want.append((i, keys, seed))
                    i += 1
    assert got == want
    assert [p.seed for p in expand(spec(seeds=3), 9)] == [0, 1, 2]
    assert [p.seed for p in expand(spec(grid={"rounds": [1]}), 9)] == [9]
    # an entry key goes first: a new algorithm drops the old one's keys
    p = Point(0, {"algorithm.local_steps": 2, "algorithm.name": "tracking"}, 1)
    assert p.overrides(["rounds=3"]) == [
        'algorithm.name="tracking"', "algorithm.local_steps=2", "rounds=3",
        "seed=1", "sweep=null",
    ]  # fmt: skip


def test_every_points_set_survives_its_new_entry_and_cli_values_are_yaml(tmp_path):
    from workbench.scenario import load_scenario
    from workbench.sweep import axes_from_cli

    grid = axes_from_cli(
        ["algorithm.name=dsgd,gradient_tracking", "algorithm.lr=1e-3,0.1",
         "model.hidden=[16, 8],[4]"], "--grid",
    )  # fmt: skip
    assert grid == {
        "algorithm.name": ["dsgd", "gradient_tracking"],
        "algorithm.lr": [1e-3, 0.1],
        "model.hidden": [[16, 8], [4]],
    }
    path = write_scenario(tmp_path)
    common = ["algorithm.local_steps=3"]
    sweep = plan(str(path), common, grid, {}, 2, str(tmp_path / "s"))
    assert len(sweep.points) == 16
    for p in sweep.points:  # the --set is applied after each point's new entry
        sc = load_scenario(path, p.overrides(sweep.common))
        assert sc.algorithm["local_steps"] == 3 and sc.seed == p.seed
        assert sc.algorithm["name"] == p.keys["algorithm.name"]
    rounds = plan(str(path), [], {"rounds": [2, 4]}, {}, None, str(tmp_path / "r"))
    assert rounds.rounds == {"p000": 2, "p001": 4}
    with pytest.raises(WorkbenchError, match="algorithm.lr is swept"):
        plan(str(path), ["algorithm.lr=0.2"], grid, {}, None, str(tmp_path / "s"))
    with pytest.raises(ScenarioError, match="model.hidden: invalid YAML"):
        axes_from_cli(["model.hidden=[16"], "--grid")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"zip": {"a": [1, 2], "b": [1]}}, "zip lists must have equal lengths"),
        ({"grid": {"seed": [1, 2]}}, "sweep seeds with 'seeds'"),
        ({"grid": {"a": []}}, "a: expected a non-empty list"),
        ({"grid": {"a": [1]}, "zip": {"a": [2]}}, "a is in both grid and zip"),
        ({"seeds": [1, 1]}, "expected distinct seeds"),
        ({"seeds": 0}, "must be >= 1"),
    ],
)
def test_a_bad_sweep_section_is_one_line_naming_it(tmp_path, capsys, raw, message):
    path = write_scenario(tmp_path, sweep=raw)
    assert main(["sweep", str(path), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("workbench: error: sweep") and message in err


def test_simulate_refuses_a_sweep_and_sweep_needs_axes(tmp_path, capsys):
    path = write_scenario(tmp_path, sweep={"seeds": 2})
    assert main(["simulate", str(path)]) == 2
    assert (
        "has a sweep: section; run it with `workbench sweep" in capsys.readouterr().err
    )
    plain = write_scenario(tmp_path)
    with pytest.raises(WorkbenchError, match="nothing to sweep"):
        plan(str(plain), [], {}, {}, None, str(tmp_path / "s"))
    with pytest.raises(ScenarioError, match="algorithm.lrr: unknown key"):
        plan(str(plain), [], {"algorithm.lrr": [1]}, {}, None, str(tmp_path / "s"))


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def index(root):
    return read(root / "sweep.csv")


GRID = {"algorithm.lr": [0.05, 0.2]}


def test_a_sweep_indexes_its_points_continues_after_a_kill_and_reports(
    tmp_path, monkeypatch, capsys
):
    path = write_scenario(  # every point alone (replicas: tests/test_replicas.py)
        tmp_path, rounds=4, eval_every=2, sweep={"seeds": 2}, execution={"replicas": 1}
    )
    root = tmp_path / "sweep"
    real_save = runner.save_checkpoint
    saves, kill = [], {"at": "p002"}

    def killed(run_dir, round_, *args, **kwargs):  # the third point, at round 2
        saved = real_save(run_dir, round_, *args, **kwargs)
        saves.append((run_dir.name, round_))
        if run_dir.name == kill["at"] and round_ == 2:
            raise KeyboardInterrupt
        return saved

    monkeypatch.setattr(runner, "save_checkpoint", killed)
    sweep = plan(str(path), [], GRID, {}, None, str(root))
    with pytest.raises(RunInterrupted):
        list(run_sweep(sweep, progress=False))
    rows = index(root)
    assert [r["status"] for r in rows] == ["done", "done", "pending", "pending"]
    done = {p: snapshot(root / "points" / p) for p in ("p000", "p001")}
    saves.clear()
    kill["at"] = None
    assert main(["sweep", str(path), "--grid", "algorithm.lr=0.05,0.2",
                 "--out", str(root), "--quiet"]) == 0  # fmt: skip
    for p, files in done.items():  # finished points were not run again
        assert snapshot(root / "points" / p) == files
    # p002 went on from its round-2 checkpoint; p003 ran whole
    assert saves == [("p002", 4), ("p003", 2), ("p003", 4)]
    rows = index(root)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert [(r["point"], r["algorithm.lr"], r["seed"]) for r in rows] == [
        ("p000", "0.05", "0"), ("p001", "0.05", "1"),
        ("p002", "0.2", "0"), ("p003", "0.2", "1"),
    ]  # fmt: skip
    # each point compiled its chunk, or loaded it from the cache (the tests share
    # one persistent cache; a lone sweep's first point of each program compiles)
    assert all(int(r["compilations"]) + int(r["cached_compilations"]) == 1
               for r in rows)  # fmt: skip
    # the others differ only in seed and lr, array values: the first's program
    assert [r["cached_compilations"] for r in rows[1:]] == ["1", "1", "1"]
    assert all(float(r["compile_seconds"]) > 0 for r in rows)
    assert [m["round"] for m in read(root / "points/p002/metrics.csv")] == ["2", "4"]
    # the report: mean and sample std over the seeds of each point's summaries
    summaries = {
        p: json.loads((root / "points" / p / "summary.json").read_text())
        for p in ("p000", "p001", "p002", "p003")
    }
    table = aggregate(root)
    for row, pair in zip(table, [("p000", "p001"), ("p002", "p003")], strict=True):
        assert row["seeds"] == 2
        for fig in ("final_mean_test_accuracy", "bytes_sent_total", "wall_seconds"):
            x = np.array([summaries[p][fig] for p in pair])
            assert row[f"{fig}_mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert row[f"{fig}_std"] == pytest.approx(x.std(ddof=1), rel=1e-9)
        assert row["virtual_time_mean"] is None  # not clocked
    report = read(root / "report.csv")
    assert float(report[1]["final_mean_test_accuracy_mean"]) == pytest.approx(
        table[1]["final_mean_test_accuracy_mean"]
    )
    md = (root / "report.md").read_text().splitlines()
    assert md[0].startswith("| algorithm.lr | seeds | test acc") and len(md) == 4
    acc = table[0]["final_mean_test_accuracy_mean"]
    assert f"{acc:.4f} ±" in md[2]
    assert (root / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished sweep: rerunning it changes no file and prints the report
    before, saves[:] = snapshot(root), []
    capsys.readouterr()
    assert main(["sweep", str(path), "--grid", "algorithm.lr=0.05,0.2",
                 "--out", str(root), "--quiet"]) == 0  # fmt: skip
    assert snapshot(root) == before and saves == []
    out = capsys.readouterr().out
    assert "p003 algorithm.lr=0.2 seed=1: done" in out and f"{acc:.4f}" in out
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert main(["report", str(root)]) == 0  # not even rewritten alike
    assert snapshot(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes
    # another sweep into the same directory is refused
    assert main(["sweep", str(path), "--grid", "algorithm.lr=0.05,0.3",
                 "--out", str(root), "--quiet"]) == 2  # fmt: skip
    assert "holds a different sweep (its points changed)" in capsys.readouterr().err


def test_report_of_a_directory_that_is_no_sweep_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no readable sweep.json; expected a sweep directory" in (
        capsys.readouterr().err
    )
