"""Equivalences of the jitted core: n = 1 == plain optax, execution strategies,
no recompilation on a topology change, FedAvg weighting and client sampling."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import ring_weights, run
from workbench.algorithms import dsgd, fedavg
from workbench.comm import from_matrix
from workbench.execution import lift
from workbench.objective import make_loss
from workbench.rounds import (
    LOCAL,
    PeerData,
    RoundSpec,
    make_chunk,
    round_key,
    sample_batches,
    sample_peers,
)

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(3)(x)


def mlp_problem(n, m=20, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, m, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=(n, m)), jnp.int32)
    sizes = jnp.asarray(rng.integers(5, m + 1, size=n), jnp.int32)
    model = MLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 5)))
    return model, params, PeerData(x, y, sizes)


def run_mlp(alg, n, W, strategy=("vmap", None), rounds=6, steps=2, kernel="dense"):
    model, params, data = mlp_problem(n)
    alg = alg._replace(rounds=alg.rounds._replace(local_steps=steps))
    spec = RoundSpec(alg, lambda d, t, k: d, lambda f: lift(f, *strategy), n, 4)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    state = jax.vmap(alg.init)(stacked, jax.random.split(jax.random.key(1), n))
    state, _ = make_chunk(spec, seed=3)(
        state, data, from_matrix(kernel, W), jnp.ones((n,)), jnp.int32(0), length=rounds
    )
    return model, params, data, state


def test_single_peer_equals_plain_optax():
    opt = optax.sgd(0.1, momentum=0.9)
    model = MLP()
    loss_fn = make_loss(model.apply)
    alg = dsgd(loss_fn, opt)
    _, params, data, state = run_mlp(alg, 1, np.ones((1, 1)))
    ref, opt_state = params, opt.init(params)
    for t in range(6):
        key = jax.random.fold_in(round_key(3, jnp.int32(t), LOCAL), 0)
        kb, _ = jax.random.split(key)
        batches = sample_batches(kb, data.x[0], data.y[0], data.size[0], 2, 4)
        for s in range(2):
            batch = jax.tree.map(lambda a, s=s: a[s], batches)
            grads = jax.grad(loss_fn)(ref, batch)
            updates, opt_state = opt.update(grads, opt_state, ref)
            ref = optax.apply_updates(ref, updates)
    for got, want in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(ref), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "strategy", [("map", 3), ("unroll", 3), ("unroll", 8), ("map", 1)]
)
def test_execution_strategy_does_not_change_numbers(strategy):
    n = 8
    alg = dsgd(make_loss(MLP().apply), optax.adam(0.01))
    ref = run_mlp(alg, n, ring_weights(n))[3]
    got = run_mlp(alg, n, ring_weights(n), strategy=strategy)[3]
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)


def test_new_graph_of_same_shape_does_not_recompile():
    n = 8
    alg = dsgd(make_loss(MLP().apply), optax.sgd(0.1))
    model, params, data = mlp_problem(n)
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 4)
    chunk = make_chunk(spec, seed=0)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    init = jax.vmap(alg.init)(stacked, jax.random.split(jax.random.key(0), n))
    rng = np.random.default_rng(0)
    outs = []
    for W in (ring_weights(n), ring_weights(n, 0.25), rng.dirichlet(np.ones(n), n)):
        state = jax.tree.map(jnp.copy, init)
        state, _ = chunk(
            state, data, from_matrix("dense", W), jnp.ones((n,)), jnp.int32(0), length=3
        )
        outs.append(np.asarray(jax.tree.leaves(state.params)[0]))
    assert chunk._cache_size() == 1
    assert not np.allclose(outs[0], outs[2])


def test_the_seed_is_an_argument_of_the_program_with_the_constants_draws():
    """Two seeds lower to the same program (a sweep's seeds compile once);
    a seed passed as uint32 draws the keys of the Python int, even >= 2**31."""
    from workbench.keys import round_key

    n = 4
    alg = dsgd(make_loss(MLP().apply), optax.sgd(0.1))
    _, params, data = mlp_problem(n)
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 4)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    state = jax.vmap(alg.init)(stacked, jax.random.split(jax.random.key(0), n))
    args = (state, data, from_matrix("dense", ring_weights(n)), jnp.ones((n,)),
            jnp.int32(0))  # fmt: skip
    texts = [make_chunk(spec, s).lower(*args, length=2).lowered.as_text()
             for s in (0, 7)]  # fmt: skip
    assert texts[0] == texts[1]
    one = make_chunk(spec, 7)(jax.tree.map(jnp.copy, state), *args[1:], length=2)
    other = make_chunk(spec, 8)(jax.tree.map(jnp.copy, state), *args[1:], length=2)
    a, b = (np.asarray(jax.tree.leaves(o[0].params)[0]) for o in (one, other))
    assert not np.allclose(a, b)  # the seed still reaches the draws
    traced = jax.jit(lambda s: jax.random.key_data(round_key(s, 3, 1)))
    for seed in (0, 5, 2**31 + 7, 2**32 - 1):
        want = jax.random.key_data(round_key(seed, 3, 1))
        np.testing.assert_array_equal(traced(np.uint32(seed)), want)


def test_fedavg_data_size_weighting_fixed_point():
    """tau = 1: the server mean of one GD step; fixed point sum s a b / sum s a."""
    sizes = np.array([1, 3, 2, 5, 1, 1, 4, 2], float)
    with jax.enable_x64(True):
        state = run(fedavg, ring_weights(8), A, B, lr=0.1, rounds=800, weights=sizes)
        expected = np.sum(sizes * A * B) / np.sum(sizes * A)
        np.testing.assert_allclose(np.asarray(state.params), expected, atol=1e-9)


def test_sample_peers_draws_exactly_m_distinct():
    draws = [np.asarray(sample_peers(jax.random.key(s), 10, 3)) for s in range(50)]
    assert all(len(set(d)) == 3 and list(d) == sorted(d) for d in draws)
    counts = np.bincount(np.concatenate(draws), minlength=10)
    assert counts.min() > 5  # every peer gets sampled
    np.testing.assert_array_equal(sample_peers(jax.random.key(0), 4, 4), np.arange(4))


def test_fedavg_client_fraction_uses_only_sampled_clients():
    """With 1 of 8 clients per round, after one round all peers hold that client's
    locally trained model, which is one GD step from 0 towards its b_i."""
    with jax.enable_x64(True):
        state = run(
            functools.partial(fedavg),
            ring_weights(8),
            A,
            B,
            lr=0.1,
            rounds=1,
            participants=1,
        )
        x = np.asarray(state.params)
        assert np.allclose(x, x[0])
        assert np.any(np.isclose(x[0], 0.1 * A * B))


def _local_step(n: int):
    """D-SGD's local step (ATC: the outbox is the new parameters) on n peers."""
    model, params, data = mlp_problem(n)
    alg = dsgd(make_loss(model.apply), optax.sgd(0.1))
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    state = jax.vmap(alg.init)(stacked, jax.random.split(jax.random.key(1), n))
    batches = jax.vmap(
        lambda x, y, s: sample_batches(jax.random.key(2), x, y, s, 1, 4)
    )(*data)
    return lambda s, b: alg.local(s, b, None, None), state, batches


@pytest.mark.parametrize("k", [1, 3])
def test_map_writes_the_new_state_over_the_old_one(k):
    n = 8
    local, state, batches = _local_step(n)
    want = jax.vmap(local)(state, batches)
    in_place = jax.jit(lift(local, "map", k), donate_argnums=0)
    stacked = jax.jit(  # lax.map: a second stacked state, and a third for the outbox
        lambda *a: jax.lax.map(lambda b: local(*b), a, batch_size=k), donate_argnums=0
    )
    temp = {}
    for name, fn in (("in place", in_place), ("stacked", stacked)):
        compiled = fn.lower(state, batches).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes
        got = compiled(jax.tree.map(jnp.copy, state), batches)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(
                np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7
            )
    params = sum(p.nbytes for p in jax.tree.leaves(want[1]))
    assert temp["in place"] + params <= temp["stacked"]


def test_map_of_a_function_that_does_not_return_its_state():
    n = 8
    local, state, batches = _local_step(n)
    loss = lambda s, b: local(s, b)[0].loss  # noqa: E731  (n,) not state-shaped
    for k in (1, 3):
        got = jax.jit(lift(loss, "map", k))(state, batches)
        np.testing.assert_allclose(got, jax.vmap(loss)(state, batches), rtol=1e-6)
