"""CHOCO-SGD and compressed D-SGD through the real jitted chunk.

Vector quadratics f_i(x) = sum_c (a_ic/2)(x_c - b_ic)^2 with exact gradients
(each peer's "dataset" is one row (a_i, b_i)): CHOCO gossip converges to the
exact average for a small gamma and diverges for a large one, CHOCO with the
identity compressor is D-SGD, CHOCO's fixed point does not depend on the
compressor, the bytes it reports are the top-k formula, and compressed D-SGD
with the identity compressor is D-SGD bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.quadratic import ring_weights
from workbench.algorithms import ALGORITHMS, dsgd
from workbench.algorithms.choco import ChocoState, choco
from workbench.algorithms.compressed import compressed_dsgd
from workbench.comm import from_matrix
from workbench.compression import COMPRESSORS, error_feedback
from workbench.errors import ScenarioError
from workbench.execution import lift
from workbench.rounds import PeerData, RoundSpec, make_chunk


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def vector_loss(params, batch):
    a, b = batch.x[:, 0], batch.x[:, 1]  # (batch, d) each
    return jnp.mean(jnp.sum(0.5 * a * (params[None] - b) ** 2, axis=-1))


def vector_data(a, b) -> PeerData:
    """Peer i's one example is the (2, d) row (a_i, b_i)."""
    x = jnp.stack([jnp.asarray(a, float), jnp.asarray(b, float)], axis=1)[:, None]
    n = x.shape[0]
    return PeerData(x, jnp.zeros((n, 1), jnp.int32), jnp.ones((n,), jnp.int32))


class Runner:
    """Runs an algorithm's jitted chunk, a number of rounds per call."""

    def __init__(self, alg, W, data, x0, *, local_steps=1):
        n = W.shape[0]
        alg = alg._replace(rounds=alg.rounds._replace(local_steps=local_steps))
        spec = RoundSpec(alg, lambda d, t, k: d, lambda f: lift(f, "vmap", None), n, 1)
        params = jnp.array(x0, dtype=float)  # a copy: the chunk donates the state
        self.state = jax.vmap(alg.init)(params, jax.random.split(jax.random.key(0), n))
        self.chunk, self.data = make_chunk(spec, seed=0), data
        self.topo, self.n, self.t = from_matrix("dense", W), n, 0

    def __call__(self, rounds: int):
        """Runs ``rounds`` rounds; returns Traffic.sent (rounds, n) in bits."""
        self.state, traffic = self.chunk(
            self.state, self.data, self.topo, jnp.ones((self.n,)), self.t, rounds
        )
        self.t += rounds
        return np.asarray(traffic.sent)

    @property
    def params(self) -> np.ndarray:
        return np.asarray(self.state.params)


def topk(k=None, fraction=None):
    return COMPRESSORS.build({"name": "topk", "k": k, "fraction": fraction}, "c")


# ------------------------------------------------------------------ CHOCO


N, D = 8, 20
X0 = np.random.default_rng(0).standard_normal((N, D))
ERR0 = float(np.linalg.norm(X0 - X0.mean(0)))  # 11.567787


def gossip(gamma: float) -> Runner:
    """CHOCO consensus only (a = 0, lr = 0): top-2 of d = 20 on the 8-ring."""
    alg = choco(vector_loss, optax.sgd(0.0), topk(k=2), gamma)
    zeros = np.zeros((N, D))
    return Runner(alg, ring_weights(N), vector_data(zeros, zeros), X0)


def test_choco_gossip_converges_to_the_exact_average(x64):
    run, avg = gossip(0.2), X0.mean(0)
    for t in range(500):
        sent = run(1)
        # the average is preserved at every round, up to float64 rounding
        assert np.abs(run.params.mean(0) - avg).max() < 1e-13
        # top-2: 2 * (64 + ceil(log2 20)) bits, to each of 2 neighbours
        np.testing.assert_array_equal(sent, 2 * 2 * (64 + 5))
        if t + 1 == 100:
            err100 = np.linalg.norm(run.params - avg)
    assert err100 == pytest.approx(0.083832, rel=1e-4)
    assert np.linalg.norm(run.params - avg) < 1e-6  # 3.1e-9 at round 500


def test_choco_gossip_diverges_for_a_large_gamma(x64):
    run = gossip(0.5)
    run(300)
    err = np.linalg.norm(run.params - X0.mean(0))
    assert not np.isfinite(err) or err > 5 * ERR0  # 166 at round 300


A4 = np.repeat(np.array([1.0, 2.0] * 4)[:, None], 4, axis=1)  # tests/quadratic's a
B4 = np.arange(8.0)[:, None] + 0.25 * np.arange(4)[None]  # its b, shifted per c
X_STAR = (A4 * B4).sum(0) / A4.sum(0)  # 44/12 + c/4


def test_identity_compressor_gives_dsgd_adapt_then_combine(x64):
    """compressed_dsgd (gamma = 1, with or without the residual) is D-SGD (ATC)
    bit for bit; CHOCO (gamma = 1) is it to rounding: Xhat = X' after every
    round, so X' + (W - I) Xhat = W X', but summed in another order."""
    identity = COMPRESSORS.build({"name": "identity"}, "c")
    W, data, sgd = ring_weights(8), vector_data(A4, B4), optax.sgd(0.1)

    def final(alg):
        run = Runner(alg, W, data, B4[::-1], local_steps=2)
        return run(40), run.params

    ref_sent, ref = final(dsgd(vector_loss, sgd, order="atc", steps=2))
    np.testing.assert_array_equal(ref_sent, 2 * 4 * 64)  # 4 float64s, 2 neighbours
    for c in (identity, error_feedback(identity)):
        sent, x = final(compressed_dsgd(vector_loss, sgd, c, steps=2))
        np.testing.assert_array_equal(x, ref)
        np.testing.assert_array_equal(sent, ref_sent)
    sent, x = final(choco(vector_loss, sgd, identity, 1.0, steps=2))
    np.testing.assert_allclose(x, ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(sent, ref_sent)


def lazy_dsgd_fixed_point(W, gamma, lr):
    """Solves X = W_gamma (X - lr a (X - b)), W_gamma = (1 - gamma) I + gamma W,
    for each coordinate: D-SGD (ATC) on the lazy matrix."""
    lazy = (1 - gamma) * np.eye(len(W)) + gamma * W
    cols = [
        np.linalg.solve(np.eye(len(W)) - lazy * (1 - lr * a), lazy @ (lr * a * b))
        for a, b in zip(A4.T, B4.T, strict=True)
    ]
    return np.stack(cols, axis=1)


def test_choco_fixed_point_does_not_depend_on_the_compressor(x64):
    """At a fixed point Q = 0 and Xhat = X', so X = X' + gamma (W - I) X': the
    fixed point of D-SGD on W_gamma, here reached with top-1 of 4 coordinates."""
    gamma, W = 0.2, ring_weights(8)
    alg = choco(vector_loss, optax.sgd(0.1), topk(k=1), gamma)
    run = Runner(alg, W, vector_data(A4, B4), np.zeros((8, 4)))
    run(3000)
    fixed = lazy_dsgd_fixed_point(W, gamma, 0.1)
    np.testing.assert_allclose(run.params, fixed, atol=1e-12)  # 6e-15
    adapted = fixed - 0.1 * A4 * (fixed - B4)  # X', which Xhat has caught up with
    np.testing.assert_allclose(np.asarray(run.state.xhat), adapted, atol=1e-12)


def torus_weights(side: int) -> np.ndarray:
    """The side x side torus with weight 1/5 on each of the 4 neighbours and self."""
    n = side * side
    W = np.zeros((n, n))
    for r in range(side):
        for c in range(side):
            i = r * side + c
            for dr, dc in ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)):
                W[i, ((r + dr) % side) * side + (c + dc) % side] = 0.2
    return W


def test_choco_top_1_percent_bytes_on_a_torus():
    """float32, d = 10,000, 16 peers on the 4x4 torus (4 out-neighbours each)."""
    n, d = 16, 10_000
    W = torus_weights(4)
    x0 = np.asarray(jax.random.normal(jax.random.key(1), (n, d)), np.float32)
    data = vector_data(np.ones((n, d)), np.zeros((n, d)))
    alg = choco(vector_loss, optax.sgd(0.1), topk(fraction=0.01), 0.2)
    choco_sent = Runner(alg, W, data, x0)(1)
    dsgd_sent = Runner(dsgd(vector_loss, optax.sgd(0.1)), W, data, x0)(1)
    k = 100  # round(0.01 * 10,000)
    per_message = k * (32 + 14)  # value bits + ceil(log2 10,000) index bits
    np.testing.assert_array_equal(choco_sent, 4 * per_message)  # 18,400 bits
    np.testing.assert_array_equal(dsgd_sent, 4 * d * 32)  # 1,280,000 bits
    ratio = choco_sent.sum() / dsgd_sent.sum()
    assert ratio == pytest.approx(0.014375)
    assert ratio <= 0.03


def test_choco_state_holds_no_residual_unless_asked():
    build = ALGORITHMS["choco"]
    kw = dict(optimizer=lambda steps: optax.sgd(0.1), gamma=0.3)
    plain = build(vector_loss, compressor={"name": "scaled_sign"}, **kw)
    state = plain.init(jnp.zeros(5), jax.random.key(0))
    assert isinstance(state, ChocoState)
    assert state.compressor == ()
    wanted = {"name": "scaled_sign", "error_feedback": True}
    ef = build(vector_loss, compressor=wanted, **kw).init(jnp.zeros(5), None)
    np.testing.assert_array_equal(ef.compressor.residual, np.zeros(5))


# -------------------------------------------------------- compressed D-SGD


def test_compressed_dsgd_topk_with_error_feedback_settles_near_the_optimum(x64):
    """top-2 of d = 4, gamma = 0.5, lr = 0.1 on the 8-ring. The iterates settle
    into a cycle around x*: the network average within 0.02 of x* (0.019; D-SGD's
    own bias: 0.0057), every peer within 2.1 (2.045; D-SGD: 1.064); without the
    residual the average is 0.063 off and a peer 3.23."""
    W, data = ring_weights(8), vector_data(A4, B4)

    def final(c):
        run = Runner(
            compressed_dsgd(vector_loss, optax.sgd(0.1), c, gamma=0.5),
            W,
            data,
            np.zeros((8, 4)),
        )
        run(1000)
        x = run.params
        return np.abs(x.mean(0) - X_STAR).max(), np.abs(x - X_STAR).max()

    mean_err, peer_err = final(error_feedback(topk(k=2)))
    assert mean_err < 0.02
    assert peer_err < 2.1
    mean_plain, peer_plain = final(topk(k=2))
    assert mean_plain > 2 * mean_err
    assert peer_plain > peer_err


# --------------------------------------------------------------- registry


def build(spec):
    return ALGORITHMS.build(
        spec, "algorithm", loss_fn=vector_loss, optimizer=lambda s: optax.sgd(0.1)
    )


def test_registry_builds_with_a_compressor_section():
    section = {"name": "topk", "k": 3, "per_tensor": True}
    alg = build(
        {"name": "choco", "compressor": section, "gamma": 0.2, "local_steps": 2}
    )
    assert alg.exchange == "average" and alg.rounds.local_steps == 2
    assert section == {"name": "topk", "k": 3, "per_tensor": True}  # not changed
    alg = build({"name": "compressed_dsgd", "compressor": {"name": "qsgd"}})
    assert alg.exchange == "average" and alg.rounds.local_steps == 1
    state = alg.init(jnp.zeros(7), None)
    np.testing.assert_array_equal(state.compressor.residual, np.zeros(7))
    plain = build({"name": "compressed_dsgd", "error_feedback": False})
    assert plain.init(jnp.zeros(7), None).compressor == ()


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        (
            {"name": "choco", "gamma": 0.2, "compressor": {"name": "topq"}},
            "algorithm.compressor.name",
            "did you mean 'topk'",
        ),
        (
            {"name": "choco", "gamma": 0.2, "compressor": {"fraction": 0.1}},
            "algorithm.compressor.name",
            "missing",
        ),
        (
            {
                "name": "choco",
                "gamma": 0.2,
                "compressor": {"name": "topk", "fraction": 2},
            },
            "algorithm.compressor.fraction",
            "(0, 1]",
        ),
        (
            {
                "name": "choco",
                "gamma": 0.2,
                "compressor": {"name": "topk", "frac": 0.1},
            },
            "algorithm.compressor.frac",
            "did you mean 'fraction'",
        ),
        ({"name": "choco"}, "algorithm.gamma", "missing"),
        ({"name": "choco", "gamma": 1.5}, "algorithm.gamma", "less than or equal to 1"),
        (
            {
                "name": "compressed_dsgd",
                "compressor": {"name": "scaled_sign", "error_feedback": False},
            },
            "algorithm.compressor.error_feedback",
            "remove this key",
        ),
    ],
)
def test_bad_sections_are_one_line_scenario_errors(spec, path, words):
    with pytest.raises(ScenarioError) as e:
        build(spec)
    assert e.value.path == path
    assert words in str(e.value) and "\n" not in str(e.value)


def test_compressor_section_is_checked_with_the_algorithm_keys():
    """What the scenario parser runs, before any data is loaded."""
    with pytest.raises(ScenarioError) as e:
        ALGORITHMS.validate(
            "choco", {"gamma": 0.2, "compressor": {"name": "topq"}}, "algorithm"
        )
    assert e.value.path == "algorithm.compressor.name"
    with pytest.raises(ScenarioError) as e:
        ALGORITHMS.validate("choco", {"gamma": 0.2, "compressor": "topk"}, "algorithm")
    assert e.value.path == "algorithm.compressor"
