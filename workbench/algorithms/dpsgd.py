"""Local DP-SGD (Abadi et al. 2016) under D-SGD averaging: the privacy baseline.

Each local step clips every example's gradient to L2 norm ``clip``, sums them,
adds N(0, (noise_multiplier * clip)^2) per coordinate, divides by the batch
size and hands the result to the local optax optimizer; the round then
averages with W like ``dsgd`` (adapt-then-combine). Every message a peer sends
is a post-processing of these noisy steps, so its privacy is the local-DP
guarantee of DP-SGD (``workbench.privacy.accounting.gaussian_epsilon``).
``clip: .inf`` with ``noise_multiplier: 0`` is exactly ``dsgd``.
"""

from __future__ import annotations

import math

import jax
import optax

from workbench.algorithms.base import Algorithm, LossFn, RoundStructure
from workbench.algorithms.dsgd import DSGDState
from workbench.algorithms.noise import private_gradient
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError


def dpsgd(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    *,
    clip: float,
    noise_multiplier: float,
    steps: int = 1,
) -> Algorithm:
    """D-SGD whose local steps are DP-SGD steps (per-example clip + Gaussian noise)."""

    def init(params, key):
        del key
        return DSGDState(params, local_opt.init(params), None, jax.numpy.zeros(()))

    def local(state, batches, topo, key):
        del topo

        def step(carry, inputs):
            params, opt_state = carry
            batch, k = inputs
            loss, grad = private_gradient(
                loss_fn, params, batch, k, clip, noise_multiplier
            )
            updates, opt_state = local_opt.update(grad, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, steps)
        carry = (state.params, state.opt_state)
        (params, opt_state), losses = jax.lax.scan(step, carry, (batches, keys))
        new = state._replace(params=params, opt_state=opt_state, loss=losses.mean())
        return new, params

    def combine(state, inbox, topo):
        del topo
        return state._replace(params=inbox)

    return Algorithm(init, local, combine, "average", RoundStructure(local_steps=steps))


@ALGORITHMS.register("dpsgd")
def _dpsgd(
    loss_fn,
    optimizer,
    *,
    clip: float = 1.0,
    noise_multiplier: float = 1.0,
    local_steps: int = 1,
) -> Algorithm:
    if not clip > 0:
        raise ScenarioError("algorithm.clip", f"must be > 0 (or .inf), got {clip}")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise ScenarioError(
            "algorithm.noise_multiplier", f"must be >= 0, got {noise_multiplier}"
        )
    mechanism = {
        "mechanism": "dpsgd",
        "noise_multiplier": noise_multiplier,
        "local_steps": local_steps,
    }
    return dpsgd(
        loss_fn,
        optimizer(local_steps),
        clip=clip,
        noise_multiplier=noise_multiplier,
        steps=local_steps,
    )._replace(privacy=mechanism)
