"""Dynamic topologies: period products, sampled rounds, kernels, no recompilation.

Compilations dominate the runtime here, so every sampler is used at n = 16,
seed 0 and 16 sampled rounds: ``sample_rounds`` then hits the jit cache that
``build_topology``'s diagnostics already filled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from workbench.comm import KERNEL_NAMES, Roll, Table, mix
from workbench.comm.host import to_host
from workbench.errors import ScenarioError
from workbench.rounds import TOPOLOGY, round_key
from workbench.topology import TOPOLOGIES, Periodic, build_topology
from workbench.topology.base_k import base_graph
from workbench.topology.build import SAMPLED_ROUNDS
from workbench.topology.diagnostics import dynamic_info, sample_rounds

N = 16


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


def _key(t, seed=0):
    """The key the run (and so ``sample_rounds``) draws round t's topology from."""
    return round_key(seed, jnp.int32(t), TOPOLOGY)


def _rounds(spec, n=N, seed=0, count=SAMPLED_ROUNDS):
    """Host W_0 .. W_{count-1} of a topology (keys round_key(seed, t, TOPOLOGY))."""
    built = TOPOLOGIES.build(spec, "topology", n=n, seed=0)
    if isinstance(built, Periodic):
        return [built.Ws[t % len(built.Ws)].toarray() for t in range(count)]
    return [W.toarray() for W in sample_rounds(built.at, built.data, n, seed, count)]


def _product(Ws):
    P = np.eye(Ws[0].shape[0])
    for W in Ws:
        P = W @ P
    return P


def test_one_peer_exponential_period_product_is_j_for_powers_of_two():
    for n in (8, 16, 32):
        topo = build_topology({"name": "one_peer_exponential"}, n, 0, kernel="roll")
        tau = topo.info["period"]
        assert tau == int(np.log2(n)) and isinstance(topo.data, Roll)
        Ws = [W.toarray() for W in sample_rounds(topo.at, topo.data, n, 0, tau)]
        np.testing.assert_allclose(_product(Ws), np.full((n, n), 1 / n), atol=1e-12)
        assert topo.info["product_rho"] < 1e-12 and topo.info["rho"] < 1e-3
    six = TOPOLOGIES.build({"name": "one_peer_exponential"}, "topology", n=6, seed=0)
    P = _product([W.toarray() for W in six.Ws])
    assert len(six.Ws) == 3 and np.abs(P - 1 / 6).max() > 0.05


@pytest.mark.parametrize("k", [1, 2, 3])
def test_base_k_period_product_is_j_for_any_n(k):
    for n in (2, 5, 6, 7, 12, 25, 30):
        Ws = TOPOLOGIES.build({"name": "base_k", "k": k}, "topology", n=n, seed=0).Ws
        P = _product([W.toarray() for W in Ws])
        np.testing.assert_allclose(P, np.full((n, n), 1 / n), atol=1e-12)
        for W in Ws:
            W = W.toarray()
            np.testing.assert_allclose(W, W.T)
            np.testing.assert_allclose(W.sum(1), 1)
            assert ((W != 0).sum(1) - 1).max() <= k  # max degree k
        assert len(Ws) <= 2 * np.log(n) / np.log(k + 1) + 2  # the paper's bound
    assert len(base_graph(6, 1)) == 4  # Base-2 graph on 6 nodes: 4 rounds


def test_base_k_device_stack_reaches_the_exact_average():
    topo = build_topology({"name": "base_k", "k": 2}, 10, 0)
    assert topo.info["product_rho"] < 1e-12 and topo.info["degree_max"] <= 2
    x = jnp.arange(10.0)
    step = jax.jit(lambda d, t, x: mix(topo.at(d, t, None), x))
    for t in range(topo.info["period"]):
        x = step(topo.data, jnp.int32(t), x)
    np.testing.assert_allclose(x, np.full(10, 4.5), atol=1e-5)


def test_el_local_drifts_the_mean_while_el_oracle_keeps_it():
    x = np.random.default_rng(0).standard_normal(N)
    for W in _rounds({"name": "el_oracle", "s": 2}):
        np.testing.assert_allclose(W.sum(0), 1, atol=1e-6)  # doubly stochastic
        assert abs((W @ x).mean() - x.mean()) < 1e-6
        assert set((W > 0).sum(1)) == {3} and set((W > 0).sum(0)) == {3}
    drift = []
    for W in _rounds({"name": "el_local", "s": 2}):
        np.testing.assert_allclose(W.sum(1), 1, atol=1e-6)  # row-stochastic
        assert (((W > 0) & ~np.eye(N, dtype=bool)).sum(0) == 2).all()  # sends to 2
        drift.append(abs((W @ x).mean() - x.mean()))
    assert max(drift) > 1e-2
    assert not build_topology({"name": "el_local", "s": 2}, N, 0).info[
        "doubly_stochastic"
    ]
    with pytest.raises(ScenarioError, match="row-stochastic"):
        build_topology({"name": "el_local"}, N, 0, require_doubly_stochastic=True)


def test_random_round_structure():
    for W in _rounds({"name": "peer_sampler", "d": 3}):
        np.testing.assert_allclose(W, W.T)
        assert set((W > 0).sum(1)) == {4} and np.allclose(W[W > 0], 1 / 4)
    for M in _rounds({"name": "random_matching"}):
        np.testing.assert_allclose(M, M.T)
        assert set((M > 0).sum(1)) == {2}  # a perfect matching: self + one peer
    for U in _rounds({"name": "ou_equidyn"}):
        np.testing.assert_allclose(U, U.T, atol=1e-7)
        assert ((U > 0).sum(1) <= 2).all() and U.diagonal().min() > 0.5 - 1e-6
    for D in _rounds({"name": "od_equidyn"}):
        np.testing.assert_allclose(D.sum(0), 1, atol=1e-6)
        off = 0.5 * (N - 1) / N  # eta (n-1)/n to one random peer
        assert np.allclose(np.sort(D, axis=1)[:, -2:], [off, 1 - off], atol=1e-6)
    odd = _rounds({"name": "random_matching"}, n=7, count=1)[0]
    assert sorted((odd > 0).sum(1)) == [1] + [2] * 6  # one peer sits out


def test_link_failures_keep_w_doubly_stochastic():
    p = 0.3
    kept = []
    for W in _rounds({"name": "link_failures", "p": p}, n=64):
        np.testing.assert_allclose(W, W.T)
        np.testing.assert_allclose(W.sum(0), 1, atol=1e-6)
        kept.append(((W > 0).sum() - 64) / (2 * 64))
    assert abs(np.mean(kept) - (1 - p)) < 0.05
    ring = build_topology({"name": "ring"}, N, 0).W
    none = _rounds({"name": "link_failures", "p": 0.0})[0]
    np.testing.assert_allclose(none, ring, atol=1e-7)


def test_dynamic_graphs_are_deterministic_in_the_seed():
    for spec in (
        {"name": "peer_sampler"},
        {"name": "el_local", "s": 2},
        {"name": "ou_equidyn"},
        {"name": "link_failures", "p": 0.3},
    ):
        a, b, c = (_rounds(spec, seed=s, count=SAMPLED_ROUNDS) for s in (0, 0, 1))
        np.testing.assert_array_equal(np.stack(a), np.stack(b))
        assert not np.array_equal(np.stack(a), np.stack(c)), spec["name"]
        assert not np.array_equal(a[0], a[1]), spec["name"]  # a new graph per round
    a = build_topology({"name": "peer_sampler"}, N, seed=5)
    assert a.info == build_topology({"name": "peer_sampler"}, N, seed=5).info


DYNAMIC = [
    ({"name": "one_peer_exponential"}, "roll"),
    ({"name": "base_k", "k": 2}, "table"),
    ({"name": "od_equidyn"}, "roll"),
    ({"name": "ou_equidyn"}, "table"),
    ({"name": "peer_sampler", "d": 3}, "table"),
    ({"name": "random_matching"}, "table"),
    ({"name": "el_oracle", "s": 2}, "table"),
    ({"name": "el_local", "s": 2}, "segment"),
    ({"name": "link_failures", "graph": {"name": "torus"}}, "table"),
    (
        {
            "name": "file_sequence",
            "paths": ["topologies/ring16.edges", "topologies/torus16.edges"],
        },
        "table",
    ),
    # kernel overrides: in-jit conversions of each native kind
    ({"name": "one_peer_exponential"}, "segment"),
    ({"name": "peer_sampler", "d": 3}, "segment"),
    ({"name": "el_local", "s": 2}, "dense"),
]


@pytest.mark.parametrize(
    "spec,kernel", DYNAMIC, ids=[f"{s['name']}-{k}" for s, k in DYNAMIC]
)
def test_dynamic_mix_equals_dense_w_t_without_retracing(spec, kernel):
    """at(data, t, key) then mix == W_t x, one trace for all rounds."""
    topo = build_topology(spec, N, seed=0, kernel=kernel)
    assert topo.kernel == kernel and topo.W is None and topo.info["dynamic"]
    traces = []

    @jax.jit
    def step(data, t, key, x):
        traces.append(1)
        arrays = topo.at(data, t, key)
        return arrays, mix(arrays, x)

    x = {"a": jax.random.normal(jax.random.key(2), (N, 3)), "b": jnp.arange(N * 1.0)}
    native = _rounds(spec)  # count 16: the jit cache of build_topology
    for t in range(4):
        arrays, out = step(topo.data, jnp.int32(t), _key(t), x)
        assert isinstance(arrays, KERNEL_NAMES[kernel])
        W = to_host(arrays, N).toarray()
        np.testing.assert_allclose(W, native[t], atol=1e-6)  # same W_t as native
        for leaf, ref in zip(jax.tree.leaves(out), jax.tree.leaves(x), strict=True):
            np.testing.assert_allclose(leaf, np.tensordot(W, ref, axes=1), atol=2e-5)
    assert len(traces) == 1


RANDOM = [
    {"name": "peer_sampler", "d": 3},
    {"name": "el_local", "s": 2},
    {"name": "od_equidyn"},
    {"name": "link_failures", "p": 0.3},
]


@pytest.mark.parametrize("spec", RANDOM, ids=[s["name"] for s in RANDOM])
def test_diagnostics_describe_the_rounds_the_run_trains_on(spec):
    """Diagnosed W_t == the run's ``at(data, t, round_key(seed, t, TOPOLOGY))``."""
    seed = 3
    topo = build_topology(spec, N, seed)

    @jax.jit
    def run_at(data, t):  # as workbench.rounds.make_round: seed static, t traced
        return topo.at(data, t, round_key(seed, t, TOPOLOGY))

    run = [
        to_host(run_at(topo.data, jnp.int32(t)), N).toarray()
        for t in range(SAMPLED_ROUNDS)
    ]
    diagnosed = _rounds(spec, seed=seed)
    for t in range(SAMPLED_ROUNDS):
        np.testing.assert_allclose(diagnosed[t], run[t], atol=1e-6, err_msg=str(t))
    expected = dynamic_info([sp.csr_array(W) for W in run], seed)
    for name, value in expected.items():
        assert topo.info[name] == pytest.approx(value, rel=1e-5), name
    assert topo.info["rho"] == pytest.approx(expected["contraction"], rel=1e-5)


def test_sampler_kernel_override_errors():
    with pytest.raises(ScenarioError, match="segment arrays") as err:
        build_topology({"name": "el_local", "s": 2}, N, 0, kernel="table")
    assert err.value.path == "execution.kernel"


def test_roll_shift_is_traced_for_one_peer_exponential():
    topo = build_topology({"name": "one_peer_exponential"}, 32, 0)
    assert topo.kernel == "roll"
    arrays = jax.jit(topo.at)(topo.data, jnp.int32(6), None)
    assert sorted(np.asarray(arrays.shifts).tolist()) == [0, 2]  # 2^(6 mod 5)
    assert isinstance(build_topology({"name": "peer_sampler"}, 64, 0).data, tuple)
    assert build_topology({"name": "peer_sampler"}, 64, 0).kernel == "table"
    assert Table  # the sampler's native kernel


def test_dynamic_diagnostics():
    info = build_topology({"name": "peer_sampler", "d": 3}, N, 0).info
    assert info["period"] is None and 0 < info["contraction"] < 1
    assert info["rho"] == info["contraction"]
    assert (info["degree_min"], info["degree_max"]) == (3, 3)
    ring = build_topology({"name": "ring"}, N, 0).info["rho"]
    assert info["round_rho_mean"] < ring  # a random 3-regular graph mixes faster


def test_dynamic_errors():
    cases = [
        ({"name": "peer_sampler", "d": 3}, 15, "topology.d"),
        ({"name": "el_oracle", "s": 16}, 16, "topology.s"),
        ({"name": "link_failures", "p": 1.5}, 16, "topology.p"),
        (
            {"name": "link_failures", "graph": {"name": "random_regular", "d": 3}},
            15,
            "topology.graph.d",
        ),
        (
            {
                "name": "link_failures",
                "graph": {"name": "exponential", "weights": "uniform"},
            },
            16,
            "topology.graph",
        ),
        (
            {"name": "link_failures", "graph": {"name": "peer_sampler"}},
            16,
            "topology.graph",
        ),
        ({"name": "od_equidyn", "eta": 0.0}, 16, "topology.eta"),
        ({"name": "base_k", "k": 0}, 16, "topology.k"),
    ]
    for spec, n, path in cases:
        with pytest.raises(ScenarioError) as err:
            build_topology(spec, n, 0)
        assert err.value.path == path, spec
