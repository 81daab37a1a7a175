"""Whole rounds (local step + exchange + combine): the edge methods against D-SGD.

Run (not part of the default suite; ~2 min on the 2-core CPU)::

    python -m pytest tests/benchmarks/bench_rounds.py --benchmark-enable \\
        -o addopts="" -p no:cacheprovider -s

The FEMNIST CNN (62 classes, 28x28x1), 16 peers on a ring, batch 32,
synthetic data, one gradient per round, all peers under one vmap: a jitted
chunk of ROUNDS rounds of ``dsgd`` (the baseline), ``pdmm_sgd`` and
``admm_sgd`` (ECL: per-edge duals, interval 1 so every edge swaps every round:
the most exchange work) and ``pdmm_isvr`` (round-robin, interval 10). The last
case prints ms per round and the ratio to D-SGD; ECL's duals are extra memory
traffic (two (k, P) arrays per peer), not extra gradients.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.benchmarks.bench_engine import KEY
from workbench.algorithms import ALGORITHMS
from workbench.comm import from_matrix
from workbench.execution import lift
from workbench.models import build_model, init_params
from workbench.objective import make_loss
from workbench.optim import local_optimizer
from workbench.rounds import PeerData, RoundSpec, init_state, make_chunk

N, BATCH, ROUNDS, REPEATS = 16, 32, 5, 3
SHAPE, CLASSES = (28, 28, 1), 62
ALGORITHMS_TIMED = {
    "dsgd": {"name": "dsgd"},
    "pdmm_sgd": {"name": "pdmm_sgd", "interval": 1},
    "admm_sgd": {"name": "admm_sgd", "interval": 1},
    "pdmm_isvr": {"name": "pdmm_isvr"},
}
RESULTS: dict = {}


def ring(n: int) -> np.ndarray:
    W = np.eye(n) / 3
    for i in range(n):
        W[i, (i + 1) % n] = W[i, (i - 1) % n] = 1 / 3
    return W


def setup(spec: dict):
    model = build_model({"name": "cnn"}, CLASSES, SHAPE)
    apply_fn = lambda params, x: model.apply({"params": params}, x)  # noqa: E731
    alg = ALGORITHMS.build(
        spec,
        "algorithm",
        loss_fn=make_loss(apply_fn),
        optimizer=local_optimizer(lr=0.05),
    )
    rspec = RoundSpec(alg, lambda d, t, k: d, lambda f: lift(f, "vmap", None), N, BATCH)
    rng = np.random.default_rng(0)
    data = PeerData(
        jnp.asarray(rng.normal(size=(N, 256, *SHAPE)).astype(np.float32)),
        jnp.asarray(rng.integers(0, CLASSES, size=(N, 256)).astype(np.int32)),
        jnp.full((N,), 256, jnp.int32),
    )
    params = init_params(model, SHAPE, KEY)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (N, *p.shape)), params)
    topo = from_matrix("roll", ring(N))
    keys = jax.random.split(KEY, N)
    state = init_state(rspec, 0, stacked, keys, topo)
    return make_chunk(rspec, 0), state, data, topo


def time_chunk(benchmark, chunk, state, args, rounds: int, repeats: int = REPEATS):
    """Seconds of ``repeats`` calls of a chunk of ``rounds`` rounds (after one
    warm-up), the state carried from call to call; one more for ``benchmark``."""
    box = [jax.block_until_ready(chunk(state, *args, jnp.int32(0), length=rounds)[0])]

    def one():
        box[0] = jax.block_until_ready(
            chunk(box[0], *args, jnp.int32(0), length=rounds)[0]
        )

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one()
        times.append(time.perf_counter() - start)
    benchmark.pedantic(one, rounds=1, iterations=1)
    return times


@pytest.mark.parametrize("name", list(ALGORITHMS_TIMED))
def test_round(benchmark, name):
    chunk, state, data, topo = setup(ALGORITHMS_TIMED[name])
    times = time_chunk(benchmark, chunk, state, (data, topo, jnp.ones((N,))), ROUNDS)
    RESULTS[name] = 1000 * statistics.median(times) / ROUNDS
    benchmark.extra_info["ms_per_round"] = RESULTS[name]


def test_summary(capsys):
    base = RESULTS.get("dsgd")
    lines = ["", f"{'algorithm':10s} {'ms/round':>9s} {'÷ dsgd':>7s}"]
    for name, ms in RESULTS.items():
        ratio = f"{ms / base:7.2f}" if base else ""
        lines.append(f"{name:10s} {ms:9.1f} {ratio}")
    with capsys.disabled():
        print("\n".join(lines))
