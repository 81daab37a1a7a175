"""Contract suites: the same checks over every registered algorithm and exchange.

Algorithms (built from the registry with their defaults, plain SGD): state
shapes are preserved by a chunk; a new graph of the same shape never
recompiles; n = 1 equals plain optax SGD; the vmapped round equals a per-peer
reference loop built from the same phases. Exchanges: delivery and cost
against a dense numpy reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import ring_weights
from tests.test_equivalence import MLP, mlp_problem
from workbench.algorithms import ALGORITHMS
from workbench.algorithms.base import Inbox
from workbench.clock import build_clock, init_clocked, needs_clock
from workbench.comm import from_matrix
from workbench.comm.exchange import EXCHANGES, Context, Decision, Tiered
from workbench.comm.kernels import as_table
from workbench.comm.messages import Coded
from workbench.keys import LOCAL, round_key
from workbench.objective import make_loss
from workbench.optim import local_optimizer
from workbench.rounds import RoundSpec, make_chunk, sample_batches
from workbench.rounds import init_state as init_state_of

LR = 0.05
REQUIRED = {  # keys without a default, and defenses without noise (plain SGD)
    "choco": {"gamma": 0.2},
    "muffliato": {"gossip_steps": 2},
    "dpsgd": {"noise_multiplier": 0.0, "clip": 1e6},
    "fedasync": {"alpha": 1.0},  # mixing weight 1: the server takes the model
    "fedbuff": {"buffer": 1},  # a server step per upload
    "dynamic_averaging": {"threshold": 0.0},  # a full sync every round
    # every model adopted, nothing sparsified (a lone peer trains every round)
    "smpl": {"keep_best": False, "fraction": 1.0},
    # a budget of one communication per round: the clients of score 1 send
    # every round
    "client_periods": {"mode": "svd", "communications": 1000},
}


def validation_split(n=4, m=6, seed=9):
    """(x, y, size): a small split per peer (smpl validates, client_periods
    scores the training data)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, m, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=(n, m)), jnp.int32)
    return x, y, jnp.full((n,), m, jnp.int32)


def build(name: str):
    loss_fn = make_loss(MLP().apply)
    spec = {"name": name, **REQUIRED.get(name, {})}
    return ALGORITHMS.build(
        spec,
        "algorithm",
        loss_fn=loss_fn,
        optimizer=local_optimizer(lr=LR),
        apply_fn=MLP().apply,
        validation=validation_split(),
        training=validation_split(seed=10),
        rounds=1000,
    )


def with_clock(spec, name: str):
    """The spec on the default clock when the algorithm needs one (async ones)."""
    if not needs_clock(spec.algorithm):
        return spec
    clock = build_clock(None, spec.algorithm, name, spec.num_peers, 5, 0.0, 0.0, {})
    return spec._replace(clock=clock)


def init_state(spec, params, n, topo_data, data=None):
    stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    keys = jax.random.split(jax.random.key(1), n)
    state = init_state_of(spec, 5, stacked, keys, topo_data)
    if spec.clock is None:
        return state
    return init_clocked(spec, 5, state, data, topo_data)


def loop_lift(fn):
    """A per-peer loop: each peer alone (unbatched, one per ``lax.map``
    iteration), results stacked; compiled once, not once per peer."""

    def lifted(*args):
        return jax.lax.map(lambda a: fn(*a), args)

    return lifted


def run(alg, n, W, lift=jax.vmap, rounds=3, chunk=None):
    _, params, data = mlp_problem(n)
    spec = with_clock(RoundSpec(alg, lambda d, t, k: d, lift, n, 4), "algorithm")
    chunk = chunk or make_chunk(spec, seed=5)
    state = init_state(spec, params, n, from_matrix("dense", W), data)
    out = chunk(
        state,
        data,
        from_matrix("dense", W),
        jnp.ones((n,)),
        jnp.int32(0),
        length=rounds,
    )
    return out[0], out[1], chunk, params, data


@pytest.fixture(params=sorted(ALGORITHMS))
def name(request):
    return request.param


def test_new_graph_does_not_recompile(name):
    alg, n = build(name), 4
    _, _, chunk, *_ = run(alg, n, ring_weights(n))
    rng = np.random.default_rng(0)
    W = rng.dirichlet(np.ones(n), n)
    W = (W + W.T) / 2
    W = W / W.sum(1, keepdims=True)
    run(alg, n, ring_weights(n, 0.25), chunk=chunk)
    run(alg, n, W, chunk=chunk)
    assert chunk._cache_size() == 1


def test_single_peer_equals_plain_sgd(name):
    alg = build(name)
    state, _, _, params, data = run(alg, 1, np.ones((1, 1)), rounds=3)
    loss_fn, opt = make_loss(MLP().apply), optax.sgd(LR)
    ref, opt_state = params, opt.init(params)
    steps = alg.rounds.local_steps
    for t in range(3):
        key = jax.random.fold_in(round_key(5, jnp.int32(t), LOCAL), 0)
        kb, _ = jax.random.split(key)
        batches = sample_batches(kb, data.x[0], data.y[0], data.size[0], steps, 4)
        for s in range(steps):
            grads = jax.grad(loss_fn)(ref, jax.tree.map(lambda a, s=s: a[s], batches))
            updates, opt_state = opt.update(grads, opt_state, ref)
            ref = optax.apply_updates(ref, updates)
    for got, want in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(ref), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=2e-5, atol=2e-6)


def test_chunk_keeps_state_shapes_and_equals_a_per_peer_loop(name):
    alg, n = build(name), 4
    ref, ref_traffic, *_ = run(alg, n, ring_weights(n), lift=loop_lift)
    got, traffic, _, params, _ = run(alg, n, ring_weights(n))
    spec = with_clock(RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 4), name)
    W = from_matrix("dense", ring_weights(n))
    _, _, data = mlp_problem(n)
    before = jax.eval_shape(lambda: init_state(spec, params, n, W, data))
    assert jax.tree.structure(got) == jax.tree.structure(before)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(before), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert traffic.sent.shape == (3, n) and np.all(np.isfinite(traffic.sent))
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(ref_traffic.sent, traffic.sent)


# ---------------------------------------------------------------- exchanges

N, D = 5, 3
RNG = np.random.default_rng(7)
DIRECTED = np.array(
    [
        [0.5, 0.5, 0.0, 0.0, 0.0],
        [0.0, 0.5, 0.25, 0.25, 0.0],
        [0.2, 0.0, 0.6, 0.0, 0.2],
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.3, 0.3, 0.0, 0.0, 0.4],
    ]
)
X = RNG.normal(size=(N, D)).astype(np.float32)
OUT_EDGES = ((DIRECTED != 0) & ~np.eye(N, dtype=bool)).sum(0)  # per sender j


def edge_message(outbox, sender, receiver, key):
    noise = jax.random.normal(key, outbox.shape)
    sign = jnp.where(sender < receiver, 1.0, -1.0)
    return outbox * (sender + 1) + receiver + sign * noise


def context(kernel: str, peers=None, weights=None):
    arrays = from_matrix(kernel, DIRECTED)
    peers = jnp.arange(N, dtype=jnp.int32) if peers is None else jnp.asarray(peers)
    weights = jnp.ones(peers.shape) if weights is None else jnp.asarray(weights)
    key = jax.random.key(3, impl="philox2x32")
    return Context(arrays, as_table(arrays, N), peers, weights, N, key, edge_message)


def as_dense(inbox: Inbox, ctx: Context, values) -> np.ndarray:
    """sum_c weight[i, c] * message[i, c] over real neighbours, plus self."""
    idx = np.asarray(ctx.table.idx)
    out = np.zeros((N,) + np.shape(values)[2:])
    for i in range(N):
        for c in range(idx.shape[1]):
            if np.asarray(inbox.mask)[i, c]:
                out[i] += np.asarray(inbox.weight)[i, c] * np.asarray(values)[i, c]
    return out


GROUP = jnp.asarray([0, 1, 0, 1, 2], jnp.int32)
SHARE = jnp.asarray([1.0, 1.0, 1.0, 0.0, 1.0])  # peer 3 is left out
TAKEN = np.array([True, False, True, False, False])


def decide(uploads, weights, key):
    """A coordinator that takes peers 0 and 2 and replies with their sum."""
    del weights, key
    return Decision(jnp.sum(uploads[TAKEN], 0), jnp.asarray(TAKEN))


def outbox_for(name: str, kernel: str = "dense"):
    """(outbox, context) for exchange ``name`` on X: the structured exchanges
    take their own outbox types and the algorithm's decision function."""
    ctx = context(kernel)
    if name == "hierarchy":
        return Tiered(jnp.asarray(X), GROUP, SHARE), ctx
    if name == "coordinator":
        return jnp.asarray(X), ctx._replace(aggregate=decide)
    return jnp.asarray(X), ctx


@pytest.fixture(params=sorted(EXCHANGES))
def exchange_name(request):
    return request.param


@pytest.mark.parametrize("kernel", ["dense", "segment"])
def test_exchange_delivery_matches_dense_reference(exchange_name, kernel):
    outbox, ctx = outbox_for(exchange_name, kernel)
    inbox, _, _ = EXCHANGES[exchange_name].run(outbox, ctx)
    off = DIRECTED * (1 - np.eye(N))
    if exchange_name == "average":
        np.testing.assert_allclose(inbox, DIRECTED @ X, rtol=1e-5, atol=1e-6)
    elif exchange_name == "gather":
        np.testing.assert_allclose(
            as_dense(inbox, ctx, inbox.messages), off @ X, atol=1e-5
        )
        np.testing.assert_array_equal(np.asarray(inbox.mask)[:, 0], False)
    elif exchange_name == "edge":
        messages = np.asarray(inbox.messages)
        idx, mask = np.asarray(ctx.table.idx), np.asarray(inbox.mask)
        for i in range(N):
            for c in range(idx.shape[1]):
                if mask[i, c]:
                    j = idx[i, c]
                    noise = messages[i, c] - (X[j] * (j + 1) + i)
                    assert np.abs(noise).max() > 0  # symmetry: the ring test below
    elif exchange_name == "hierarchy":
        groups = [(X[0] + X[2]) / 2, X[1], (X[0] + X[2]) / 2, X[1], X[4]]
        np.testing.assert_allclose(inbox.group, np.stack(groups), rtol=1e-6)
        total = X[[0, 1, 2, 4]].mean(0)
        np.testing.assert_allclose(
            inbox.total, np.broadcast_to(total, (N, D)), rtol=1e-6
        )
    elif exchange_name == "coordinator":
        np.testing.assert_allclose(
            inbox, np.broadcast_to(X[0] + X[2], (N, D)), rtol=1e-6
        )
    else:
        np.testing.assert_allclose(inbox, np.broadcast_to(X.mean(0), (N, D)), rtol=1e-6)


def test_exchange_costs_count_real_deliveries(exchange_name):
    outbox, ctx = outbox_for(exchange_name)
    _, sent, server = EXCHANGES[exchange_name].run(outbox, ctx)
    bits = D * 32
    if exchange_name == "hierarchy":  # the value (group, share: the connection's)
        np.testing.assert_array_equal(sent, np.full(N, bits))
        assert float(server) == N * bits
    elif exchange_name == "coordinator":  # only the taken pay; the reply to them
        np.testing.assert_array_equal(sent, TAKEN * bits)
        assert float(server) == 2 * bits
    elif exchange_name == "server":
        np.testing.assert_array_equal(sent, np.full(N, bits))
        assert float(server) == N * bits
    else:
        np.testing.assert_array_equal(sent, OUT_EDGES * bits)
        assert float(server) == 0


def test_coded_messages_cost_their_reported_bits():
    ctx = context("dense")
    coded = Coded(jnp.asarray(X), jnp.arange(N, dtype=jnp.float32) + 10)
    sent, _ = EXCHANGES["average"].cost(coded, ctx)
    np.testing.assert_array_equal(sent, OUT_EDGES * (np.arange(N) + 10))
    inbox = EXCHANGES["average"].deliver(coded, ctx)
    np.testing.assert_allclose(inbox, DIRECTED @ X, rtol=1e-5, atol=1e-6)


def test_server_cost_with_partial_participation_and_data_size_weights():
    ctx = context("dense", peers=[1, 3], weights=[1.0, 3.0])
    outbox = jnp.asarray(X[[1, 3]])
    inbox = EXCHANGES["server"].deliver(outbox, ctx)
    np.testing.assert_allclose(inbox[0], (X[1] + 3 * X[3]) / 4, rtol=1e-6)
    sent, server = EXCHANGES["server"].cost(outbox, ctx)
    np.testing.assert_array_equal(sent, [0, D * 32, 0, D * 32, 0])
    assert float(server) == 2 * D * 32


def test_edge_key_is_shared_by_both_ends_of_an_edge():
    """On a ring every edge exists both ways: the noise drawn from the edge key
    in i's message to j is exactly the opposite of j's message to i."""
    n = 6
    arrays = from_matrix("dense", ring_weights(n))
    key = jax.random.key(3, impl="philox2x32")
    peers = jnp.arange(n, dtype=jnp.int32)
    ctx = Context(arrays, as_table(arrays, n), peers, jnp.ones(n), n, key, edge_message)
    x = jnp.asarray(RNG.normal(size=(n, D)), jnp.float32)
    inbox, _, _ = EXCHANGES["edge"].run(x, ctx)
    messages, idx, mask = map(np.asarray, (inbox.messages, ctx.table.idx, inbox.mask))
    xs, pairs = np.asarray(x), 0
    for i in range(n):
        for c in np.flatnonzero(mask[i]):
            j = idx[i, c]
            (back,) = np.flatnonzero(mask[j] & (idx[j] == i))
            noise = messages[i, c] - (xs[j] * (j + 1) + i)
            other = messages[j, back] - (xs[i] * (i + 1) + j)
            np.testing.assert_allclose(noise, -other, atol=1e-5)
            assert np.abs(noise).max() > 1e-3
            pairs += 1
    assert pairs == 2 * n
