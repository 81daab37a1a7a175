"""Clocked runs through the engine: identities, determinism, resume, async servers.

Identities: a clock with equal speeds, no latency, no loss and no crash is
the synchronous run, bit for bit; FedBuff with K = the cohort is FedAvg;
DC-ASGD without delay is SGD. Determinism: an eventful asynchronous run
(lognormal speeds, latency, loss, crashes) gives the same numbers under
every execution strategy and after a resume.
"""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import workbench.runner as runner
from tests.test_engine import write_scenario
from workbench.algorithms.async_server import asgd, fedasync, fedbuff
from workbench.cli import main
from workbench.engine import build
from workbench.errors import ScenarioError, WorkbenchError
from workbench.scenario import load_scenario

BASE = {
    "name": "clocked",
    "seed": 2,
    "peers": 8,
    "rounds": 8,
    "eval_every": 4,
    "data": {"name": "digits", "batch_size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "topology": {"name": "ring"},
    "algorithm": {"name": "dsgd", "lr": 0.05, "momentum": 0.9},
}
EVENTFUL = {
    "mode": "async",
    "tick": 0.5,
    "compute": {"name": "lognormal", "sigma": 0.5},
    "stragglers": {"fraction": 0.125, "factor": 4},
    "link": {"latency": 0.7, "loss": 0.1, "spread": 0.3},
    "faults": {"crash_rate": 0.05, "rejoin_rate": 0.5},
}


def run(tmp_path, name="run", **changes):
    path = write_scenario(tmp_path, **{**BASE, **changes})
    out = tmp_path / name
    summary = runner.run(str(path), [], out=str(out), progress=False).summary
    return out, summary


def table(out, name="metrics.csv", skip=("wall_time",)):
    with open(out / name) as f:
        return [
            {k: v for k, v in r.items() if k not in skip} for r in csv.DictReader(f)
        ]


def numbers(out):
    return [[float(v) for v in r.values()] for r in table(out)]


def test_equal_speeds_without_delays_or_faults_is_the_synchronous_run(tmp_path):
    execution = {"kernel": "table"}  # the clock mixes over the neighbour table
    plain, _ = run(tmp_path, "plain", execution=execution)
    quiet = {"link": {"latency": 0.0, "loss": 0.0}, "faults": {"crash_rate": 0.0}}
    for i, clock in enumerate([{}, {"mode": "async"}, {"mode": "async", **quiet}]):
        out, _ = run(tmp_path, f"clocked{i}", execution=execution, clock=clock)
        assert table(out) == table(plain), clock
        assert table(out, "peers.csv") == table(plain, "peers.csv")
    rolled, _ = run(tmp_path, "roll")  # the fast kernel: the same to rounding
    np.testing.assert_allclose(numbers(rolled), numbers(plain), rtol=1e-5, atol=1e-6)


def test_clocked_run_is_the_same_under_every_strategy_and_after_resume(
    tmp_path, monkeypatch
):
    vmap, s = run(tmp_path, "vmap", clock=EVENTFUL, execution={"strategy": "vmap"})
    got = table(vmap)
    times = [float(r["virtual_time"]) for r in got]
    assert times == [2.0, 4.0]  # 4 ticks of 0.5 s per chunk
    active = [float(r["active_peers"]) for r in got]
    assert all(0 < a < 8 for a in active)  # some peers are busy or down
    mapped, _ = run(
        tmp_path,
        "map",
        clock=EVENTFUL,
        execution={"strategy": "map", "peers_per_chunk": 3},
    )
    np.testing.assert_allclose(numbers(mapped), numbers(vmap), rtol=2e-5, atol=1e-6)
    again, _ = run(tmp_path, "again", clock=EVENTFUL, execution={"strategy": "vmap"})
    assert table(again) == got

    real_save = runner.save_checkpoint

    def killed(run_dir, round_, *args, **kwargs):
        saved = real_save(run_dir, round_, *args, **kwargs)
        if round_ == 4:
            raise KeyboardInterrupt
        return saved

    path = write_scenario(
        tmp_path, **{**BASE, "clock": EVENTFUL, "execution": {"strategy": "vmap"}}
    )
    monkeypatch.setattr(runner, "save_checkpoint", killed)
    with pytest.raises(WorkbenchError, match="interrupted"):
        runner.run(str(path), [], out=str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(runner, "save_checkpoint", real_save)
    runner.run(None, [], resume=str(tmp_path / "cut"), progress=False)
    assert table(tmp_path / "cut") == got


def test_fedbuff_with_the_whole_cohort_is_fedavg(tmp_path):
    avg, _ = run(
        tmp_path, "avg", algorithm={"name": "fedavg", "weighting": "uniform", "lr": 0.1}
    )
    buff, _ = run(
        tmp_path, "buff", algorithm={"name": "fedbuff", "buffer": 8, "lr": 0.1}
    )
    a, b = numbers(avg), numbers(buff)
    cols = list(table(avg)[0])
    for name in (
        "test_acc_mean",
        "test_loss_mean",
        "averaged_model_acc",
        "train_loss_mean",
    ):
        i = cols.index(name)
        np.testing.assert_allclose([r[i] for r in b], [r[i] for r in a], rtol=1e-5)
    sent = cols.index("bytes_sent_total")  # the same messages: models both ways
    assert [r[sent] for r in b] == [r[sent] for r in a]


def test_dcasgd_without_delay_and_asgd_are_sgd(tmp_path):
    one = {"peers": 1, "topology": {"name": "complete"}}
    sgd = {"lr": 0.1, "momentum": 0.0}
    ref, _ = run(tmp_path, "fedavg", algorithm={"name": "fedavg", **sgd}, **one)
    for name in ("asgd", "dcasgd"):
        out, _ = run(tmp_path, name, algorithm={"name": name, **sgd}, **one)
        np.testing.assert_allclose(numbers(out), numbers(ref), rtol=1e-6, atol=1e-7)


def quadratic_loss(params, batch):
    return 0.5 * jnp.sum((params - batch) ** 2)


def test_dcasgd_compensates_the_delay_per_worker():
    lam, lr = 0.04, 0.5
    alg = asgd(quadratic_loss, optax.sgd(lr), compensation=lam)
    w0 = jnp.array([1.0, -2.0])
    s = alg.server.init(w0, 3)
    s, _ = alg.server.send(s, jnp.array([True, True, False]))  # 0, 1 pull w0
    g0, g1 = jnp.array([0.5, 1.0]), jnp.array([-1.0, 2.0])
    s = alg.server.receive(s, g0, 0)  # no delay for worker 0: plain SGD
    w1 = w0 - lr * g0
    np.testing.assert_allclose(s.params, w1)
    s, _ = alg.server.send(s, jnp.array([True, False, False]))  # 0 pulls w1
    s = alg.server.receive(s, g1, 1)  # worker 1 computed g1 at w0; w moved to w1
    w2 = w1 - lr * (g1 + lam * g1 * g1 * (w1 - w0))
    np.testing.assert_allclose(s.params, w2, rtol=1e-6)
    s, reply = alg.server.send(s, jnp.array([False, True, False]))
    np.testing.assert_allclose(s.backup[1], w2)  # worker 1's w_bak is what it pulled
    np.testing.assert_allclose(s.backup[0], w1)
    np.testing.assert_allclose(s.backup[2], w0)
    np.testing.assert_allclose(reply, w2, rtol=1e-6)
    assert int(s.version) == 2


def test_fedasync_mixes_by_staleness_and_fedbuff_waits_for_k():
    alg = fedasync(quadratic_loss, optax.sgd(0.1), alpha=0.5, power=1.0)
    s = alg.server.init(jnp.zeros(2), 4)
    s = alg.server.receive(
        s, alg.server.send(s, None)[1]._replace(params=jnp.ones(2)), 0
    )
    np.testing.assert_allclose(s.params, [0.5, 0.5])  # staleness 0: a = alpha
    old = s._replace(params=jnp.full(2, 3.0), version=jnp.int32(0))
    s = alg.server.receive(s._replace(version=jnp.int32(3)), old, 1)  # staleness 3
    a = 0.5 * (3 + 1) ** -1.0
    np.testing.assert_allclose(s.params, (1 - a) * 0.5 + a * 3.0, rtol=1e-6)
    buff = fedbuff(quadratic_loss, optax.sgd(0.1), buffer=3, server_lr=0.5)
    s = buff.server.init(jnp.zeros(2), 4)
    for k, delta in enumerate([1.0, 2.0, 6.0]):
        s = buff.server.receive(s, jnp.full(2, delta), k)
        want = 0.0 if k < 2 else 0.5 * 9.0 / 3
        np.testing.assert_allclose(s.params, want)
    assert int(s.count) == 0 and int(s.version) == 1


def test_adpsgd_does_not_wait_for_the_straggler(tmp_path):
    slow = {"compute": {"name": "constant"}, "stragglers": {"peers": [3], "factor": 10}}
    sgd = {"lr": 0.05, "momentum": 0.0}
    sync, _ = run(
        tmp_path, "sync", clock=slow, rounds=4, eval_every=4,
        algorithm={"name": "dsgd", **sgd},
    )  # fmt: skip
    asy, summary = run(
        tmp_path, "async", clock={**slow, "mode": "async"}, rounds=12, eval_every=12,
        algorithm={"name": "adpsgd", **sgd},
    )  # fmt: skip
    s, a = table(sync)[-1], table(asy)[-1]
    assert float(s["virtual_time"]) == 40.0  # 4 rounds of the 10 s straggler
    assert float(a["virtual_time"]) == 12.0  # 12 ticks of 1 s
    assert {r["virtual_time"] for r in table(asy, "peers.csv")} == {"12.0"}
    # the straggler's first step ends at 10 s (tick 9); the others every tick
    assert float(a["active_peers"]) == pytest.approx(7 + 1 / 12, abs=1e-4)
    assert float(a["test_acc_mean"]) > float(s["test_acc_mean"])
    clock = summary["clock"]
    assert (clock["steps_per_peer_min"], clock["steps_per_peer_max"]) == (1, 12)
    assert clock["steps_per_peer_mean"] == (7 * 12 + 1) / 8
    assert clock["virtual_time"] == 12.0 and clock["ring_depth"] == 1
    from paper_figures.plot_runs import load_curve
    from paper_figures.plot_runs import main as plot_main

    fig = tmp_path / "stragglers.png"
    assert plot_main([str(sync), str(asy), "--x", "virtual_time", "-o", str(fig)]) == 0
    assert fig.read_bytes()[:4] == b"\x89PNG"
    assert load_curve(sync)["virtual_time"].tolist() == [40.0]


@pytest.mark.parametrize(
    ("changes", "key", "says"),
    [
        (
            {"clock": {"mode": "async", "timeout": 2.0}},
            "clock",
            "'timeout' is for mode: sync",
        ),
        ({"clock": {"compute": {"name": "gamma"}}}, "clock.compute.name", "gamma"),
        (
            {"clock": {"compute": {"name": "sleep", "factor": -1}}},
            "clock.compute.factor",
            "greater than or equal",
        ),
        (
            {"clock": {"stragglers": {"factor": 2}}},
            "clock.stragglers",
            "either 'fraction' or 'peers'",
        ),
        ({"clock": {"link": {"loss": 1.0}}}, "clock.link.loss", "less than 1"),
        (
            {"clock": {"faults": {"schedule": [{"peer": 1, "at": 3.0, "until": 2.0}]}}},
            "clock.faults.schedule",
            "must be after",
        ),
    ],
)
def test_bad_clock_section_is_one_line_naming_the_key(tmp_path, changes, key, says):
    path = write_scenario(tmp_path, **{**BASE, **changes})
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert e.value.path.startswith(key) and says in str(e.value)
    assert "\n" not in str(e.value)


def test_what_the_clock_cannot_run_is_refused_in_one_line(tmp_path, capsys):
    cases = [
        (
            {"clock": {"faults": {"schedule": [{"peer": 9, "at": 1.0}]}}},
            "peer 9 out of range for 8 peers",
        ),
        (
            {
                "clock": {"mode": "async"},
                "algorithm": {"name": "multi_gossip", "gossip_steps": 2, "lr": 0.1},
            },
            "needs mode: sync",
        ),
        (
            {"clock": {}, "privacy": {"victims": 1}},
            "does not capture runs on the virtual clock",
        ),
        (
            {
                "algorithm": {"name": "adpsgd", "lr": 0.1},
                "topology": {"name": "one_peer_exponential"},
            },
            "needs a static graph",
        ),
    ]
    for changes, says in cases:
        path = write_scenario(tmp_path, **{**BASE, **changes})
        assert (
            main(["simulate", str(path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, err
    with pytest.raises(WorkbenchError, match="cluster nodes run in real time"):
        from workbench.cluster.launch import launch_local

        path = write_scenario(tmp_path, **{**BASE, "clock": {}})
        launch_local(str(path), [], 2, out=str(tmp_path / "c"))


def test_trace_file_drives_the_step_times(tmp_path):
    trace = tmp_path / "steps.csv"
    rows = [[1.0] * 8, [3.0] * 7 + [1.0]]  # step 2 of every peer but 7 takes 3 s
    trace.write_text("\n".join(",".join(map(str, r)) for r in rows))
    clock = {"compute": {"name": "trace", "file": str(trace)}}
    sc = load_scenario(write_scenario(tmp_path, **{**BASE, "clock": clock}))
    sim = build(sc)
    state, traffic = sim.chunk(
        sim.state, sim.data, sim.topology.data, sim.weights, jnp.int32(0), length=4
    )
    assert jax.device_get(traffic.time).tolist() == [1.0, 4.0, 5.0, 8.0]


def test_readme_clock_example_is_a_valid_clock_section():
    import re
    from pathlib import Path

    import yaml

    from workbench.scenario.clock import ClockConfig
    from workbench.scenario.yaml_io import _Loader

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(clock:\n.*?)```", readme, flags=re.DOTALL).group(1)
    cfg = ClockConfig.model_validate(yaml.load(block, Loader=_Loader)["clock"])
    assert cfg.link.bandwidth == 1.0e6  # YAML 1.2 floats: 1.0e6 is not a string
    assert cfg.faults.schedule[0].until == 30.0


def test_async_client_cycle_is_its_step_plus_upload_and_download(tmp_path):
    # a step of 1 s plus 2 x 0.25 s latency: every client uploads every 1.5 s,
    # i.e. in ticks 2, 5, 8, 11 of 0.5 s
    clock = {"mode": "async", "tick": 0.5, "link": {"latency": 0.25}}
    out, _ = run(
        tmp_path, clock=clock, rounds=12, eval_every=12,
        algorithm={"name": "fedbuff", "buffer": 8, "lr": 0.1},
    )  # fmt: skip
    (row,) = table(out)
    assert float(row["active_peers"]) == pytest.approx(32 / 12, abs=1e-4)
    assert float(row["virtual_time"]) == 6.0
