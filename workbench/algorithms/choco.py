"""CHOCO-SGD (Koloskova et al. 2019, arXiv 1902.00340): gossip of compressed
differences to public copies.

Every peer i keeps, besides its model x_i, a public copy xhat_i that all its
neighbours can rebuild from what it sent. One round, in matrix form:

    X'   = X - eta G(X)            (tau local optax steps)
    Q    = C(X' - Xhat)            (the only thing sent)
    Xhat = Xhat + Q
    X    = X' + gamma (W - I) Xhat

A peer never needs its neighbours' copies, only s_i = sum_j W_ij xhat_j, which
it keeps up to date with what the ``average`` exchange delivers for the
messages q: s_i <- s_i + sum_j W_ij q_j. This assumes a FIXED mixing matrix W:
CHOCO's copies are defined for a static graph (on a changing W the running sum
s_i is no longer W_t Xhat), so run it on static topologies. With W doubly
stochastic the peers' average is preserved by the consensus step, whatever C
does; gamma must be small enough for the compressor's quality and the graph's
spectral gap, or the copies and the models drift apart.

Messages are ``Coded(q, bits)``: a round costs the compressor's exact bits per
out-neighbour. The compressor acts on the flattened model by default
(``per_tensor: true`` in the compressor section compresses each leaf on its
own). Its randomness comes from the peer's round key; its state lives in the
algorithm state. CHOCO needs no error feedback: what a message leaves out is
still in X' - Xhat and is sent later, and a residual on top counts it twice
(on an 8-ring, scaled sign with its default residual diverges at gamma = 0.2,
without it converges at gamma = 0.5). So ``choco`` builds the compressor with
``error_feedback: false`` unless the section sets it (the sign and threshold
quantizers default it to true elsewhere).

With the identity compressor and gamma = 1 a round is D-SGD adapt-then-combine:
Xhat = X', so X = X' + (W - I) X' = W X' (to rounding: the sums are formed
differently).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import annotated_types
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
from workbench.algorithms.compressed import (
    TOP_1_PERCENT,
    CompressorSpec,
    build_compressor,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.messages import Coded
from workbench.compression import Compressor


class ChocoState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked: the model x_i
    opt_state: PyTree  # the local optimizer's state, same stacking
    xhat: PyTree  # like params: the public copy xhat_i (starts at 0)
    mixed: PyTree  # like params: s_i = sum_j W_ij xhat_j (starts at 0)
    compressor: PyTree  # the compressor's state, e.g. a residual; () if none
    loss: jax.Array  # () mean training loss of the last local steps


def choco(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    compressor: Compressor,
    gamma: float,
    steps: int = 1,
) -> Algorithm:
    """CHOCO-SGD with consensus step size ``gamma`` (see the module docstring).

    Args:
      compressor: C, applied to x'_i - xhat_i.
      gamma: consensus step size, in (0, 1].
      steps: local optax steps (tau) per round.
    """

    def init(params, key):
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ChocoState(
            params,
            local_opt.init(params),
            zeros,
            zeros,
            compressor.init(params),
            jnp.zeros(()),
        )

    def local(state, batches, topo, key):
        del topo
        params, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        diff = jax.tree.map(jnp.subtract, params, state.xhat)
        q, comp, bits = compressor.apply(diff, state.compressor, key)
        xhat = jax.tree.map(jnp.add, state.xhat, q)
        new = state._replace(
            params=params, opt_state=opt_state, xhat=xhat, compressor=comp, loss=loss
        )
        return new, Coded(q, bits)

    def combine(state, inbox, topo):
        del topo
        mixed = jax.tree.map(jnp.add, state.mixed, inbox)
        params = jax.tree.map(
            lambda x, s, xhat: x + gamma * (s - xhat), state.params, mixed, state.xhat
        )
        return state._replace(params=params, mixed=mixed)

    rounds = RoundStructure(local_steps=steps, static_graph=True)
    return Algorithm(init, local, combine, "average", rounds)


@ALGORITHMS.register("choco")
def _choco(
    loss_fn,
    optimizer,
    *,
    compressor: CompressorSpec = TOP_1_PERCENT,  # noqa: B006 (read only)
    gamma: Annotated[float, annotated_types.Interval(gt=0, le=1)],
    local_steps: int = 1,
) -> Algorithm:
    return choco(
        loss_fn,
        optimizer(local_steps),
        build_compressor(compressor, error_feedback=False),
        gamma=gamma,
        steps=local_steps,
    )
