"""Static topologies: closed-form spectra, weights, validation errors, registry."""

import json
import math

import jax
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from workbench.errors import ScenarioError
from workbench.topology import TOPOLOGIES, WEIGHTS, build_topology, diagnostics
from workbench.topology.diagnostics import spectral, static_info
from workbench.topology.weights import adjacency, validate


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


def _log2(n):
    return math.ceil(math.log2(n))


# rho = ||W - J||_2 with Metropolis-Hastings weights: closed forms in n, and
# SPEC_TABLE, the values at n = 16, 64, 256 to the digits tabulated.
CLOSED_FORMS = {
    "ring": lambda n: 1 / 3 + 2 / 3 * math.cos(2 * math.pi / n),
    "torus": lambda n: 1 - 0.4 * (1 - math.cos(2 * math.pi / math.isqrt(n))),
    "star": lambda n: 1 - 1 / n,
    "complete": lambda n: 0.0,
    "hypercube": lambda n: (_log2(n) - 1) / (_log2(n) + 1),
    "exponential": lambda n: 1 - 2 / (1 + _log2(n)),
}
SPEC_TABLE = {
    "ring": (0.949, 0.9968, 0.99980),
    "torus": (0.600, 0.883, 0.970),
    "star": (0.9375, 0.984, 0.996),
    "complete": (0, 0, 0),
    "hypercube": (0.600, 0.714, 0.778),
    "exponential": (0.600, 0.714, 0.778),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_rho_matches_closed_forms_and_the_spec_table(name):
    for n, table in zip((16, 64, 256), SPEC_TABLE[name], strict=True):
        info = build_topology({"name": name}, n, seed=0).info
        assert info["rho"] == pytest.approx(CLOSED_FORMS[name](n), abs=1e-9)
        assert round(info["rho"], 3) == round(table, 3)
        assert info["spectral_gap"] == pytest.approx(1 - info["rho"], abs=1e-12)
        assert info["doubly_stochastic"]


def test_static_diagnostics_of_the_ring():
    info = build_topology({"name": "ring"}, 16, seed=0).info
    assert info["num_edges"] == 16 and info["diameter"] == 8
    assert (info["degree_min"], info["degree_mean"], info["degree_max"]) == (2, 2, 2)
    assert info["lambda2_I_minus_W"] == pytest.approx(
        2 / 3 * (1 - math.cos(math.pi / 8))
    )
    assert not info["dynamic"] and info["symmetric"] and not info["directed"]
    exp = build_topology({"name": "exponential"}, 16, seed=0).info
    assert exp["directed"] and exp["num_edges"] == 16 * 4 and exp["diameter"] == 4


def test_spectral_paths_agree():
    """FFT (circulant), dense and sparse (Lanczos) estimates of rho agree."""
    W = build_topology({"name": "torus", "rows": 4, "cols": 8}, 32, 0).W
    dense = spectral(sp.csr_array(W))
    sparse = diagnostics._sparse_spectral(sp.csr_array(W), symmetric=True)
    assert dense == pytest.approx(sparse, abs=1e-8)
    ring = sp.csr_array(build_topology({"name": "ring"}, 32, 0).W)
    fft = spectral(ring)
    assert fft == pytest.approx(diagnostics._dense_spectral(ring.toarray(), True))


def test_info_is_json_serializable():
    for spec in ({"name": "star"}, {"name": "erdos_renyi"}, {"name": "d_equistatic"}):
        info = build_topology(spec, 32, 0).info
        assert json.loads(json.dumps(info)) == info


def _W(spec, n=12):
    return sp.csr_array(TOPOLOGIES.build(spec, "topology", n=n, seed=0).W).toarray()


def test_weight_rules_on_the_star():
    n = 6
    mh = _W({"name": "star"}, n)
    assert mh[0, 1] == pytest.approx(1 / n) and mh[1, 1] == pytest.approx(1 - 1 / n)
    md = _W({"name": "star", "weights": "max_degree"}, n)
    L = nx.laplacian_matrix(nx.star_graph(n - 1)).toarray()
    np.testing.assert_allclose(md, np.eye(n) - L / n)
    uni = _W({"name": "star", "weights": "uniform"}, n)
    np.testing.assert_allclose(uni.sum(1), 1)
    assert uni[0, 0] == pytest.approx(1 / n) and uni[1, 0] == pytest.approx(1 / 2)
    assert not np.allclose(uni.sum(0), 1)  # row-stochastic only
    lazy = _W({"name": "star", "lazy": True}, n)
    np.testing.assert_allclose(lazy, (np.eye(n) + mh) / 2)


def test_metropolis_equals_max_degree_on_regular_graphs():
    for spec in (
        {"name": "random_regular", "d": 3},
        {"name": "torus", "rows": 3, "cols": 4},
    ):
        mh = _W(spec)
        md = _W({**spec, "weights": "max_degree"})
        np.testing.assert_allclose(mh, md)
        np.testing.assert_allclose(mh, mh.T)


def test_registered_names():
    assert {"metropolis", "max_degree", "uniform"} <= set(WEIGHTS)
    expected = {
        "ring",
        "torus",
        "complete",
        "star",
        "hypercube",
        "exponential",
        "erdos_renyi",
        "random_regular",
        "small_world",
        "base_k",
        "u_equistatic",
        "d_equistatic",
        "file",
        "file_sequence",
        "user",
        "one_peer_exponential",
        "od_equidyn",
        "ou_equidyn",
        "peer_sampler",
        "random_matching",
        "el_oracle",
        "el_local",
        "link_failures",
    }
    assert expected <= set(TOPOLOGIES)


def test_random_static_graphs_are_deterministic_in_the_seed():
    for spec in (
        {"name": "erdos_renyi"},
        {"name": "random_regular", "d": 4},
        {"name": "small_world", "k": 4, "p": 0.3},
        {"name": "d_equistatic"},
        {"name": "u_equistatic", "M": 2},
    ):
        a, b, c = (
            TOPOLOGIES.build(spec, "topology", n=32, seed=s).W for s in (0, 0, 1)
        )
        assert abs(a - b).max() == 0
        assert abs(a - c).max() > 0, spec["name"]


def test_equistatic_weights():
    W = _W({"name": "d_equistatic", "M": 3}, n=10)
    np.testing.assert_allclose(W.sum(0), 1)
    np.testing.assert_allclose(W.sum(1), 1)
    assert W[0, 0] == pytest.approx(1 / 10)
    U = _W({"name": "u_equistatic", "M": 3}, n=10)
    np.testing.assert_allclose(U, U.T)
    assert U[0, 0] == pytest.approx(1 / 10)


def test_erdos_renyi_default_p_and_connectivity():
    G = TOPOLOGIES.build({"name": "erdos_renyi"}, "topology", n=64, seed=3).graph
    assert nx.is_connected(G)
    p = 2 * math.log(64) / 64
    assert abs(G.number_of_edges() / (64 * 63 / 2) - p) < 0.05


ERRORS = [
    ({"name": "random_regular", "d": 3}, 15, "topology.d", "n\\*d"),
    ({"name": "random_regular", "d": 20}, 15, "topology.d", "d < n"),
    ({"name": "erdos_renyi", "p": 0.01}, 40, "topology.p", "disconnected"),
    ({"name": "hypercube"}, 12, "topology", "power of 2"),
    ({"name": "torus"}, 12, "topology.rows", "square"),
    ({"name": "torus", "rows": 5}, 12, "topology.rows", "5 x 2"),
    ({"name": "nope"}, 8, "topology.name", "did you mean|expected one of"),
    ({"name": "ring", "d": 2}, 8, "topology.d", "unknown key"),
    ({"name": "ring", "weights": "metro"}, 8, "topology.weights", "metropolis"),
    (
        {"name": "exponential", "weights": "metropolis"},
        8,
        "topology.weights",
        "undirected",
    ),
    ({"name": "small_world", "k": 1}, 8, "topology.k", "2 <= k"),
    ({"name": "user", "fn": "networkx:empty_graph"}, 8, "topology", "disconnected"),
]


@pytest.mark.parametrize(
    "spec,n,path,message", ERRORS, ids=[e[0]["name"] + "-" + e[2] for e in ERRORS]
)
def test_user_errors_are_one_line_scenario_errors(spec, n, path, message):
    with pytest.raises(ScenarioError, match=message) as err:
        build_topology(spec, n, seed=0)
    assert err.value.path == path
    assert "\n" not in str(err.value)


def test_doubly_stochastic_requirement():
    with pytest.raises(ScenarioError, match="not doubly stochastic") as err:
        build_topology(
            {"name": "star", "weights": "uniform"}, 8, 0, require_doubly_stochastic=True
        )
    assert err.value.path == "topology.weights"
    build_topology({"name": "star"}, 8, 0, require_doubly_stochastic=True)
    with pytest.raises(ScenarioError, match="row-stochastic"):
        validate(sp.csr_array(np.full((3, 3), 0.5)), False)


def test_kernel_override():
    topo = build_topology({"name": "ring"}, 64, 0, kernel="segment")
    assert topo.kernel == "segment" and topo.info["kernel"] == "segment"
    with pytest.raises(ScenarioError, match="circulant") as err:
        build_topology({"name": "star"}, 64, 0, kernel="roll")
    assert err.value.path == "execution.kernel"
    with pytest.raises(ScenarioError, match="expected one of"):
        build_topology({"name": "ring"}, 64, 0, kernel="fast")


def test_static_topology_contract():
    topo = build_topology({"name": "random_regular", "d": 4}, 20, seed=1)
    assert topo.n == 20 and isinstance(topo.W, np.ndarray)
    assert topo.at(topo.data, 7, None) is topo.data
    info = static_info(topo.W)
    assert info["rho"] == pytest.approx(topo.info["rho"])
    A = adjacency(nx.cycle_graph(5), 5)
    assert A.nnz == 10 and A.diagonal().sum() == 0
