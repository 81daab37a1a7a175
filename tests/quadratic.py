"""A quadratic problem f_i(x) = (a_i/2)(x - b_i)^2 run through the real jitted core.

Each peer's "dataset" is the single row (a_i, b_i); a batch is that row repeated,
so the stochastic gradient is the exact gradient and closed forms apply.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.comm import from_matrix
from workbench.execution import lift
from workbench.rounds import PeerData, RoundSpec, make_chunk


def ring_weights(n: int, w: float = 1 / 3) -> np.ndarray:
    W = np.eye(n) * (1 - 2 * w)
    for i in range(n):
        W[i, (i + 1) % n] = W[i, (i - 1) % n] = w
    return W


def quadratic_loss(params, batch):
    a, b = batch.x[:, 0], batch.x[:, 1]
    return jnp.mean(0.5 * a * (params - b) ** 2)


def quadratic_data(a, b) -> PeerData:
    n = len(a)
    x = jnp.stack([jnp.asarray(a, float), jnp.asarray(b, float)], -1)[:, None, :]
    return PeerData(x, jnp.zeros((n, 1), jnp.int32), jnp.ones((n,), jnp.int32))


def run(
    make_alg,
    W,
    a,
    b,
    lr,
    rounds,
    *,
    local_steps=1,
    participants=None,
    weights=None,
    kernel="dense",
    strategy=("vmap", None),
    x0=None,
):
    """Runs ``rounds`` rounds; returns the final stacked state."""
    n = len(a)
    alg = make_alg(quadratic_loss, optax.sgd(lr))
    rounds_of = alg.rounds._replace(
        local_steps=local_steps, participation=(participants or n) / n
    )
    alg = alg._replace(rounds=rounds_of)
    spec = RoundSpec(alg, lambda d, t, k: d, lambda f: lift(f, *strategy), n, 1)
    params = jnp.zeros((n,)) if x0 is None else jnp.asarray(x0, float)
    state = jax.vmap(alg.init)(params, jax.random.split(jax.random.key(0), n))
    chunk = make_chunk(spec, seed=0)
    w = jnp.ones((n,)) if weights is None else jnp.asarray(weights, float)
    state, _ = chunk(
        state,
        quadratic_data(a, b),
        from_matrix(kernel, W),
        w,
        jnp.int32(0),
        length=rounds,
    )
    return state
