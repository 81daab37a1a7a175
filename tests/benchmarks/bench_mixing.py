"""Mixing throughput: every kernel x n peers for a 100k-parameter float32 model.

Run (not part of the default suite)::

    python -m pytest tests/benchmarks/bench_mixing.py --benchmark-enable \\
        -p no:cacheprovider -o addopts=""

Cases: ring (circulant), random 6-regular (bounded degree) and complete graphs
at n in {64, 256, 1024, 4096}, each with the kernels that make sense at that
size (dense only while n^2 x 100k flops stays affordable, scatter-based
segment up to 1024 peers), plus ``auto`` (``choose_kernel``), and dynamic
topologies against a static one of the same degree. The last case prints a
summary: medians, the auto/best ratio and the dynamic/static ratio.
"""

import jax
import jax.numpy as jnp
import pytest

from workbench.comm import choose_kernel, from_matrix, mix
from workbench.topology import build_topology, static_at
from workbench.topology.base import circulant

# An MLP-shaped pytree of 99,932 float32 parameters per peer.
SHAPES = {"w1": (300, 300), "b1": (300,), "w2": (300, 32), "b2": (32,)}
ROUNDS = {64: 30, 256: 15, 1024: 5, 4096: 3}
RESULTS: dict = {}  # (group, n, case) -> median seconds


def _kernels(graph: str, n: int) -> list[str]:
    sparse = {"ring": ["roll", "table"], "regular6": ["table"]}.get(graph, ["mean"])
    small = {"complete": 64}.get(graph, 1024)  # table/segment of J: n^2 rows
    return (
        sparse
        + (["table", "segment"] if graph == "complete" and n <= small else [])
        + (["segment"] if graph != "complete" and n <= small else [])
        + (["dense"] if n <= 256 else [])
        + ["auto"]
    )


SPECS = {
    "ring": {"name": "ring"},
    "regular6": {"name": "random_regular", "d": 6},
    "complete": {"name": "complete"},
}
CASES = [
    (g, n, k) for g in SPECS for n in (64, 256, 1024, 4096) for k in _kernels(g, n)
]


def _params(n: int):
    key = jax.random.key(0)
    return {
        name: jax.random.normal(jax.random.fold_in(key, i), (n, *shape), jnp.float32)
        for i, (name, shape) in enumerate(SHAPES.items())
    }


STEP = jax.jit(mix)


def _run(benchmark, fn, args, n, key):
    jax.block_until_ready(fn(*args))  # compile
    benchmark.pedantic(
        lambda: jax.block_until_ready(fn(*args)), rounds=ROUNDS[n], warmup_rounds=1
    )
    RESULTS[key] = benchmark.stats.stats.median


@pytest.mark.parametrize(
    "graph,n,kernel", CASES, ids=[f"{g}-{n}-{k}" for g, n, k in CASES]
)
def test_mix(benchmark, graph, n, kernel):
    W = build_topology(SPECS[graph], n, seed=0).W
    chosen = choose_kernel(W) if kernel == "auto" else kernel
    benchmark.group = f"{graph}-{n}"
    benchmark.extra_info["kernel"] = chosen
    _run(benchmark, STEP, (from_matrix(chosen, W), _params(n)), n, (graph, n, kernel))
    if kernel == "auto":
        RESULTS[(graph, n, "auto-kernel")] = chosen


def _step(at):
    return jax.jit(lambda data, t, key, x: mix(at(data, t, key), x))


DYNAMIC = [
    (
        "peer_sampler_d4",
        {"name": "peer_sampler", "d": 4},
        {"name": "random_regular", "d": 4},
    ),
    ("one_peer_exponential", {"name": "one_peer_exponential"}, None),
]
DYN_CASES = [
    (d, n, kind) for d in DYNAMIC for n in (256, 1024) for kind in ("dynamic", "static")
]


@pytest.mark.parametrize(
    "case,n,kind", DYN_CASES, ids=[f"{c[0]}-{n}-{k}" for c, n, k in DYN_CASES]
)
def test_dynamic_vs_static(benchmark, case, n, kind):
    """A dynamic round (sample W_t in jit + mix) vs a static graph of its degree."""
    name, dynamic, static = case
    if kind == "dynamic":
        topo = build_topology(dynamic, n, seed=0)
        at, data = topo.at, topo.data
    elif static is not None:
        topo = build_topology(static, n, seed=0, kernel="table")
        at, data = static_at, topo.data
    else:  # one peer at a fixed offset: (I + P)/2 on the roll kernel
        at, data = static_at, from_matrix("roll", circulant(n, {0: 0.5, 1: 0.5}))
    benchmark.group = f"dynamic-{name}-{n}"
    step = _step(at)
    counter = iter(range(10**6))

    def one_round(data, x):
        t = next(counter)
        key = jax.random.fold_in(jax.random.key(0), t)
        return step(data, jnp.int32(t), key, x)

    _run(benchmark, one_round, (data, _params(n)), n, (name, n, kind))


def test_summary(capsys):
    """Prints medians (ms), auto/best and dynamic/static ratios.

    ``ratio`` = time of the chosen kernel / time of the fastest kernel, the
    chosen kernel's time being the better of its own case and the auto case
    (two measurements of the same kernel).
    """
    lines = [
        "",
        "graph      n     "
        + " ".join(
            f"{k:>9s}" for k in ("mean", "roll", "table", "segment", "dense", "auto")
        )
        + "  choice  ratio",
    ]
    for graph in SPECS:
        for n in (64, 256, 1024, 4096):
            row = {k: RESULTS.get((graph, n, k)) for k in _kernels(graph, n)}
            if None in row.values():
                continue
            best = min(v for k, v in row.items() if k != "auto")
            cells = " ".join(
                f"{1e3 * row[k]:9.1f}" if k in row else f"{'-':>9s}"
                for k in ("mean", "roll", "table", "segment", "dense", "auto")
            )
            choice = RESULTS[(graph, n, "auto-kernel")]
            chosen = min(row["auto"], row.get(choice, row["auto"]))  # same kernel
            lines.append(f"{graph:9s} {n:5d} {cells}  {choice:7s} {chosen / best:.2f}")
    for name, *_ in DYNAMIC:
        for n in (256, 1024):
            dyn, sta = (
                RESULTS.get((name, n, "dynamic")),
                RESULTS.get((name, n, "static")),
            )
            if dyn and sta:
                lines.append(
                    f"{name} n={n}: dynamic {1e3 * dyn:.1f} ms, static "
                    f"{1e3 * sta:.1f} ms, ratio {dyn / sta:.2f}"
                )
    with capsys.disabled():
        print("\n".join(lines))
