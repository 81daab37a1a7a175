"""Dynamic averaging: the coordinator's decision by hand, and its two identities.

Delta = 0 is FedAvg with tau = b (every round a full sync); Delta = inf never
communicates (each client trains alone, zero bytes). A hand-worked round
checks the balancing order, who is taken, what it costs, and that the others
keep their models.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import quadratic_data, quadratic_loss, ring_weights
from tests.quadratic import run as run_quadratic
from workbench.algorithms import fedavg
from workbench.algorithms.dynamic_averaging import (
    Check,
    DynState,
    coordinator,
    divergence,
    dynamic_averaging,
)
from workbench.comm import from_matrix
from workbench.comm.exchange import EXCHANGES, Context
from workbench.rounds import RoundSpec, make_chunk

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)
W = ring_weights(8)
LR = 0.1


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def dyn(threshold, period, **kwargs):
    def make(loss_fn, opt):
        return dynamic_averaging(loss_fn, opt, threshold, period, **kwargs)

    return make


def run(make_alg, rounds, period):
    """(final state, traffic) of ``rounds`` rounds on the quadratic."""
    n = len(A)
    alg = make_alg(quadratic_loss, optax.sgd(LR))
    alg = alg._replace(rounds=alg.rounds._replace(local_steps=period))
    spec = RoundSpec(alg, lambda d, t, k: d, jax.vmap, n, 1)
    state = jax.vmap(alg.init)(jnp.zeros((n,)), jax.random.split(jax.random.key(0), n))
    return make_chunk(spec, seed=0)(
        state,
        quadratic_data(A, B),
        from_matrix("dense", W),
        jnp.ones((n,)),
        jnp.int32(0),
        length=rounds,
    )


def test_threshold_zero_is_fedavg_with_tau_b():
    period, rounds = 3, 12
    state, traffic = run(dyn(0.0, period), rounds, period)
    ref = run_quadratic(
        functools.partial(fedavg, weighting="uniform"),
        W,
        A,
        B,
        LR,
        rounds,
        local_steps=period,
    )
    np.testing.assert_allclose(
        np.asarray(state.params), np.asarray(ref.params), rtol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(state.reference), np.asarray(ref.params), rtol=1e-12
    )
    # every round everyone sends its drift and priority (2 x 64 bits) and gets
    # the reply (drift, cut: 64 bits each; the full flag: 8)
    np.testing.assert_array_equal(np.asarray(traffic.sent), 128.0)
    np.testing.assert_array_equal(np.asarray(traffic.server), 8 * 136.0)


def test_a_compressed_drift_costs_the_compressor_bits():
    from workbench.compression import COMPRESSORS

    link = COMPRESSORS.build({"name": "threshold_2bit", "threshold": 0.5}, "c")
    state, traffic = run(dyn(0.0, 2, compressor=link), 3, 2)
    # 2 bits for the drift, 64 for the priority
    np.testing.assert_array_equal(np.asarray(traffic.sent), 66.0)
    # every round a full sync to r + mean(q): moves of +-0.5 or 0 averaged
    steps = np.asarray(state.reference) / (0.5 / 8)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)


def test_the_delta_switch_makes_every_round_a_full_sync():
    """Delta = 2: from x = 0 the first rounds violate only at some clients;
    a huge switch fires at the first full sync, after which every client
    sends every round."""
    period, rounds = 1, 8
    base, t_base = run(dyn(2.0, period), rounds, period)
    state, traffic = run(dyn(2.0, period, switch=1e9), rounds, period)
    full = np.asarray(traffic.server) == 8 * 136.0  # everyone taken
    first = int(np.argmax(full))
    assert full.any() and full[first:].all() and bool(state.switched[0])
    assert not np.asarray(t_base.server == 8 * 136.0)[first:].all()
    assert not bool(base.switched[0])


def test_the_residual_only_moves_when_the_coordinator_takes_the_drift():
    from workbench.compression import COMPRESSORS

    link = COMPRESSORS.build({"name": "threshold_2bit", "threshold": 0.25}, "c")
    state, traffic = run(dyn(0.5, 1, compressor=link), 1, 1)
    taken = np.asarray(traffic.sent)[0] > 0
    residual = np.asarray(state.link.residual)
    assert taken.any() and not taken.all()
    np.testing.assert_array_equal(residual[~taken], 0.0)
    assert np.abs(residual[taken]).max() > 0


def test_infinite_threshold_never_communicates():
    period, rounds = 2, 5
    state, traffic = run(dyn(np.inf, period), rounds, period)
    alone = B + (1 - LR * A) ** (period * rounds) * (0.0 - B)  # GD alone from 0
    np.testing.assert_allclose(np.asarray(state.params), alone, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(state.reference), 0.0)
    assert float(jnp.sum(traffic.sent)) == 0.0 and float(jnp.sum(traffic.server)) == 0.0


def decide_round(threshold, balancing, drift, priority):
    m = len(drift)
    ctx = Context(
        from_matrix("dense", np.eye(m)),
        None,
        jnp.arange(m),
        jnp.ones(m),
        m,
        jax.random.key(0),
        None,
        coordinator(threshold, "global", balancing),
    )
    upload = Check(jnp.asarray(drift), jnp.asarray(priority))
    return EXCHANGES["coordinator"].run(upload, ctx)


def test_balancing_takes_the_fewest_clients_in_order():
    """Peer 0 violates (2^2 > 1). In priority order 2, 3, 1 the coordinator
    adds peer 2 (mean 1.05: 1.1025 > 1), then peer 3 (mean 0.8: 0.64 <= 1)."""
    drift = [2.0, -0.5, 0.1, 0.3]
    reply, sent, server = decide_round(1.0, True, drift, [-1.0, 0.7, 0.2, 0.5])
    assert float(reply.drift[0]) == pytest.approx(0.8)
    assert float(reply.cut[0]) == 0.5 and not bool(reply.full[0])
    np.testing.assert_array_equal(np.asarray(sent), [128, 0, 128, 128])
    assert float(server) == 3 * (64 + 64 + 8)
    # the combine: taken peers move to r + mean drift, peer 1 keeps its model
    alg = dynamic_averaging(quadratic_loss, optax.sgd(LR), 1.0)
    x = jnp.asarray([2.0, -0.5, 0.1, 0.3]) + 1.0  # the reference is 1
    pri = jnp.asarray([-1.0, 0.7, 0.2, 0.5])
    state = DynState(x, jnp.ones(4), pri, (), (), jnp.zeros(4, bool), jnp.zeros(4))
    new = jax.vmap(alg.combine, (0, 0, None))(state, reply, None)
    np.testing.assert_allclose(np.asarray(new.params), [1.8, 0.5, 1.8, 1.8])
    np.testing.assert_array_equal(np.asarray(new.reference), 1.0)


def test_without_balancing_any_violation_is_a_full_sync():
    drift = [2.0, -0.5, 0.1, 0.3]
    reply, sent, _ = decide_round(1.0, False, drift, [-1.0, 0.7, 0.2, 0.5])
    assert float(reply.drift[0]) == pytest.approx(np.mean(drift))
    assert bool(reply.full[0])
    np.testing.assert_array_equal(np.asarray(sent), 128)


def test_nobody_violating_costs_nothing():
    reply, sent, server = decide_round(10.0, True, [2.0, -0.5], [0.3, 0.7])
    assert float(jnp.sum(sent)) == 0.0 and float(server) == 0.0
    assert float(reply.cut[0]) == -2.0


def test_the_two_divergences():
    drift = {"w": jnp.asarray([[1.0, 2.0]]), "b": jnp.asarray([3.0])}
    assert float(divergence("global", drift)) == 14.0
    assert float(divergence("layer_max", drift)) == 9.0


def test_the_clock_refuses_the_coordinator_and_cluster_nodes_route_it():
    from types import SimpleNamespace

    from workbench.clock import build_clock
    from workbench.cluster.run import refuse_exchange
    from workbench.errors import ScenarioError, WorkbenchError

    alg = dynamic_averaging(quadratic_loss, optax.sgd(LR), 1.0)
    with pytest.raises(ScenarioError, match="algorithm.name: .dynamic_averaging. runs"):
        build_clock(None, alg, "dynamic_averaging", 4, 0, 1.0, 1.0, {})
    sc = SimpleNamespace(algorithm={"name": "dynamic_averaging"})
    refuse_exchange(sc, "coordinator")  # rank 0 coordinates: no error
    with pytest.raises(WorkbenchError, match="'mystery' exchange, which cluster"):
        refuse_exchange(sc, "mystery")
