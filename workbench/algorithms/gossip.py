"""D-SGD with several gossip steps per round, optionally Chebyshev-accelerated.

A round is ``local_steps`` local optax steps, then ``gossip_steps`` = g
exchanges with the round's W (the engine's ``resend -> exchange -> combine``):

- plain (``chebyshev: false``): x_{k+1} = W x_k, so the round mixes with W^g.
- Chebyshev (``chebyshev: true``, as in Muffliato, Cyffers et al. 2022,
  arXiv 2206.05091, which accelerates gossip with the Chebyshev semi-iterative
  method of Golub and Varga 1961): with rho = ||W - J||_2,

      x_1     = W x_0                                     (omega_0 = 1)
      x_{k+1} = omega_k W x_k + (1 - omega_k) x_{k-1}     (k >= 1)
      omega_1 = 2 / (2 - rho^2),
      omega_{k+1} = 1 / (1 - rho^2 omega_k / 4)           (k >= 1).

  Then x_k = P_k(W) x_0 with P_k(x) = T_k(x / rho) / T_k(1 / rho), T_k the
  Chebyshev polynomial of the first kind (the recursion is T's three-term
  recurrence, omega_k = 2 T_k(1/rho) / (rho T_{k+1}(1/rho))). P_k(1) = 1 and
  the coefficients sum to 1, so the mean is kept; for symmetric W (spectrum
  of W - J inside [-rho, rho]) the disagreement obeys

      ||x_k - J x_0|| <= ||x_0 - J x_0|| / T_k(1/rho)
                       = ||x_0 - J x_0|| * 2 r^k / (1 + r^{2k}),
      r = rho / (1 + sqrt(1 - rho^2)),

  with equality along an eigenvector of eigenvalue +-rho, instead of rho^k for
  plain gossip. The recursion restarts every round (x_0 = the models after
  the local steps) and uses that round's W for all g steps; it is meant for
  a static symmetric W with the given ``rho`` (a dynamic or directed W gets
  the same affine combinations, still mean-preserving for doubly stochastic
  W_t, but without the bound). The builder never sees the topology, so
  ``rho`` is a scenario key: ``workbench topology describe`` prints it.

Each gossip step is one message per edge, so Traffic counts g per edge per
round. ``order: cta`` mixes the models from before the local steps and adds
the local update after the last gossip step: X <- M X - eta G(X), with
M = W^g (plain) or P_g(W) (Chebyshev); ``atc``: X <- M (X - eta G(X)).

Randomized gossip needs no algorithm of its own: it is D-SGD (this, or
``dsgd``) over a random topology; learning rate 0 gives pure averaging.
Synchronous randomized gossip is ``topology: {name: random_matching}`` (one
random perfect matching per round, matched pairs average) and pairwise gossip
(Boyd et al. 2006) is ``topology: {name: random_edge, graph: <base>}`` (one
uniform random edge {i, j} of the base graph per round,
W_t = I - (e_i - e_j)(e_i - e_j)^T / 2). Epidemic Learning is D-SGD over
``el_oracle`` / ``el_local``.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError


class MultiGossipState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked: current iterate
    opt_state: PyTree  # the local optimizer's state, same stacking
    update: PyTree  # CTA: pending local update x_adapted - x, like params; ATC: None
    prev: PyTree  # Chebyshev: previous gossip iterate x_{k-1}, like params; else None
    step: jax.Array  # () int32 gossip steps done in this round (k)
    loss: jax.Array  # () mean training loss of the last local steps


def chebyshev_omegas(rho: float, steps: int) -> np.ndarray:
    """(steps,) float64 omega_0 .. omega_{steps-1} of the Chebyshev gossip recursion."""
    omegas = [1.0, 2.0 / (2.0 - rho**2)][:steps]
    while len(omegas) < steps:
        omegas.append(1.0 / (1.0 - rho**2 * omegas[-1] / 4.0))
    return np.asarray(omegas, np.float64)


def chebyshev_bound(rho: float, steps: int) -> float:
    """1 / T_k(1/rho) = 2 r^k / (1 + r^{2k}), r = rho / (1 + sqrt(1 - rho^2))."""
    r = rho / (1.0 + math.sqrt(1.0 - rho**2))
    return 2.0 * r**steps / (1.0 + r ** (2 * steps))


def multi_gossip(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    *,
    gossip_steps: int = 1,
    chebyshev: bool = False,
    rho: float | None = None,
    order: Literal["atc", "cta"] = "atc",
    steps: int = 1,
    omegas: np.ndarray | None = None,
) -> Algorithm:
    """D-SGD with ``gossip_steps`` averaging steps per round.

    Args:
      gossip_steps: exchanges with W per round (g >= 1).
      chebyshev: Chebyshev-accelerated gossip (needs ``rho``).
      rho: ||W - J||_2 of the (static, symmetric) mixing matrix, 0 <= rho < 1.
      order: ``atc`` (X <- W^g (X - eta G)) or ``cta`` (X <- W^g X - eta G).
      steps: local optax steps (tau) per round.
      omegas: (gossip_steps,) weights of an accelerated recursion
        x_{k+1} = omega_k W x_k + (1 - omega_k) x_{k-1} given directly (omega_0
        = 1), instead of ``chebyshev``'s (Muffliato's constant omega).
    """
    if gossip_steps < 1:
        raise ValueError(f"gossip_steps must be >= 1, got {gossip_steps}")
    if chebyshev and (rho is None or not 0.0 <= rho < 1.0):
        raise ValueError(f"chebyshev gossip needs 0 <= rho < 1, got rho={rho}")
    if omegas is None and chebyshev:
        omegas = chebyshev_omegas(rho, gossip_steps)
    accelerated = omegas is not None
    last = gossip_steps - 1

    def init(params, key):
        del key
        update = jax.tree.map(jnp.zeros_like, params) if order == "cta" else None
        prev = jax.tree.map(jnp.copy, params) if accelerated else None
        zero = jnp.zeros((), jnp.int32)
        return MultiGossipState(
            params, local_opt.init(params), update, prev, zero, jnp.zeros(())
        )

    def local(state, batches, topo, key):
        del topo, key
        params, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        new = state._replace(opt_state=opt_state, step=jnp.zeros((), jnp.int32))
        if order == "atc":
            return new._replace(params=params, loss=loss), params
        update = jax.tree.map(jnp.subtract, params, state.params)
        return new._replace(update=update, loss=loss), state.params

    def combine(state, inbox, topo):
        del topo
        k = state.step
        mixed, prev = inbox, state.prev
        if accelerated:
            omega = jnp.asarray(omegas)[jnp.minimum(k, last)]

            def accelerate(wx, old):
                w = omega.astype(wx.dtype)
                return w * wx + (1 - w) * old

            mixed = jax.tree.map(accelerate, inbox, state.prev)
            prev = state.params
        if order == "cta":
            done = k == last
            mixed = jax.tree.map(
                lambda x, u: jnp.where(done, x + u, x), mixed, state.update
            )
        return state._replace(params=mixed, prev=prev, step=k + 1)

    def resend(state, topo):
        del topo
        return state.params

    rounds = RoundStructure(local_steps=steps, gossip_steps=gossip_steps)
    return Algorithm(init, local, combine, "average", rounds, resend=resend)


@ALGORITHMS.register("multi_gossip")
def _multi_gossip(
    loss_fn,
    optimizer,
    *,
    gossip_steps: int = 1,
    chebyshev: bool = False,
    rho: float | None = None,
    order: Literal["atc", "cta"] = "atc",
    local_steps: int = 1,
) -> Algorithm:
    if gossip_steps < 1:
        raise ScenarioError(
            "algorithm.gossip_steps", f"must be >= 1, got {gossip_steps}"
        )
    if chebyshev and rho is None:
        raise ScenarioError(
            "algorithm.rho",
            "chebyshev gossip needs rho = ||W - J||_2 of the topology "
            "(`workbench topology describe` prints it)",
        )
    if rho is not None and not 0.0 <= rho < 1.0:
        raise ScenarioError("algorithm.rho", f"needs 0 <= rho < 1, got {rho}")
    return multi_gossip(
        loss_fn,
        optimizer(local_steps),
        gossip_steps=gossip_steps,
        chebyshev=chebyshev,
        rho=rho,
        order=order,
        steps=local_steps,
    )
