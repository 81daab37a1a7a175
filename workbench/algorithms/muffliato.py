"""Muffliato (Cyffers et al. 2022, arXiv 2206.05091): noise once, then T gossip steps.

A round is ``multi_gossip`` (local steps, then T exchanges with W) with Gaussian
noise added once, before the first exchange. Variants (``variant``):

- ``paper``: x_i <- x_i + N(0, sigma^2 I) after the local steps; the noisy
  model is both sent and kept, so the gossip preserves the noisy mean.
- ``gd`` (Muffliato-GD): the local step is u = clip_L(g + N(0, (sigma/2)^2 I)),
  x <- x - gamma u (gamma, momentum, ... come from the local optax optimizer);
  the paper gossips on a fresh connected Erdos-Renyi(n, ln n / n) graph with
  Metropolis-Hastings weights: ``topology: {name: erdos_renyi, c: 1, period: R}``.
- ``decentralizepy``: as that code base does, the noise is added only to what is
  sent at averaging step 0; a peer weighs its own un-noised model
  (x_i <- W_ii x_i + sum_j W_ij (x_j + n_j)), then gossips plainly.

``acceleration: chebyshev`` uses the constant-omega recursion of the paper,
x^1 = W x^0, x^{t+1} = omega W x^t + (1 - omega) x^{t-1},
omega = 2 (1 - sqrt(lambda (1 - lambda/4))) / (1 - lambda/2)^2, lambda =
lambda_2(I - W), read from the topology. ``gossip_steps: auto`` takes
T = ceil(lambda^(-1/2) ln(n max(1/4, sigma^2) / sigma^2)) with Chebyshev and
lambda^(-1) instead of lambda^(-1/2) without it (plain gossip contracts at
1 - lambda per step instead of about 1 - sqrt(lambda)). ``sigma: 0`` is exactly
``multi_gossip`` with the same steps.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    mean_gradient,
)
from workbench.algorithms.gossip import MultiGossipState, multi_gossip
from workbench.algorithms.noise import add_tree, clip_norm, gaussian_like
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError

Variant = Literal["paper", "gd", "decentralizepy"]


class MuffliatoState(NamedTuple):
    inner: MultiGossipState  # the gossip's state (params, opt_state, ...) per peer
    noise: (
        PyTree  # decentralizepy: noise added to this round's first message; else None
    )

    @property
    def params(self) -> PyTree:
        return self.inner.params


def constant_omegas(lam: float, steps: int) -> np.ndarray:
    """(steps,) omegas of Muffliato's Chebyshev recursion: 1, then the constant."""
    omega = 2 * (1 - math.sqrt(lam * (1 - lam / 4))) / (1 - lam / 2) ** 2
    return np.asarray([1.0] + [omega] * (steps - 1), np.float64)[:steps]


def auto_steps(lam: float, n: int, sigma: float, chebyshev: bool) -> int:
    """T = ceil(lambda^(-1/2 or -1) ln(n max(1/4, sigma^2) / sigma^2)), at least 1."""
    rate = math.sqrt(lam) if chebyshev else lam
    log = math.log(n * max(0.25, sigma**2) / sigma**2)
    return max(1, math.ceil(log / rate))


def muffliato(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    *,
    sigma: float,
    gossip_steps: int,
    omegas: np.ndarray | None = None,
    variant: Variant = "paper",
    clip: float = math.inf,
    steps: int = 1,
) -> Algorithm:
    """Muffliato over ``multi_gossip``; ``omegas`` None is plain gossip."""
    base = multi_gossip(
        loss_fn, local_opt, gossip_steps=gossip_steps, omegas=omegas, steps=steps
    )

    def init(params, key):
        inner = base.init(params, key)
        noise = jax.tree.map(jax.numpy.zeros_like, params)
        return MuffliatoState(inner, noise if variant == "decentralizepy" else None)

    def noisy_step(inner: MultiGossipState, batches, key) -> MultiGossipState:
        loss, grad = mean_gradient(loss_fn, inner.params, batches)
        u = clip_norm(add_tree(grad, gaussian_like(key, grad, sigma / 2)), clip)
        updates, opt_state = local_opt.update(u, inner.opt_state, inner.params)
        params = optax.apply_updates(inner.params, updates)
        zero = jax.numpy.zeros((), jax.numpy.int32)
        return inner._replace(params=params, opt_state=opt_state, step=zero, loss=loss)

    def local(state, batches, topo, key):
        if variant == "gd":
            inner = noisy_step(state.inner, batches, key)
            return state._replace(inner=inner), inner.params
        inner, out = base.local(state.inner, batches, None, key)
        noise = gaussian_like(key, out, sigma)
        sent = add_tree(out, noise)
        if variant == "decentralizepy":
            return MuffliatoState(inner, noise), sent
        return state._replace(inner=inner._replace(params=sent)), sent

    def combine(state, inbox, topo):
        inner = base.combine(state.inner, inbox, None)
        if variant != "decentralizepy":
            return state._replace(inner=inner)
        first = state.inner.step == 0
        w_self = jax.numpy.where(first, topo.weight[0], 0.0)
        params = jax.tree.map(
            lambda p, e: p - w_self.astype(p.dtype) * e, inner.params, state.noise
        )
        return state._replace(inner=inner._replace(params=params))

    def resend(state, topo):
        return base.resend(state.inner, None)

    return base._replace(
        init=init,
        local=local,
        combine=combine,
        resend=resend,
        uses_topology=variant == "decentralizepy",
    )


def _spectral(graph: dict[str, Any] | None, why: str) -> tuple[float, int]:
    lam = (graph or {}).get("lambda2_I_minus_W")
    if lam is None or not lam > 0:
        raise ScenarioError(
            "algorithm.gossip_steps",
            f"{why} needs lambda_2(I - W) > 0 of a static topology, which "
            f"'{(graph or {}).get('name', 'this topology')}' does not give; "
            "set gossip_steps and acceleration: none",
        )
    return float(lam), int(graph["n"])


@ALGORITHMS.register("muffliato")
def _muffliato(
    loss_fn,
    optimizer,
    graph: dict | None = None,
    *,
    sigma: float = 0.0,
    gossip_steps: int | Literal["auto"] = "auto",
    acceleration: Literal["none", "chebyshev"] = "none",
    variant: Variant = "paper",
    clip: float = math.inf,
    local_steps: int = 1,
) -> Algorithm:
    if not sigma >= 0:
        raise ScenarioError("algorithm.sigma", f"must be >= 0, got {sigma}")
    if not clip > 0:
        raise ScenarioError("algorithm.clip", f"must be > 0, got {clip}")
    chebyshev = acceleration == "chebyshev"
    if gossip_steps == "auto":
        if sigma == 0:
            raise ScenarioError(
                "algorithm.gossip_steps", "auto needs sigma > 0 (T grows as ln 1/sigma)"
            )
        lam, n = _spectral(graph, "gossip_steps: auto")
        gossip_steps = auto_steps(lam, n, sigma, chebyshev)
    if gossip_steps < 1:
        raise ScenarioError(
            "algorithm.gossip_steps", f"must be >= 1, got {gossip_steps}"
        )
    omegas = None
    if chebyshev:
        lam, _ = _spectral(graph, "acceleration: chebyshev")
        omegas = constant_omegas(lam, gossip_steps)
    # the pairwise accounting is that of noise added to the model (paper); the
    # others noise a gradient or only the first message: no declared mechanism
    mechanism = None
    if variant == "paper":
        mechanism = {
            "mechanism": "muffliato",
            "sigma": sigma,
            "gossip_steps": gossip_steps,
            "omegas": None if omegas is None else [float(w) for w in omegas],
        }
    return muffliato(
        loss_fn,
        optimizer(local_steps),
        sigma=sigma,
        gossip_steps=gossip_steps,
        omegas=omegas,
        variant=variant,
        clip=clip,
        steps=local_steps,
    )._replace(privacy=mechanism)
