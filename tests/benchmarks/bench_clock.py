"""What the virtual clock costs per round: clocked chunks against the plain one.

Run (not part of the default suite; ~1 min on the 2-core CPU)::

    python -m pytest tests/benchmarks/bench_clock.py --benchmark-enable \\
        -o addopts="" -p no:cacheprovider -s

The quickstart's shapes (16 peers on a ring, the MLP 64-64-10 on 8x8
inputs, batch 16, D-SGD with one step per round, all peers under one vmap),
synthetic data, a jitted chunk of ROUNDS rounds: ``plain`` (no clock, the
roll kernel), ``plain_table`` (the neighbour-table kernel the clock mixes
with), ``sync`` (a barrier: constant speeds), ``sync_stragglers``
(lognormal speeds and a 10x straggler: still a barrier), ``timeout`` (a 2 s
timeout, loss 5%), ``async`` (ticks, latency 2 s: the ring of past
messages) and ``faults`` (random crashes and rejoins). The last case prints
ms per round and the ratio to ``plain``; the issue's bound for a clocked
synchronous scenario is 1.3x.
"""

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.benchmarks.bench_engine import KEY
from tests.benchmarks.bench_rounds import ring, time_chunk
from workbench.algorithms import ALGORITHMS
from workbench.clock import build_clock, init_clocked
from workbench.comm import from_matrix
from workbench.execution import lift
from workbench.models import build_model, init_params
from workbench.objective import make_loss
from workbench.optim import local_optimizer
from workbench.rounds import PeerData, RoundSpec, init_state, make_chunk
from workbench.scenario.clock import ClockConfig

N, BATCH, ROUNDS, REPEATS = 16, 16, 200, 5
SHAPE, CLASSES = (8, 8, 1), 10
LOGNORMAL = {"compute": {"name": "lognormal", "sigma": 0.3}}
CASES = {
    "plain": ("roll", None),
    "plain_table": ("table", None),
    "sync": ("roll", {}),
    "sync_stragglers": (
        "roll",
        {**LOGNORMAL, "stragglers": {"peers": [3], "factor": 10}},
    ),
    "timeout": ("roll", {**LOGNORMAL, "timeout": 2.0, "link": {"loss": 0.05}}),
    "async": ("roll", {"mode": "async", "link": {"latency": 2.0}}),
    "faults": ("roll", {"faults": {"crash_rate": 0.01, "rejoin_rate": 0.1}}),
}
RESULTS: dict = {}


def setup(kernel: str, clock: dict | None):
    model = build_model({"name": "mlp", "hidden": [64, 64]}, CLASSES, SHAPE)
    apply_fn = lambda params, x: model.apply({"params": params}, x)  # noqa: E731
    alg = ALGORITHMS.build(
        {"name": "dsgd"},
        "algorithm",
        loss_fn=make_loss(apply_fn),
        optimizer=local_optimizer(lr=0.05, momentum=0.9),
    )
    vmap = lambda f: lift(f, "vmap", None)  # noqa: E731
    rspec = RoundSpec(alg, lambda d, t, k: d, vmap, N, BATCH)
    rng = np.random.default_rng(0)
    data = PeerData(
        jnp.asarray(rng.normal(size=(N, 128, *SHAPE)).astype(np.float32)),
        jnp.asarray(rng.integers(0, CLASSES, size=(N, 128)).astype(np.int32)),
        jnp.full((N,), 128, jnp.int32),
    )
    params = init_params(model, SHAPE, KEY)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (N, *p.shape)), params)
    topo = from_matrix(kernel, ring(N))
    state = init_state(rspec, 0, stacked, jax.random.split(KEY, N), topo)
    if clock is not None:
        bits = 32.0 * sum(p.size for p in jax.tree.leaves(params))
        cfg = ClockConfig.model_validate(clock)
        rspec = rspec._replace(
            clock=build_clock(cfg, alg, "dsgd", N, 0, bits, bits, {})
        )
        state = init_clocked(rspec, 0, state, data, topo)
    return make_chunk(rspec, 0), state, data, topo


@pytest.mark.parametrize("name", list(CASES))
def test_clocked_round(benchmark, name):
    chunk, state, data, topo = setup(*CASES[name])
    args = (data, topo, jnp.ones((N,)))
    times = time_chunk(benchmark, chunk, state, args, ROUNDS, REPEATS)
    RESULTS[name] = 1000 * min(times) / ROUNDS
    benchmark.extra_info["ms_per_round"] = RESULTS[name]
    benchmark.extra_info["ms_per_round_median"] = (
        1000 * statistics.median(times) / ROUNDS
    )


def test_summary(capsys):
    base = RESULTS.get("plain")
    lines = ["", f"{'case':16s} {'ms/round':>9s} {'÷ plain':>8s}"]
    for name, ms in RESULTS.items():
        ratio = f"{ms / base:8.2f}" if base else ""
        lines.append(f"{name:16s} {ms:9.3f} {ratio}")
    with capsys.disabled():
        print("\n".join(lines))
