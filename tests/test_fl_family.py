"""The FL family against hand computations on the quadratic f_i = (a_i/2)(x - b_i)^2.

Each client's tau local GD steps from x have the closed form
y_i = b_i + (1 - eta a_i)^tau (x - b_i), so every server step below is
recomputed in numpy: FedOpt's server optimizers, loss-softmax weighting,
FedProx's proximal steps, robust aggregators, and SCAFFOLD reaching x* where
FedAvg with tau = 20 stops at 3.529473.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import ring_weights, run
from workbench.algorithms import ALGORITHMS, fedavg
from workbench.algorithms.aggregation import krum_scores
from workbench.algorithms.registry import AGGREGATORS, SERVER_OPTIMIZERS
from workbench.algorithms.scaffold import scaffold
from workbench.comm import from_matrix
from workbench.comm.exchange import EXCHANGES, Context
from workbench.comm.messages import Scored
from workbench.errors import ScenarioError

A = np.array([1.0, 2.0] * 4)
B = np.arange(8.0)
W = ring_weights(8)
LR = 0.1
X_STAR = np.sum(A * B) / np.sum(A)  # 44/12


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def local_gd(x, tau, mu=0.0):
    """Each client's model after tau GD steps from x (FedProx's term mu)."""
    y = np.full_like(A, x)
    for _ in range(tau):
        y = y - LR * (A * (y - B) + mu * (y - x))
    return y


def with_server(opt):
    return functools.partial(fedavg, weighting="uniform", server_opt=opt)


# ------------------------------------------------------------ server optimizers


def adam_ref(rounds, tau, lr, b2, eps):
    """FedAdam with beta1 = 0, written out: v <- b2 v + (1 - b2) g^2,
    x <- x - lr g / (sqrt(v / (1 - b2^t)) + eps), g = x - mean(y)."""
    x, v, xs = 0.0, 0.0, []
    for t in range(1, rounds + 1):
        g = x - local_gd(x, tau).mean()
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * g / (np.sqrt(v / (1 - b2**t)) + eps)
        xs.append(x)
    return np.array(xs)


def test_fedadam_with_beta1_zero_is_the_written_out_rule():
    lr, b2, eps, tau = 0.3, 0.99, 1e-9, 5
    opt = SERVER_OPTIMIZERS.build(
        {"name": "adam", "lr": lr, "b1": 0.0, "b2": b2, "eps": eps}, "s"
    )
    ref = adam_ref(30, tau, lr, b2, eps)
    assert ref[0] == pytest.approx(lr)  # the first step moves exactly lr
    for rounds in (1, 30):
        state = run(with_server(opt), W, A, B, LR, rounds, local_steps=tau)
        np.testing.assert_allclose(np.asarray(state.params), ref[rounds - 1], rtol=1e-9)


def test_fedavgm_and_fedadagrad_are_their_written_out_rules():
    tau, rounds = 3, 12
    momentum = SERVER_OPTIMIZERS.build({"name": "sgd", "lr": 0.5, "momentum": 0.9}, "s")
    adagrad = SERVER_OPTIMIZERS.build(
        {"name": "adagrad", "lr": 0.2, "eps": 1e-3, "initial": 0.1}, "s"
    )
    x, m = 0.0, 0.0  # FedAvgM: m <- 0.9 m + g; x <- x - 0.5 m
    y, acc = 0.0, 0.1  # FedAdagrad: acc <- acc + g^2; y <- y - 0.2 g / sqrt(acc + eps)
    for _ in range(rounds):
        g = x - local_gd(x, tau).mean()
        m = 0.9 * m + g
        x = x - 0.5 * m
        h = y - local_gd(y, tau).mean()
        acc = acc + h * h
        y = y - 0.2 * h / np.sqrt(acc + 1e-3)
    got_m = run(with_server(momentum), W, A, B, LR, rounds, local_steps=tau)
    got_a = run(with_server(adagrad), W, A, B, LR, rounds, local_steps=tau)
    np.testing.assert_allclose(np.asarray(got_m.params), x, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(got_a.params), y, rtol=1e-9)


def test_fedyogi_moves_by_its_sign_rule():
    """Yogi with beta1 = 0: v <- v - (1 - b2) sign(v - g^2) g^2 (bias-corrected)."""
    b2, eps, lr, tau = 0.9, 1e-6, 0.2, 2
    opt = SERVER_OPTIMIZERS.build(
        {"name": "yogi", "lr": lr, "b1": 0.0, "b2": b2, "eps": eps}, "s"
    )
    x, v = 0.0, 1e-6  # optax's initial accumulator
    for t in range(1, 9):
        g = x - local_gd(x, tau).mean()
        v = v - (1 - b2) * np.sign(v - g * g) * g * g
        x = x - lr * g / (np.sqrt(v / (1 - b2**t)) + eps)
    got = run(with_server(opt), W, A, B, LR, 8, local_steps=tau)
    np.testing.assert_allclose(np.asarray(got.params), x, rtol=1e-9)


# ------------------------------------------------------------ weighting, FedProx


def test_loss_weighting_is_the_softmax_of_the_clients_losses():
    """tau = 1 from x = 0: loss_i = a_i b_i^2 / 2, y_i = eta a_i b_i."""
    b = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    loss = A * b**2 / 2
    c = np.exp(loss - loss.max())
    expected = np.sum(c * LR * A * b) / c.sum()
    make = functools.partial(fedavg, weighting="loss")
    state = run(make, W, A, b, LR, 1)
    np.testing.assert_allclose(np.asarray(state.params), expected, rtol=1e-12)
    assert abs(expected - np.mean(LR * A * b)) > 0.05  # not the plain mean


def test_a_scored_upload_costs_its_score_and_the_reply_does_not():
    n = 4
    ctx = Context(
        from_matrix("dense", np.eye(n)),
        None,
        jnp.arange(n),
        jnp.ones(n),
        n,
        jax.random.key(0),
        None,
    )
    upload = Scored(jnp.zeros((n, 10), jnp.float32), jnp.zeros((n,), jnp.float32))
    _, sent, server = EXCHANGES["server"].run(upload, ctx)
    np.testing.assert_array_equal(np.asarray(sent), 11 * 32)
    assert float(server) == n * 10 * 32


def test_fedprox_takes_the_proximal_steps():
    tau, mu = 4, 0.5
    make = functools.partial(fedavg, weighting="uniform", mu=mu)
    state = run(make, W, A, B, LR, 1, local_steps=tau)
    np.testing.assert_allclose(
        np.asarray(state.params), local_gd(0.0, tau, mu).mean(), rtol=1e-12
    )
    x, plain = 0.0, 0.0
    for _ in range(3):
        x, plain = local_gd(x, tau, mu).mean(), local_gd(plain, tau).mean()
    state = run(make, W, A, B, LR, 3, local_steps=tau)
    np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-12)
    assert abs(x - plain) > 1e-2  # the proximal term changed the result


def test_compressed_uploads_are_the_updates_through_the_compressor():
    """2-bit uploads of y_i - x with each client's residual, by hand."""
    from workbench.compression import COMPRESSORS

    tau_q, tau = 0.3, 2
    link = COMPRESSORS.build({"name": "threshold_2bit", "threshold": tau_q}, "c")
    make = functools.partial(fedavg, weighting="uniform", compressor=link)
    x, r = 0.0, np.zeros(8)
    for rounds in range(1, 5):
        v = local_gd(x, tau) - x + r
        q = tau_q * np.sign(v) * (np.abs(v) >= tau_q)
        r = v - q
        x = x + q.mean()
        state = run(make, W, A, B, LR, rounds, local_steps=tau)
        np.testing.assert_allclose(np.asarray(state.params), x, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(state.link.residual), r, rtol=1e-9)


def test_sending_updates_is_sending_models():
    """send: update uploads w - x; the server adds their mean back: FedAvg."""
    make = functools.partial(fedavg, weighting="uniform", send="update")
    state = run(make, W, A, B, LR, 4, local_steps=3)
    ref = run(functools.partial(fedavg, weighting="uniform"), W, A, B, LR, 4,
              local_steps=3)  # fmt: skip
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(ref.params),
                               rtol=1e-12)  # fmt: skip


# ------------------------------------------------------------ robust aggregation


def aggregate(name, uploads, **kwargs):
    fn = AGGREGATORS.build({"name": name, **kwargs}, "a")
    m = len(uploads)
    return np.asarray(fn(jnp.asarray(uploads, float), jnp.full((m,), 1 / m)))


def test_robust_aggregators_on_hand_picked_uploads():
    ups = [[1.0, 10.0], [2.0, -3.0], [100.0, 0.0], [3.0, 1.0]]
    np.testing.assert_allclose(aggregate("median", ups), [2.5, 0.5])
    np.testing.assert_allclose(aggregate("trimmed_mean", ups, trim=1), [2.5, 0.5])
    np.testing.assert_allclose(aggregate("mean", ups), [26.5, 2.0])
    # Krum, f = 1 over 5 uploads: each score is the sum of the squared
    # distances to the m - f - 2 = 2 nearest; [2.5, -2] scores 1.25 + 9.25
    pts = np.array([[2.0, -3.0], [3.0, 1.0], [2.5, -2.0], [100.0, 0.0], [1.0, 10.0]])
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1) + np.diag([np.inf] * 5)
    np.testing.assert_allclose(
        krum_scores(jnp.asarray(pts), 1), [18.25, 26.25, 10.5, 18920.25, 231.25]
    )
    np.testing.assert_allclose(
        np.sort(d, 1)[:, :2].sum(1), [18.25, 26.25, 10.5, 18920.25, 231.25]
    )
    np.testing.assert_allclose(aggregate("krum", pts, byzantine=1), [2.5, -2.0])
    multi = aggregate("krum", pts, byzantine=1, select=2)
    np.testing.assert_allclose(multi, [2.25, -2.5])


def test_too_few_uploads_for_a_robust_rule_is_one_line():
    trimmed = AGGREGATORS.build({"name": "trimmed_mean", "trim": 2}, "a")
    krum = AGGREGATORS.build({"name": "krum", "byzantine": 1}, "a")
    with pytest.raises(ScenarioError, match="algorithm.aggregator.trim: drops 2 x 2"):
        trimmed(jnp.zeros((4, 3)), jnp.full(4, 0.25))
    with pytest.raises(ScenarioError, match="algorithm.aggregator.byzantine"):
        krum(jnp.zeros((4, 3)), jnp.full(4, 0.25))


def test_krum_scores_stay_exact_for_large_nearby_models():
    """Models far from 0 and close to each other: ||a||^2 + ||b||^2 - 2 a.b
    cancels almost everything in float32 unless the rows are centred."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(False):
        base = rng.normal(size=(1, 20000)) * 30
        pts = base + rng.normal(size=(6, 20000)) * 0.01
        pts[5] += 0.05  # the far one
        got = np.asarray(krum_scores(jnp.asarray(pts, jnp.float32), 1))
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1) + np.diag([np.inf] * 6)
    want = np.sort(d, 1)[:, :3].sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    assert np.argmax(got) == 5


def test_a_compressed_update_is_not_mistaken_for_a_model():
    from workbench.algorithms.fedavg import Update
    from workbench.errors import WorkbenchError
    from workbench.privacy.messages import model_part

    params = {"w": jnp.zeros((3,))}
    with pytest.raises(WorkbenchError, match="not its model"):
        model_part(Update({"w": jnp.zeros((4, 3))}), params)


def test_replicated_server_state_is_refused_on_the_clock():
    from workbench.clock import build_clock

    for spec in (
        {"name": "fedavg", "server_optimizer": {"name": "adam"}},
        {"name": "fedavg", "server_lr": 0.5},
        {"name": "scaffold"},
    ):
        alg = ALGORITHMS.build(
            spec, "algorithm", loss_fn=lambda p, b: 0.0,
            optimizer=__import__("workbench.optim").optim.local_optimizer(0.1),
        )  # fmt: skip
        with pytest.raises(ScenarioError, match="copy of the server's state"):
            build_clock(None, alg, spec["name"], 4, 0, 1.0, 1.0, {})
    plain = ALGORITHMS.build(
        {"name": "fedavg"}, "algorithm", loss_fn=lambda p, b: 0.0,
        optimizer=lambda steps: optax.sgd(0.1),
    )  # fmt: skip
    build_clock(None, plain, "fedavg", 4, 0, 1.0, 1.0, {})  # plain FedAvg runs


def test_fedavg_with_the_median_aggregates_the_median_client():
    fn = AGGREGATORS.build({"name": "median"}, "a")
    make = functools.partial(fedavg, aggregate=fn)
    state = run(make, W, A, B, LR, 1, local_steps=2)
    np.testing.assert_allclose(
        np.asarray(state.params), np.median(local_gd(0.0, 2)), rtol=1e-12
    )


def test_a_robust_aggregator_is_refused_on_the_clock():
    from workbench.clock import build_clock

    alg = ALGORITHMS.build(
        {"name": "fedavg", "aggregator": {"name": "median"}},
        "algorithm",
        loss_fn=lambda p, b: 0.0,
        optimizer=lambda steps: optax.sgd(0.1),
    )
    with pytest.raises(ScenarioError, match="algorithm.aggregator: a robust"):
        build_clock(None, alg, "fedavg", 4, 0, 1.0, 1.0, {})


def test_server_lr_and_a_server_optimizer_together_are_refused():
    with pytest.raises(ScenarioError, match="algorithm.server_lr"):
        ALGORITHMS.build(
            {"name": "fedavg", "server_lr": 0.5, "server_optimizer": {"name": "adam"}},
            "algorithm",
            loss_fn=lambda p, b: 0.0,
            optimizer=lambda steps: optax.sgd(0.1),
        )


# ------------------------------------------------------------ SCAFFOLD


def scaffold_alg(tau, fraction=1.0):
    def make(loss_fn, opt):
        return scaffold(loss_fn, opt, optax.constant_schedule(LR), tau, fraction, 8)

    return make


def test_scaffold_removes_the_client_drift_fedavg_has():
    tau = 20
    drift = run(fedavg, W, A, B, LR, 300, local_steps=tau, weights=np.ones(8))
    np.testing.assert_allclose(np.asarray(drift.params), 3.529473, atol=1e-6)
    state = run(scaffold_alg(tau), W, A, B, LR, 300, local_steps=tau)
    np.testing.assert_allclose(np.asarray(state.params), X_STAR, atol=1e-9)
    # the control variates converge to the clients' gradients at x*
    np.testing.assert_allclose(np.asarray(state.own), A * (X_STAR - B), atol=1e-7)
    np.testing.assert_allclose(np.asarray(state.control), 0.0, atol=1e-7)


def test_scaffold_with_half_the_clients_keeps_c_the_mean_of_the_c_i():
    """c <- c + (m/n) mean(dc_i) keeps c = mean_i c_i after every round."""
    for rounds in (1, 3):
        state = run(
            scaffold_alg(5, 0.5), W, A, B, LR, rounds, local_steps=5, participants=4
        )
        own = np.asarray(state.own)
        np.testing.assert_allclose(np.asarray(state.control), own.mean(), rtol=1e-12)
    state = run(scaffold_alg(5, 0.5), W, A, B, LR, 400, local_steps=5, participants=4)
    np.testing.assert_allclose(np.asarray(state.params), X_STAR, atol=1e-8)


def test_scaffold_refuses_a_momentum_optimizer():
    from workbench.optim import local_optimizer

    with pytest.raises(ScenarioError, match="algorithm.optimizer: scaffold"):
        ALGORITHMS.build(
            {"name": "scaffold"},
            "algorithm",
            loss_fn=lambda p, b: 0.0,
            optimizer=local_optimizer(0.1, momentum=0.9),
        )


# ------------------------------------------------------------ end to end


@pytest.mark.parametrize(
    "algorithm",
    [
        {"name": "fedavg", "weighting": "loss", "aggregator": {"name": "median"}},
        {"name": "fedavg", "server_optimizer": {"name": "adam", "lr": 0.05}},
        {"name": "fedprox", "mu": 0.1, "local_steps": 2},
        {"name": "scaffold", "local_steps": 2, "client_fraction": 0.5},
    ],
    ids=["loss-median", "fedadam", "fedprox", "scaffold"],
)
def test_the_family_runs_from_a_scenario(tmp_path, algorithm):
    from tests.test_engine import rows, write_scenario
    from workbench import runner

    path = write_scenario(
        tmp_path, peers=4, rounds=6, algorithm={"lr": 0.1, **algorithm}
    )
    with jax.enable_x64(False):  # the engine's float32 run
        run = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False)
    summary = run.summary
    metrics = rows(tmp_path / "r" / "metrics.csv")
    # every client holds the server's model: consensus is exact
    assert summary["final_consensus_distance"] == pytest.approx(0.0, abs=1e-10)
    uploads = 2 if algorithm["name"] == "scaffold" else 4  # half the clients
    per_model = 32 * summary["num_params"] / 8  # bytes
    if algorithm["name"] == "scaffold":
        per_model *= 2  # the model and the control variate, both ways
    extra = 4 * 4 if algorithm.get("weighting") == "loss" else 0  # the scores
    assert float(metrics[-1]["bytes_sent_total"]) == pytest.approx(
        6 * (2 * uploads * per_model + extra)
    )
    assert float(metrics[-1]["test_acc_mean"]) > 0.3  # chance is 0.1
