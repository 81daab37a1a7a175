"""Mixing kernels: every kernel == the dense W, conversions, kernel choice, traces."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from workbench.comm import (
    Dense,
    Mean,
    Roll,
    Segment,
    Table,
    choose_kernel,
    convert,
    from_matrix,
    kernel_name,
    mix,
)
from workbench.comm.host import to_host
from workbench.comm.kernels import as_table
from workbench.topology import TOPOLOGIES
from workbench.topology.weights import adjacency, metropolis


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


def _W(name, n=24, **kw):
    spec = {"name": name, **kw}
    return TOPOLOGIES.build(spec, "topology", n=n, seed=0).W.toarray()


N = 24
FAMILIES = {
    "ring": _W("ring"),
    "torus": _W("torus", rows=4, cols=6),
    "star": _W("star"),
    "exponential": _W("exponential"),
    "erdos_renyi": _W("erdos_renyi"),
    "random_regular": _W("random_regular", d=5),
    "small_world_uniform": _W("small_world", weights="uniform"),
    "complete": _W("complete"),
    "u_equistatic": _W("u_equistatic"),
}
CIRCULANT = {"ring", "exponential", "complete", "u_equistatic"}
WIDTH = {"roll": N, "table": N, "segment": N * N}  # one shape, one compilation


def _tree(n, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (n, 3, 2)), "b": jax.random.normal(k2, (n,))}


MIX = jax.jit(mix)
DENSE = jax.jit(convert, static_argnums=(1, 2))


def _reference(W, tree):
    W = np.asarray(sp.csr_array(W).toarray(), np.float64)
    return jax.tree.map(
        lambda x: np.tensordot(W, np.asarray(x, np.float64), axes=1), tree
    )


def _kernels_for(name):
    return (
        ["dense", "table", "segment"]
        + (["roll"] if name in CIRCULANT else [])
        + (["mean"] if name == "complete" else [])
    )


CASES = [(name, k) for name in FAMILIES for k in _kernels_for(name)]


@pytest.mark.parametrize("name,kernel", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_every_kernel_equals_dense(name, kernel):
    W = FAMILIES[name]
    n = W.shape[0]
    tree = _tree(n)
    arrays = from_matrix(kernel, W, WIDTH.get(kernel))
    out = MIX(arrays, tree)
    ref = _reference(W, tree)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-6)
    assert kernel_name(arrays) == kernel
    np.testing.assert_allclose(to_host(arrays, n).toarray(), W, atol=1e-7)
    np.testing.assert_allclose(DENSE(arrays, "dense", n).W, W, atol=1e-7)


def test_sparse_and_dense_host_matrices_agree():
    W = FAMILIES["random_regular"]
    for kernel in ("table", "segment", "dense"):
        a = from_matrix(kernel, W)
        b = from_matrix(kernel, sp.csr_array(W))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_width_padding_keeps_the_result():
    W = FAMILIES["ring"]
    x = _tree(24)
    ref = MIX(from_matrix("dense", W), x)
    for kernel, width in (("roll", 5), ("table", 6), ("segment", 100)):
        padded = from_matrix(kernel, W, width)
        assert jax.tree.leaves(padded)[0].shape[-1 if kernel != "table" else 1] == width
        for a, b in zip(
            jax.tree.leaves(MIX(padded, x)), jax.tree.leaves(ref), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=2e-6)
    with pytest.raises(ValueError, match="width"):
        from_matrix("table", W, 2)


def test_table_column_zero_is_self():
    W = FAMILIES["star"]
    table = from_matrix("table", W)
    np.testing.assert_array_equal(table.idx[:, 0], np.arange(24))
    np.testing.assert_allclose(table.weight[:, 0], np.diag(W), atol=1e-7)


def test_conversions_agree():
    n = 24
    roll = from_matrix("roll", FAMILIES["exponential"])
    x = _tree(n)
    ref = MIX(roll, x)["w"]
    for target in ("table", "segment", "dense"):
        out = DENSE(roll, target, n)
        assert isinstance(
            out, {"table": Table, "segment": Segment, "dense": Dense}[target]
        )
        np.testing.assert_allclose(MIX(out, x)["w"], ref, atol=2e-6)
    np.testing.assert_allclose(convert(Mean(), "dense", 4).W, np.full((4, 4), 0.25))
    with pytest.raises(ValueError, match="cannot convert"):
        convert(from_matrix("segment", FAMILIES["star"]), "table", n)


@pytest.mark.parametrize("kernel", ["mean", "dense", "segment", "roll", "table"])
def test_every_kernel_converts_to_a_table_with_self_first(kernel):
    n = 6
    ring = (np.eye(n) + np.roll(np.eye(n), 1, 1) + np.roll(np.eye(n), -1, 1)) / 3
    W = np.full((n, n), 1 / n) if kernel == "mean" else ring
    table = as_table(from_matrix(kernel, W), n)
    np.testing.assert_array_equal(np.asarray(table.idx)[:, 0], np.arange(n))
    dense = np.zeros((n, n))
    np.add.at(dense, (np.arange(n)[:, None], np.asarray(table.idx)), table.weight)
    np.testing.assert_allclose(dense, W, atol=1e-7)


def test_mean_and_roll_reject_other_matrices():
    with pytest.raises(ValueError, match="mean"):
        from_matrix("mean", FAMILIES["ring"])
    with pytest.raises(ValueError, match="circulant"):
        from_matrix("roll", FAMILIES["star"])


def test_choose_kernel_by_structure():
    assert choose_kernel(_W("complete", n=64)) == "mean"
    assert choose_kernel(_W("ring", n=8)) == "roll"
    assert choose_kernel(_W("ring", n=64)) == "roll"
    assert choose_kernel(_W("exponential", n=256)) == "roll"
    assert choose_kernel(_W("random_regular", n=64, d=6)) == "table"
    assert choose_kernel(_W("torus", n=1024)) == "table"
    assert choose_kernel(_W("erdos_renyi", n=64, p=0.6)) == "dense"  # dense graph
    assert choose_kernel(_W("star", n=64)) == "dense"  # a hub: matmul at small n
    assert choose_kernel(_W("star", n=1024)) == "segment"  # ... scatter at large n


def test_consensus_rate_on_the_ring_with_every_kernel():
    """SPEC 5.1: ||x_50|| / ||x_0|| = l2^50 = 0.0739775, mean kept to 1e-6."""
    n = 16
    W = _W("ring", n=n)
    x0 = jnp.cos(2 * jnp.pi * jnp.arange(n) / n)
    run = jax.jit(lambda a, x: jax.lax.fori_loop(0, 50, lambda _, y: mix(a, y), x))
    for kernel in ("dense", "roll", "table", "segment"):
        x50 = run(from_matrix(kernel, W), x0)
        ratio = float(jnp.linalg.norm(x50) / jnp.linalg.norm(x0))
        assert abs(ratio - 0.0739775) < 1e-6, kernel
        assert abs(float(jnp.mean(x50))) < 1e-6


def test_no_retrace_across_static_graphs_of_the_same_shape():
    traces = []

    @jax.jit
    def step(arrays, x):
        traces.append(1)
        return mix(arrays, x)

    x = jnp.ones((32, 4))
    for seed in range(3):
        G = nx.random_regular_graph(4, 32, seed=seed)
        W = _metropolis(G)
        np.testing.assert_allclose(step(from_matrix("table", W), x), x, atol=1e-6)
    assert len(traces) == 1
    step(Roll(jnp.array([0, 1]), jnp.array([0.5, 0.5])), x)
    step(Roll(jnp.array([0, 5]), jnp.array([0.5, 0.5])), x)
    assert len(traces) == 2  # new kernel type: one more trace, new shifts: none


def _metropolis(G):
    return metropolis(G, adjacency(G, G.number_of_nodes())).toarray()
