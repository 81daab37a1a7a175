"""The round's phases serve a network transport, and a chunk captures outboxes.

A transport owns a block of peers: it calls ``local`` and ``combine`` on its
block and does the exchange itself. Here two blocks exchange through numpy
(as a transport would over the network) and must reproduce the simulated
round exactly. Capture returns exactly what the chosen peers sent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.quadratic import ring_weights
from tests.test_equivalence import MLP, mlp_problem
from workbench.algorithms import dsgd, fedavg
from workbench.comm import from_matrix
from workbench.objective import make_loss
from workbench.rounds import Capture, RoundSpec, make_chunk, make_phases

N = 6


def setup(alg):
    _, params, data = mlp_problem(N)
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (N,) + p.shape), params)
    state = jax.vmap(alg.init)(stacked, jax.random.split(jax.random.key(1), N))
    return state, data


def take(tree, peers):
    return jax.tree.map(lambda a: a[np.asarray(peers)], tree)


def test_two_blocks_calling_local_and_combine_reproduce_the_simulated_round():
    alg = dsgd(make_loss(MLP().apply), optax.sgd(0.1, momentum=0.9))
    W = ring_weights(N)
    state, data = setup(alg)
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, N, 4)
    sim, _ = make_chunk(spec, seed=2)(
        jax.tree.map(jnp.copy, state),
        data,
        from_matrix("dense", W),
        jnp.ones((N,)),
        jnp.int32(0),
        length=2,
    )

    ph = make_phases(spec, seed=2)
    local, combine = jax.jit(ph.local), jax.jit(ph.combine)
    blocks = [np.arange(0, 3), np.arange(3, N)]
    for t in range(2):
        parts, outboxes = [], []
        for block in blocks:  # each host: its peers only
            sub, out = local(
                take(state, block), *take(tuple(data), block), block, t, None
            )
            parts.append(sub)
            outboxes.append(out)
        # the network: every host receives its in-neighbours' models
        sent = jax.tree.map(lambda *o: np.concatenate(o), *outboxes)
        new = []
        for block, sub in zip(blocks, parts, strict=True):
            inbox = jax.tree.map(lambda x, b=block: np.tensordot(W[b], x, 1), sent)
            new.append(combine(sub, inbox, None))
        state = jax.tree.map(lambda *p: jnp.concatenate(p), *new)
    for a, b in zip(jax.tree.leaves(sim), jax.tree.leaves(state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_capture_returns_what_the_chosen_peers_sent():
    alg = dsgd(make_loss(MLP().apply), optax.sgd(0.1))
    state, data = setup(alg)
    arrays = from_matrix("dense", ring_weights(N))
    plain = RoundSpec(alg, lambda d, t, k: d, jax.vmap, N, 4)
    spec = plain._replace(capture=Capture(peers=(1, 4), every=2))
    state1, _, got = make_chunk(spec, seed=0)(
        jax.tree.map(jnp.copy, state),
        data,
        arrays,
        jnp.ones((N,)),
        jnp.int32(3),
        length=5,
    )
    # ATC D-SGD sends its locally updated model: recompute round by round
    step = make_chunk(plain, seed=0)
    ref, expected = state, []
    for t in range(3, 8):
        before = ref
        ref, _ = step(
            jax.tree.map(jnp.copy, ref),
            data,
            arrays,
            jnp.ones((N,)),
            jnp.int32(t),
            length=1,
        )
        if (t - 3) % 2 == 0:
            ph = make_phases(plain, seed=0)
            _, out = ph.local(before, *tuple(data), jnp.arange(N), t, None)
            expected.append(jax.tree.map(lambda x: np.asarray(x)[[1, 4]], out))
    np.testing.assert_array_equal(got.rounds, [3, 5, 7])
    assert bool(np.all(got.sent))
    for slot, want in enumerate(expected):
        for a, b in zip(
            jax.tree.leaves(got.outbox), jax.tree.leaves(want), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a)[slot], b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_capture_marks_peers_that_did_not_participate():
    alg = fedavg(make_loss(MLP().apply), optax.sgd(0.1), client_fraction=0.5)
    state, data = setup(alg)
    spec = RoundSpec(
        alg, lambda d, t, k: d, jax.vmap, N, 4, Capture((0, 1, 2, 3, 4, 5))
    )
    _, traffic, got = make_chunk(spec, seed=0)(
        state,
        data,
        from_matrix("dense", ring_weights(N)),
        jnp.ones((N,)),
        jnp.int32(0),
        length=4,
    )
    sent = np.asarray(got.sent)
    assert sent.shape == (4, N) and np.all(sent.sum(1) == 3)  # 3 of 6 clients
    uploads = np.asarray(traffic.sent) > 0
    np.testing.assert_array_equal(uploads, sent)
