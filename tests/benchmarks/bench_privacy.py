"""The privacy stage's cost: 16 victims x 10 rounds of the quickstart model.

Run (not part of the default suite; ~1 min on the 2-core CPU)::

    python -m pytest tests/benchmarks/bench_privacy.py --benchmark-enable \\
        -o addopts="" -p no:cacheprovider -s

The quickstart scenario (16 peers on a ring, the digits MLP) runs one chunk of
10 rounds that captures every peer's message every round (160 messages), then
each attack runs on that record as the run's privacy stage does after a chunk:
the evaluation tables (every message on every pool example, vmapped over
messages and examples), then the attack's scores and one metrics row per
message. ``rmia`` also trains its 16 shadows (vmapped, one jit) per attacked
round. ``extra_info``: messages, seconds per message.
"""

import jax.numpy as jnp
import pytest

from workbench.engine import build
from workbench.scenario import load_scenario

ROUNDS, ATTACKS = 10, ["threshold", "linkability", "threshold_class", "rmia"]


@pytest.fixture(scope="module")
def captured():
    sc = load_scenario(
        "scenarios/quickstart.yaml",
        [
            f"rounds={ROUNDS}",
            f"eval_every={ROUNDS}",
            "privacy={victims: all, every: 1, save_messages: false}",
        ],
    )
    sim = build(sc)
    _, _, buf = sim.chunk(
        sim.state, sim.data, sim.topology.data, sim.weights, jnp.int32(0), length=ROUNDS
    )
    return sim.attacker, sim.attacker.record(buf)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack(benchmark, captured, attack):
    attacker, rec = captured
    spec = [{"name": attack, "steps": 50}] if attack == "rmia" else [attack]
    attacker.attack([rec], spec)  # compile
    result = benchmark.pedantic(
        attacker.attack, args=([rec], spec), rounds=3, iterations=1
    )
    assert result.messages == 16 * ROUNDS
    benchmark.extra_info["messages"] = result.messages
    benchmark.extra_info["seconds_per_message"] = (
        benchmark.stats.stats.median / result.messages
    )
