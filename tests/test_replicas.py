"""Replicas: runs of one program stacked in one jitted chunk give, bit for bit,
the numbers of separate runs; a sweep groups its points into them."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import workbench.replicas as replicas
import workbench.runner as runner
from tests.test_clock_runs import EVENTFUL
from tests.test_engine import write_scenario
from workbench.engine import build
from workbench.errors import RunInterrupted
from workbench.optim import make_optimizer
from workbench.scenario import load_scenario
from workbench.sweep import plan, run_sweep

NOT_WALL = lambda row: {k: v for k, v in row.items() if k != "wall_time"}  # noqa: E731
SAME = ("final_mean_test_accuracy", "final_consensus_distance", "bytes_sent_total",
        "final_averaged_model_accuracy", "num_params")  # fmt: skip


def read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def sims(path, sets):
    return [build(load_scenario(path, s)) for s in sets]


def files(run_dir):
    """metrics.csv and peers.csv rows, wall time left out, and the summary."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return ([NOT_WALL(r) for r in read(run_dir / "metrics.csv")],
            read(run_dir / "peers.csv"), {k: summary[k] for k in SAME})  # fmt: skip


def test_replicas_write_the_numbers_of_separate_runs_bit_for_bit(tmp_path):
    path = write_scenario(tmp_path, rounds=5, eval_every=2)  # a last, short chunk
    sets = [["seed=1"], ["seed=2", "algorithm.lr=0.2", "algorithm.momentum=0.5"]]
    group = sims(path, sets)
    first = replicas.program(group[0])
    assert all(replicas.program(s) == first for s in group)
    dirs = [tmp_path / f"rep{i}" for i in range(2)]
    summaries = replicas.run_replicas(group, dirs, progress=False)
    for i, s in enumerate(sets):
        alone = tmp_path / f"alone{i}"
        alone.mkdir()
        runner.start(build(load_scenario(path, s)), alone, progress=False)
        assert files(dirs[i]) == files(alone)
        assert (dirs[i] / "scenario.yaml").is_file()
        execution = summaries[i]["execution"]
        assert (execution["replicas"], execution["replica"]) == (2, i)
        assert execution["replica_of"] == "rep0"
    # the two differ: equal files above are not equal by accident
    assert len({files(d)[2]["final_mean_test_accuracy"] for d in dirs}) == 2
    programs = [s["compilations"] + s["cached_compilations"] for s in summaries]
    assert programs == [2, 0]  # chunks of 2 rounds and of 1, on the first
    # each reports its share of the group's times: they add up to the group's
    group = summaries[0]["execution"]["group_wall_seconds"]
    assert sum(s["wall_seconds"] for s in summaries) == pytest.approx(group)
    assert len({s["train_seconds"] for s in summaries}) == 1


def test_a_different_shape_or_a_privacy_stage_is_another_program(tmp_path):
    path = write_scenario(tmp_path)
    wide = "model.hidden=[8]"
    base, wider, wider2 = sims(path, [[], [wide], [wide, "seed=5"]])
    assert replicas.program(base) != replicas.program(wider)
    assert replicas.program(wider) == replicas.program(wider2)
    # SGD's momentum is state; nesterov (or momentum 0: no trace) is structure
    momentum, nesterov = sims(path, [["algorithm.momentum=0.5"],
                                     ["algorithm.nesterov=true"]])  # fmt: skip
    assert replicas.program(momentum) == replicas.program(base)
    assert replicas.program(nesterov) != replicas.program(base)
    metrics = sims(path, [["evaluation.metrics=[generalization_gap]"]])[0]
    assert replicas.program(metrics).chunk == replicas.program(base).chunk
    assert replicas.program(metrics) != replicas.program(base)
    private = write_scenario(tmp_path, privacy={"victims": [0], "every": 2})
    assert replicas.program(build(load_scenario(private))) is None


def test_a_sweep_runs_each_program_once_as_replicas(tmp_path, monkeypatch):
    path = write_scenario(tmp_path, rounds=4, eval_every=2)
    grid = {"algorithm.lr": [0.05, 0.1], "model.hidden": [[16], [8]]}
    sweep = plan(str(path), [], grid, {}, None, str(tmp_path / "s"))
    compiled = []
    real = replicas.compile_group
    counted = lambda s, *a: compiled.append(len(s)) or real(s, *a)  # noqa: E731
    monkeypatch.setattr(replicas, "compile_group", counted)
    statuses = list(run_sweep(sweep, progress=False))
    assert [s.status for s in statuses] == ["done"] * 4
    assert compiled == [2, 2]  # one program per width: its 2 lr stacked
    rows = read(tmp_path / "s" / "sweep.csv")
    # the points of one width are one program, wherever they are in the grid
    assert [r["replica_of"] for r in rows] == ["p000", "p001"] * 2
    programs = [int(r["compilations"]) + int(r["cached_compilations"]) for r in rows]
    assert programs == [1, 1, 0, 0]
    # each point's numbers are its separate run's
    alone = tmp_path / "alone"
    alone.mkdir()
    p = sweep.points[3]
    runner.start(build(load_scenario(path, p.overrides())), alone, progress=False)
    assert files(alone) == files(tmp_path / "s" / "points" / "p003")


def test_replicas_over_the_memory_budget_are_halved(tmp_path, monkeypatch):
    path = write_scenario(tmp_path, rounds=2, eval_every=2)
    sweep = plan(str(path), [], {}, {}, 4, str(tmp_path / "s"))
    real = replicas.compile_group

    def budget(group, *args):  # room for two replicas, as a budget would say
        if len(group) > 2:
            raise replicas.TooLarge(f"{len(group)} replicas need more")
        return real(group, *args)

    monkeypatch.setattr(replicas, "compile_group", budget)
    assert [s.status for s in run_sweep(sweep, progress=False)] == ["done"] * 4
    rows = read(tmp_path / "s" / "sweep.csv")
    assert [r["replica_of"] for r in rows] == ["p000", "p000", "p002", "p002"]


def test_a_killed_group_resumes_alone_with_the_same_numbers(tmp_path, monkeypatch):
    path = write_scenario(tmp_path, rounds=4, eval_every=2)
    sweep = plan(str(path), [], {}, {}, 3, str(tmp_path / "s"))
    real_save = runner.save_checkpoint
    kill = {"at": "p001"}

    def killed(run_dir, round_, *args, **kwargs):
        saved = real_save(run_dir, round_, *args, **kwargs)
        if run_dir.name == kill["at"] and round_ == 2:
            raise KeyboardInterrupt
        return saved

    monkeypatch.setattr(runner, "save_checkpoint", killed)
    with pytest.raises(RunInterrupted, match="rerunning the sweep continues them"):
        list(run_sweep(sweep, progress=False))
    kill["at"] = None
    statuses = list(run_sweep(sweep, progress=False))
    assert [s.status for s in statuses] == ["done"] * 3
    rows = read(tmp_path / "s" / "sweep.csv")
    assert [r["replica_of"] for r in rows] == ["", "", ""]  # resumed alone
    for p in sweep.points[1:]:  # resumed from its checkpoint; started over
        alone = tmp_path / f"alone{p.seed}"
        alone.mkdir()
        runner.start(build(load_scenario(path, p.overrides())), alone, progress=False)
        assert files(alone) == files(tmp_path / "s" / "points" / p.name)


def test_a_diverged_replica_fails_alone(tmp_path):
    path = write_scenario(tmp_path, rounds=4, eval_every=2)
    sweep = plan(str(path), [], {"algorithm.lr": [0.05, 1e12]}, {}, None,
                 str(tmp_path / "s"))  # fmt: skip
    statuses = list(run_sweep(sweep, progress=False))
    assert statuses[0].status == "done"
    assert statuses[1].status.startswith("failed: training diverged")
    assert statuses[0].summary["execution"]["replicas"] == 2


@pytest.mark.parametrize(
    "name, momentum, plain",
    [
        ("sgd", 0.9, lambda lr: optax.sgd(lr, momentum=0.9)),
        ("sgd", 0.0, lambda lr: optax.sgd(lr)),
        ("momentum", 0.0, lambda lr: optax.sgd(lr, momentum=0.9)),
        ("adam", 0.0, lambda lr: optax.adam(lr, b1=0.9)),
    ],
)
def test_step_size_and_momentum_as_state_update_as_constants_do(name, momentum, plain):
    """Bit for bit what optax does with constants; the step size (and SGD's
    momentum) is in the state, so another value is the same program."""
    params = {"w": jnp.linspace(-1.0, 1.0, 7)}
    grads = {"w": jnp.cos(jnp.arange(7.0))}

    def steps(opt):
        state, p = opt.init(params), params
        for _ in range(4):
            updates, state = jax.jit(opt.update)(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p["w"]

    got = steps(make_optimizer(name, lr=0.3, momentum=momentum))
    np.testing.assert_array_equal(got, steps(plain(0.3)))

    def program(lr):
        opt = make_optimizer(name, lr=lr, momentum=momentum)
        return str(jax.make_jaxpr(opt.update)(grads, opt.init(params), params))

    assert program(0.3) == program(0.01)
    if momentum:
        other = make_optimizer(name, lr=0.3, momentum=0.5)
        assert str(jax.make_jaxpr(other.update)(grads, other.init(params),
                                                params)) == program(0.3)  # fmt: skip


def test_clocked_seeds_with_stragglers_drawn_from_them_are_replicas(tmp_path):
    # the stragglers are drawn from the seed: state of the clock, not constants
    path = write_scenario(tmp_path, rounds=4, eval_every=2, peers=8, clock=EVENTFUL)
    sets = [["seed=1"], ["seed=4"]]
    group = sims(path, sets)
    factors = [np.asarray(s.state.clock.factor) for s in group]
    assert not np.array_equal(*factors)  # different stragglers
    assert replicas.program(group[0]) == replicas.program(group[1])
    dirs = [tmp_path / "rep0", tmp_path / "rep1"]
    replicas.run_replicas(group, dirs, progress=False)
    alone = tmp_path / "alone"  # the second replica's separate run
    alone.mkdir()
    runner.start(build(load_scenario(path, sets[1])), alone, progress=False)
    assert files(dirs[1]) == files(alone)


def test_a_sweep_builds_no_more_replicas_than_memory_holds_twice(tmp_path, monkeypatch):
    import workbench.sweep as sweep_module
    from workbench.memory import tree_bytes
    from workbench.planner import Budget

    path = write_scenario(tmp_path, rounds=2, eval_every=2)
    sim = build(load_scenario(path))
    per_run = tree_bytes((sim.state, sim.data, sim.eval_data))
    budget = Budget(5 * per_run, "a test budget", True)  # two runs, twice, fit
    monkeypatch.setattr(sweep_module, "memory_budget", lambda gib: budget)
    assert sweep_module.room(sim, 32) == 2 and sweep_module.room(sim, 1) == 1
    sweep = plan(str(path), [], {}, {}, 3, str(tmp_path / "s"))
    assert [s.status for s in run_sweep(sweep, progress=False)] == ["done"] * 3
    rows = read(tmp_path / "s" / "sweep.csv")
    assert [r["replica_of"] for r in rows] == ["p000", "p000", ""]  # the last alone


def test_each_replica_reports_its_share_of_the_groups_times():
    group = runner.Timer(compile=6.0, train=4.0, eval=2.0, compilations=3, cached=1)
    first, other = replicas.share(group, 2, 0), replicas.share(group, 2, 1)
    assert first == runner.Timer(3.0, 2.0, 1.0, compilations=3, cached=1)
    assert other == runner.Timer(3.0, 2.0, 1.0, compilations=0, cached=0)
