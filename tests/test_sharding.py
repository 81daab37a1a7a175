"""Peer-axis sharding (execution.devices): the same numbers as one device, the
state really split over the devices, and one-line errors for bad settings.

The sharded runs need several devices: they run in a subprocess with the CPU
split into four (XLA_FLAGS is read once, when JAX starts).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from workbench.engine import build
from workbench.errors import ScenarioError
from workbench.scenario import load_scenario
from workbench.sharding import resolve_devices

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "scenarios" / "quickstart.yaml")

# Runs each case with devices 1 and 4 and prints what the test checks as JSON.
SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from workbench.checkpoint import latest_good
from workbench.engine import build
from workbench.errors import ScenarioError
from workbench.results import read_csv
from workbench.runner import _initial, simulate
from workbench.scenario import load_scenario

TINY = [
    "peers=8", "rounds=4", "eval_every=2", "data.batch_size=8",
    "model.hidden=[8]", "evaluation.test_samples=128",
]
# a dynamic graph (sampled in the chunk) and an algorithm with two state parts
DYNAMIC = [
    "topology.name=random_matching",
    "algorithm={name: gradient_tracking, lr: 0.05}",
]
quickstart, tmp = sys.argv[1], Path(tempfile.mkdtemp())
out = {"local_devices": jax.local_device_count()}


def devices_of(tree):
    return sorted({len(a.sharding.device_set) for a in jax.tree.leaves(tree)})


def split(tree):
    specs = {getattr(a.sharding, "spec", None) for a in jax.tree.leaves(tree)}
    return specs == {PartitionSpec("peers")}


def run(devices):
    sim = build(load_scenario(quickstart, TINY + [f"execution.devices={devices}"]))
    run_dir = tmp / str(devices)
    run_dir.mkdir()
    summary = simulate(sim, run_dir, progress=False)
    restored, _ = _initial(sim, latest_good(run_dir))
    return {
        "params": [np.asarray(p) for p in jax.tree.leaves(sim.state.params)],
        "restored": [np.asarray(p) for p in jax.tree.leaves(restored.params)],
        "rows": read_csv(run_dir / "metrics.csv"),
        "devices": summary["execution"].get("devices", 1),
        "state_devices": devices_of(sim.state),
        "state_split": split(sim.state),
        "data_devices": devices_of((sim.data, sim.eval_data.train, sim.eval_data.val)),
        "data_split": split((sim.data, sim.eval_data.train, sim.eval_data.val)),
        "restored_devices": devices_of(restored),
        "restored_split": split(restored),
    }


def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def rows_diff(a, b):
    assert len(a) == len(b) and a[0].keys() == b[0].keys()
    worst = 0.0
    for x, y in zip(a, b):
        for key in x:
            if key != "wall_time":
                worst = max(worst, abs(float(x[key]) - float(y[key])))
    return worst


def chunk(devices):
    # one chunk of the dynamic case, called directly (no evaluation)
    overrides = TINY + DYNAMIC + [f"execution.devices={devices}"]
    sim = build(load_scenario(quickstart, overrides))
    args = (sim.data, sim.topology.data, sim.weights)
    state, traffic = sim.chunk(sim.state, *args, jnp.int32(0), length=3)
    leaves = [np.asarray(p) for p in jax.tree.leaves(state)]
    return leaves, np.asarray(traffic.sent), devices_of(state), split(state)


one, four = run(1), run(4)
keep = ("devices", "split")
out["static"] = {
    "params_diff": max_diff(one["params"], four["params"]),
    "restored_diff": max_diff(four["params"], four["restored"]),
    "rows_diff": rows_diff(one["rows"], four["rows"]),
    "rows": len(four["rows"]),
    **{f"one_{k}": v for k, v in one.items() if k.endswith(keep)},
    **{f"four_{k}": v for k, v in four.items() if k.endswith(keep)},
}
(one, sent1, *_), (four, sent4, *placed) = chunk(1), chunk(4)
out["dynamic"] = {
    "state_diff": max_diff(one, four),
    "sent_equal": bool(np.array_equal(sent1, sent4)),
    "four_state_devices": placed[0],
    "four_state_split": placed[1],
}
try:
    build(load_scenario(quickstart, TINY + ["execution.devices=3"]))
except ScenarioError as e:
    out["uneven"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sharded():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
        "--xla_backend_optimization_level=1",
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, QUICKSTART],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_devices_give_the_numbers_of_one(sharded):
    assert sharded["local_devices"] == 4
    got = sharded["static"]
    assert got["rows"] == 2
    assert got["params_diff"] < 1e-5
    assert got["rows_diff"] < 1e-5
    # one device: nothing split; four: state, data and the peers' eval sets split
    assert got["one_devices"] == 1 and got["one_state_devices"] == [1]
    assert got["four_devices"] == 4
    for what in ("state", "data", "restored"):
        assert got[f"four_{what}_devices"] == [4], what
        assert got[f"four_{what}_split"], what
    # a restored checkpoint goes back onto the mesh, with the run's final values
    assert got["restored_diff"] == 0.0


def test_a_dynamic_graph_and_gradient_tracking_split_too(sharded):
    got = sharded["dynamic"]
    assert got["state_diff"] < 1e-5 and got["sent_equal"]
    assert got["four_state_devices"] == [4] and got["four_state_split"]


def test_uneven_split_is_one_line(sharded):
    assert sharded["uneven"] == (
        "execution.devices: 8 peers do not split evenly over 3 devices; "
        "use a divisor of 8 (or auto)"
    )


def test_resolve_devices():
    assert resolve_devices(None, 16, available=4) == 1
    assert resolve_devices(1, 16, available=1) == 1
    assert resolve_devices(4, 16, available=4) == 4
    assert resolve_devices("auto", 16, available=4) == 4
    assert resolve_devices("auto", 6, available=4) == 3
    assert resolve_devices("auto", 7, available=4) == 1
    assert resolve_devices("auto", 2, available=8) == 2
    with pytest.raises(ScenarioError, match="16 peers do not split evenly over 3"):
        resolve_devices(3, 16, available=4)


def test_more_devices_than_available_is_one_line():
    asked = jax.local_device_count() + 1
    scenario = load_scenario(QUICKSTART, [f"execution.devices={asked}"])
    with pytest.raises(ScenarioError) as info:
        build(scenario)
    message = str(info.value)
    assert message.startswith(
        f"execution.devices: {asked} devices asked, {asked - 1} available"
    )
    if jax.default_backend() == "cpu":
        assert message.endswith(
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={asked}"
        )
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "autox", "2.5"])
def test_bad_devices_values_are_one_line(value):
    with pytest.raises(ScenarioError) as info:
        load_scenario(QUICKSTART, [f"execution.devices={value}"])
    assert str(info.value).startswith(
        "execution.devices: expected an int >= 1 or 'auto', got"
    )
