"""Gradient tracking: DIGing (CTA, arXiv 1607.03218) and ATC-DIGing / Aug-DGM.

Stacked form (rows = peers, W the mixing matrix, G_t the stochastic gradients
at X_t, eta the step of the local optimizer):

combine-then-adapt (``cta``, DIGing; one exchange of (x, y) per round):
    X_{t+1} = W X_t - eta Y_t
    Y_{t+1} = W Y_t + G_{t+1} - G_t,                    Y_0 = G_0
adapt-then-combine (``atc``, ATC-DIGing of Nedic, Olshevsky, Shi and Uribe,
Aug-DGM of Xu, Zhu, Soh and Xie):
    Y_t     = W (Y_{t-1} + G_t - G_{t-1}),               Y_0 = G_0
    X_{t+1} = W (X_t - eta Y_t)

Y tracks the network-average gradient: for a doubly stochastic W,
mean(Y_t) = mean(G_t) at every t, so mean(X_{t+1}) = mean(X_t) - eta mean(G_t).
With exact gradients the fixed point is the consensual optimum x* (no D-SGD bias).

``atc`` mixes the tracker *after* the new gradient is in it, and the model
after the step along the mixed tracker: two sequential exchanges per round,
so it declares ``gossip_steps=2`` (first the tracker, then the model; each
message is one vector, so a round costs two vectors, like ``cta``). On the
first round the mixed tracker is discarded and Y_0 = G_0 is used (a step
counter in the state says which round is the first).

The step ``-eta Y`` is the local optax transformation applied to Y (plain SGD:
exactly ``-eta Y``; momentum or Adam act on the tracked direction).

Local steps (``cta`` only): with tau > 1 a round takes tau optax steps from
X_t along the tracking-corrected direction ``G(x^k; batch k) + Y_t - G_t``,
where G_t is the first step's gradient (so step 0 goes along Y_t and tau = 1 is
DIGing), and X_{t+1} = W X_t + (x^tau - X_t). The tracker still takes one
gradient per round (at X_t, batch 0). Since the correction Y_t - G_t is known
before the round's gradient (it is W Y_{t-1} - G_{t-1}), the steps need no extra
exchange; x* stays the exact fixed point (no client drift, unlike FedAvg).
``atc`` would need gradients after the tracker exchange, which a round's
``combine`` cannot compute, so it takes one step per round.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.tree_utils import tree_add, tree_sub

from workbench.algorithms.base import Algorithm, LossFn, PyTree, RoundStructure
from workbench.algorithms.registry import ALGORITHMS
from workbench.errors import ScenarioError


class GTMessage(NamedTuple):
    """What a peer sends: the model part, the tracker part (None: not sent)."""

    x: PyTree  # like params, or None
    y: PyTree  # like params, or None


class GTState(NamedTuple):
    params: PyTree  # leaves (...) per peer, (n, ...) stacked: X_t (atc, between
    # its two exchanges: X_t - eta Y_t)
    opt_state: PyTree  # the local optimizer's state, same stacking
    y: PyTree  # like params; at round start cta: W Y_{t-1}, atc: Y_{t-1}
    grad: PyTree  # like params: G_{t-1}, the gradient the tracker last took in
    update: PyTree  # cta: pending local update (x^tau - X_t), like params; atc: None
    step: jax.Array  # () int32 rounds done
    loss: jax.Array  # () mean training loss of the round's local steps


def gradient_tracking(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    order: Literal["atc", "cta"] = "cta",
    steps: int = 1,
) -> Algorithm:
    """Gradient tracking; ``order`` picks ATC-DIGing or DIGing (CTA).

    Args:
      steps: local optax steps (tau) per round; ``cta`` only (see module doc).
    """
    if order not in ("atc", "cta"):
        raise ValueError(f"order must be 'atc' or 'cta', got {order!r}")
    if order == "atc" and steps != 1:
        raise ValueError("gradient tracking with order 'atc' takes one local step")

    def init(params, key):
        del key

        def zeros():  # a new buffer per field: the state is donated
            return jax.tree.map(jnp.zeros_like, params)

        return GTState(
            params,
            local_opt.init(params),
            zeros(),
            zeros(),
            zeros() if order == "cta" else None,
            jnp.zeros((), jnp.int32),
            jnp.zeros(()),
        )

    def local_cta(state, batches):
        correction = tree_sub(state.y, state.grad)  # W Y_{t-1} - G_{t-1} = Y_t - G_t

        def one(carry, batch):
            params, opt_state = carry
            loss, g = jax.value_and_grad(loss_fn)(params, batch)
            direction = tree_add(g, correction)
            updates, opt_state = local_opt.update(direction, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, g)

        (params, opt_state), (losses, grads) = jax.lax.scan(
            one, (state.params, state.opt_state), batches
        )
        grad = jax.tree.map(lambda g: g[0], grads)  # G_t: at X_t, batch 0
        y = tree_add(correction, grad)  # Y_t (Y_0 = G_0: y and grad start at 0)
        new = state._replace(
            opt_state=opt_state,
            y=y,
            grad=grad,
            update=tree_sub(params, state.params),
            loss=losses.mean(),
        )
        return new, GTMessage(state.params, y)

    def local_atc(state, batches):
        loss, grad = jax.value_and_grad(loss_fn)(
            state.params, jax.tree.map(lambda b: b[0], batches)
        )
        pre = tree_add(state.y, tree_sub(grad, state.grad))  # Y_{t-1} + G_t - G_{t-1}
        new = state._replace(y=pre, grad=grad, loss=loss)
        return new, GTMessage(None, pre)

    def local(state, batches, topo, key):
        del topo, key
        return (local_cta if order == "cta" else local_atc)(state, batches)

    def combine(state, inbox, topo):
        del topo
        if order == "cta":
            params = tree_add(inbox.x, state.update)
            return state._replace(params=params, y=inbox.y, step=state.step + 1)
        if inbox.x is None:  # first exchange: the tracker; then step along it
            first = state.step == 0
            y = jax.tree.map(
                lambda own, mixed: jnp.where(first, own, mixed), state.y, inbox.y
            )
            updates, opt_state = local_opt.update(y, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)  # X_t - eta Y_t
            return state._replace(params=params, opt_state=opt_state, y=y)
        return state._replace(params=inbox.x, step=state.step + 1)

    def resend(state, topo):
        del topo
        return GTMessage(state.params, None)

    if order == "cta":
        return Algorithm(init, local, combine, "average", RoundStructure(steps))
    rounds = RoundStructure(local_steps=1, gossip_steps=2)
    return Algorithm(init, local, combine, "average", rounds, resend=resend)


@ALGORITHMS.register("gradient_tracking")
def _gradient_tracking(
    loss_fn, optimizer, *, order: Literal["atc", "cta"] = "cta", local_steps: int = 1
) -> Algorithm:
    if local_steps < 1:
        raise ScenarioError("algorithm.local_steps", f"must be >= 1, got {local_steps}")
    if order == "atc" and local_steps != 1:
        raise ScenarioError(
            "algorithm.local_steps",
            f"order 'atc' takes one local step per round, got {local_steps}; "
            "use order 'cta' for tracking-corrected local steps",
        )
    return gradient_tracking(loss_fn, optimizer(local_steps), order, local_steps)


@ALGORITHMS.register("diging")
def _diging(loss_fn, optimizer, *, local_steps: int = 1) -> Algorithm:
    return _gradient_tracking(loss_fn, optimizer, order="cta", local_steps=local_steps)
