"""D^2 (arXiv 1803.07068) and exact diffusion (arXiv 1702.05122).

Stacked form (rows = peers, G_t the stochastic gradients at X_t, eta the step):

D^2:
    X_1     = W (X_0 - eta G_0)
    X_{t+1} = W (2 X_t - X_{t-1} - eta (G_t - G_{t-1}))
exact diffusion: the same recursion with W replaced by (I + W) / 2, i.e.
    psi_{t+1} = X_t - eta G_t                (adapt)
    phi_{t+1} = psi_{t+1} + X_t - psi_t      (correct; psi_0 = X_0)
    X_{t+1}   = (phi_{t+1} + W phi_{t+1}) / 2 (combine)

Both are the one recursion: with the adapted point H_t = X_t - eta G_t and
H_{-1} = X_0, a peer sends M_t = H_t + X_t - H_{t-1} (one vector per round, like
D-SGD) and X_{t+1} = W M_t (D^2) or (M_t + W M_t) / 2 (exact diffusion, which
applies the laziness itself: the exchange delivers W M_t). The correction
X_t - H_{t-1} removes D-SGD's heterogeneity bias: with exact gradients the fixed
point is the consensual optimum x*, and mean(X_{t+1}) = mean(X_t) - eta mean(G_t).

The adapt step is the local optax transformation (plain SGD: exactly
X_t - eta G_t); with ``local_steps`` tau > 1 it is tau optax steps, as in D-SGD,
and the fixed point becomes the one of tau local steps (FedAvg's drift).

W must be symmetric and doubly stochastic; D^2 also needs lambda_min(W) > -1/3
(exact diffusion's (I + W)/2 has lambda_min >= 0 for any such W).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
)
from workbench.algorithms.registry import ALGORITHMS


class DiffusionState(NamedTuple):
    params: PyTree  # leaves (...) per peer, (n, ...) stacked: X_t
    opt_state: PyTree  # the local optimizer's state, same stacking
    half: PyTree  # like params: H_{t-1}, the last adapted point (H_{-1} = X_0)
    sent: PyTree  # exact diffusion: M_t, this round's message, like params; D^2: None
    loss: jax.Array  # () mean training loss of the round's local steps


def diffusion(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    lazy: bool,
    steps: int = 1,
) -> Algorithm:
    """D^2 (``lazy=False``) or exact diffusion (``lazy=True``: W -> (I + W)/2).

    Args:
      steps: local optax steps (tau) per round in the adapt step.
    """

    def init(params, key):
        del key
        sent = jax.tree.map(jnp.zeros_like, params) if lazy else None
        half = jax.tree.map(jnp.copy, params)  # its own buffer: the state is donated
        return DiffusionState(params, local_opt.init(params), half, sent, jnp.zeros(()))

    def local(state, batches, topo, key):
        del topo, key
        half, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        message = jax.tree.map(
            lambda h, x, h_prev: h + (x - h_prev), half, state.params, state.half
        )
        new = state._replace(
            opt_state=opt_state,
            half=half,
            sent=message if lazy else None,
            loss=loss,
        )
        return new, message

    def combine(state, inbox, topo):
        del topo
        if not lazy:
            return state._replace(params=inbox)
        params = jax.tree.map(lambda m, wm: 0.5 * (m + wm), state.sent, inbox)
        return state._replace(params=params)

    return Algorithm(init, local, combine, "average", RoundStructure(steps))


def d2(loss_fn: LossFn, local_opt: optax.GradientTransformation, steps: int = 1):
    """D^2: X_{t+1} = W (2 X_t - X_{t-1} - eta (G_t - G_{t-1}))."""
    return diffusion(loss_fn, local_opt, lazy=False, steps=steps)


def exact_diffusion(
    loss_fn: LossFn, local_opt: optax.GradientTransformation, steps: int = 1
):
    """Exact diffusion: D^2 with the lazy matrix (I + W) / 2."""
    return diffusion(loss_fn, local_opt, lazy=True, steps=steps)


@ALGORITHMS.register("d2")
def _d2(loss_fn, optimizer, *, local_steps: int = 1) -> Algorithm:
    return d2(loss_fn, optimizer(local_steps), local_steps)


@ALGORITHMS.register("exact_diffusion")
def _exact_diffusion(loss_fn, optimizer, *, local_steps: int = 1) -> Algorithm:
    return exact_diffusion(loss_fn, optimizer(local_steps), local_steps)
