"""Local-step throughput: the engine's lifted step vs a per-peer loop vs one model.

Run (not part of the default suite; ~15 min on the 2-core CPU), unchanged on a
GPU::

    python -m pytest tests/benchmarks/bench_engine.py --benchmark-enable \\
        -o addopts="" -p no:cacheprovider -s

One local SGD step (batch 32 per peer, synthetic data) of logistic regression
(784 -> 62), the MLP (784-200-200-10 on 28x28x1), the FEMNIST CNN (62 classes)
and the GroupNorm ResNet-20 (32x32x3),
for 16, 64 and 256 peers on the CPU (the ResNet: 16 and 64) and 16, 256 and 1024
on an accelerator, three ways:

- ``engine``: the workbench's own step: ``dsgd(...).local`` lifted over the
  peers under ``jax.jit`` with the stacked state donated, the model as the
  registry builds it. Lifted as ``strategy: auto`` runs it: every candidate
  of :func:`workbench.tuning.tuning_candidates` is timed (two steps after a
  warm-up) and the fastest kept; ``extra_info`` has each one's ms per step.
  It returns the new state; the outbox (the same parameters, for ATC) is
  dropped, as the engine's exchange consumes it inside the same jit.
- ``loop``: the reference baseline, a Python loop calling one jitted (donated)
  per-peer step n times: ``value_and_grad`` + the same optax update.
- ``summed``: one model, one step of that reference step on the summed batch
  (32 n examples): what the hardware does without per-peer weights.

A step whose XLA memory estimate exceeds the default memory budget (90% of the
device's memory) is not run: the engine leaves that candidate out, as ``auto``
does, and a loop or summed step that cannot fit gets its table row saying how
much it needs. ``extra_info`` of each case: ``ms_per_step`` (median),
``peer_steps_per_s``, ``gflops`` (n x ``flops_per_peer_step``, the XLA
cost-analysis FLOPs of the single-peer reference step, over the median time;
the same useful work for the three variants; the convolutions' patches +
matmul count the SAME padding's zeros) and ``frac_of_matmul`` (that over a
2048^3 float32 matmul's FLOP/s, measured in the same session). The last case
prints the table with the ratios engine/loop and engine/summed of peer-steps/s
(> 1: the engine is faster).
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from workbench.algorithms import dsgd
from workbench.execution import lift
from workbench.models import build_model, init_params
from workbench.objective import Batch, make_loss
from workbench.planner import memory_budget, strategy_name
from workbench.tuning import Trial, pick, tuning_candidates

BATCH = 32
LR = 0.05
MODELS = {  # name -> (model section, input shape, classes)
    "logistic": ({"name": "logistic"}, (28, 28, 1), 62),
    "mlp": ({"name": "mlp", "hidden": [200, 200]}, (28, 28, 1), 10),
    "cnn": ({"name": "cnn"}, (28, 28, 1), 62),
    "resnet": ({"name": "resnet", "depth": 20}, (32, 32, 3), 10),
}
ON_GPU = jax.default_backend() != "cpu"
# peers per model: the sizes on an accelerator; on the 2-core CPU the
# ResNet stops at 64 (256 peers would take minutes per step)
NS = {m: (16, 256, 1024) if ON_GPU else (16, 64, 256) for m in MODELS}
if not ON_GPU:
    NS["resnet"] = (16, 64)
VARIANTS = ("engine", "loop", "summed")
ROUNDS = {  # timed steps per case, by model and peers (one warm-up besides)
    "logistic": {16: 30, 64: 20, 256: 10, 1024: 10},
    "mlp": {16: 30, 64: 20, 256: 10, 1024: 10},
    "cnn": {16: 7, 64: 5, 256: 2, 1024: 5},
    "resnet": {16: 3, 64: 2, 256: 5, 1024: 3},
}
CASES = [(m, n, v) for m in MODELS for n in NS[m] for v in VARIANTS]
RESULTS: dict = {}  # (model, n, variant) -> extra_info
KEY = jax.random.key(0, impl="philox2x32")  # threefry compiles slowly on CPU
BUDGET = memory_budget(None)  # a step whose XLA estimate exceeds it is not run


class DoesNotFit(Exception):
    """A step's XLA estimate is over BUDGET (the message says by how much)."""


@pytest.fixture(scope="session")
def matmul_flops() -> float:
    """FLOP/s of a 2048^3 float32 matmul (median of 5), the machine's peak."""
    a = jax.random.normal(jax.random.key(1), (2048, 2048), jnp.float32)
    mm = jax.jit(jnp.matmul).lower(a, a).compile()
    jax.block_until_ready(mm(a, a))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(mm(a, a))
        times.append(time.perf_counter() - start)
    return 2 * 2048**3 / statistics.median(times)


def _model(name: str):
    spec, shape, classes = MODELS[name]
    model = build_model(spec, classes, shape)
    return lambda params, x: model.apply({"params": params}, x), model


def _batches(name: str, n: int) -> Batch:
    """(n, 1, BATCH, *shape) synthetic images and labels: one step per peer."""
    _, shape, classes = MODELS[name]
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 1, BATCH, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=(n, 1, BATCH)).astype(np.int32)
    return Batch(jnp.asarray(x), jnp.asarray(y), jnp.ones((n, 1, BATCH), jnp.float32))


def _params(name: str, n: int):
    """n copies of one initialization, stacked: leaves (n, ...)."""
    _, model = _model(name)
    params = init_params(model, MODELS[name][1], KEY)
    return jax.tree.map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), params)


def _reference_step(name: str):
    """``step(params, opt_state, batch) -> (params, opt_state)`` for one model."""
    apply_fn, _ = _model(name)
    loss_fn, opt = make_loss(apply_fn), optax.sgd(LR)

    def step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step, opt


def _fits(compiled) -> int:
    """XLA's peak estimate of ``compiled``; DoesNotFit over the budget."""
    m = compiled.memory_analysis()
    need = 0 if m is None else m.argument_size_in_bytes + m.temp_size_in_bytes
    if BUDGET is not None and need > BUDGET.bytes:
        raise DoesNotFit(f"needs {need / 2**30:.1f} GiB, over {BUDGET.source}")
    return need


def _engine(name: str, n: int, strategy=None):
    """The workbench's lifted D-SGD local step over the stacked state, lifted
    as ``strategy: auto`` would run it: each candidate timed on two steps
    (after a warm-up), the fastest kept (:func:`workbench.tuning.pick`)."""
    if strategy is None:
        return _tuned(name, n)
    apply_fn, _ = _model(name)
    algorithm = dsgd(make_loss(apply_fn), optax.sgd(LR))
    local = lambda state, batches, key: algorithm.local(state, batches, None, key)
    lifted = lift(local, *strategy)
    step = jax.jit(lambda s, b, k: lifted(s, b, k)[0], donate_argnums=0)
    keys = jax.random.split(KEY, n)
    state = [jax.jit(jax.vmap(algorithm.init))(_params(name, n), keys)]
    batches = _batches(name, n)
    compiled = step.lower(state[0], batches, keys).compile()
    need = _fits(compiled)

    def run():
        state[0] = compiled(state[0], batches, keys)
        return jax.block_until_ready(state[0])

    run.estimate_bytes = need
    return run


def _tuned(name: str, n: int):
    trials, runs, over = [], {}, []
    for strategy in tuning_candidates(n):
        try:
            run = runs[strategy] = _engine(name, n, strategy)
        except DoesNotFit as e:
            over.append(f"{strategy_name(strategy)} {e}")
            continue
        run()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        trials.append(Trial(strategy, min(times), 0.0, run.estimate_bytes))
    if not trials:
        raise DoesNotFit("; ".join(over))
    best = pick(trials)
    chosen = runs[best.strategy]
    chosen.strategy = best.strategy
    chosen.trials = {
        strategy_name(t.strategy): 1e3 * t.seconds_per_round for t in trials
    }
    return chosen


def _loop(name: str, n: int):
    """A Python loop over n per-peer states, one jitted donated step each."""
    step, opt = _reference_step(name)
    stacked, batches = _params(name, n), _batches(name, n)
    peer = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    states = [(peer(stacked, i), opt.init(peer(stacked, i))) for i in range(n)]
    data = [jax.tree.map(lambda a, i=i: a[i, 0], batches) for i in range(n)]
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*states[0], data[0])
    compiled = compiled.compile()
    _fits(compiled)

    def run():
        for i in range(n):
            states[i] = compiled(*states[i], data[i])
        return jax.block_until_ready(states)

    return run


def _summed(name: str, n: int):
    """One model, one reference step on the n batches concatenated."""
    step, opt = _reference_step(name)
    params = jax.tree.map(lambda a: a[0], _params(name, 1))
    batch = jax.tree.map(
        lambda a: a.reshape(n * BATCH, *a.shape[3:]), _batches(name, n)
    )
    state = [(params, opt.init(params))]
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state[0], batch).compile()
    _fits(compiled)

    def run():
        state[0] = compiled(*state[0], batch)
        return jax.block_until_ready(state[0])

    return run


BUILDERS = {"engine": _engine, "loop": _loop, "summed": _summed}


@functools.cache
def _peer_step_flops(name: str) -> float:
    """XLA cost-analysis FLOPs of the single-peer reference step."""
    step, opt = _reference_step(name)
    params = jax.tree.map(lambda a: a[0], _params(name, 1))
    batch = jax.tree.map(lambda a: a[0, 0], _batches(name, 1))
    compiled = jax.jit(step).lower(params, opt.init(params), batch).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize(
    "name,n,variant", CASES, ids=[f"{m}-{n}-{v}" for m, n, v in CASES]
)
def test_local_step(benchmark, matmul_flops, name, n, variant):
    try:
        run = BUILDERS[variant](name, n)
    except DoesNotFit as e:  # reported in the table, not timed
        RESULTS[(name, n, variant)] = {"does_not_fit": str(e)}
        return
    benchmark.group = f"{name}-{n}"
    benchmark.pedantic(run, rounds=ROUNDS[name][n], iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    flops = n * _peer_step_flops(name) / seconds
    info = {
        "flops_per_peer_step": _peer_step_flops(name),
        "ms_per_step": 1e3 * seconds,
        "peer_steps_per_s": n / seconds,
        "gflops": flops / 1e9,
        "frac_of_matmul": flops / matmul_flops,
        "matmul_gflops": matmul_flops / 1e9,
        "lift": strategy_name(run.strategy) if variant == "engine" else variant,
    }
    if variant == "engine":
        info["trials_ms_per_step"] = run.trials
    benchmark.extra_info.update(info)
    RESULTS[(name, n, variant)] = info


def test_variants_compute_the_same_step():
    """Engine and loop take the same step (n = 3, fresh states; not timed)."""
    for name in MODELS:
        n = 3
        engine, loop = _engine(name, n, ("vmap", None)), _loop(name, n)
        stacked = engine().params
        per_peer = [params for params, _ in loop()]
        for i in range(n):
            got = jax.tree.map(lambda a, i=i: a[i], stacked)
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                got,
                per_peer[i],
            )


def test_summary(capsys):
    """Prints the table: ms/step, peer-steps/s, GFLOP/s, fraction of matmul."""
    lines = [
        "",
        f"{'model':8s} {'n':>4s} {'variant':10s} {'ms/step':>9s} {'peer-st/s':>10s} "
        f"{'GFLOP/s':>8s} {'of mm':>6s}  ratio (engine speed / this)",
    ]
    for name, n, variant in CASES:
        info = RESULTS.get((name, n, variant))
        if info is None:
            continue
        if "does_not_fit" in info:
            lines.append(f"{name:8s} {n:4d} {variant:10s} {info['does_not_fit']}")
            continue
        engine = RESULTS.get((name, n, "engine"))
        if engine and "does_not_fit" in engine:
            engine = None
        ratio = (
            f"{engine['peer_steps_per_s'] / info['peer_steps_per_s']:.2f}"
            if engine and variant != "engine"
            else ""
        )
        lines.append(
            f"{name:8s} {n:4d} {info['lift']:10s} {info['ms_per_step']:9.1f} "
            f"{info['peer_steps_per_s']:10.1f} {info['gflops']:8.1f} "
            f"{info['frac_of_matmul']:6.2f}  {ratio}"
        )
    timed = [
        info["matmul_gflops"] for info in RESULTS.values() if "matmul_gflops" in info
    ]
    if timed:
        lines.append(f"2048^3 float32 matmul: {timed[0]:.1f} GFLOP/s")
    with capsys.disabled():
        print("\n".join(lines))
