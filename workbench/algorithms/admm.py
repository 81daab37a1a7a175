"""Decentralized ADMM (Shi, Ling, Yuan, Wu and Yin, arXiv 1307.5561).

Each peer keeps a dual alpha_i (one vector, not one per edge) and the sum of
its neighbours' models from the last exchange. One round, penalty c:

    x_i     = argmin_x f_i(x) + <alpha_i, x> + c sum_{j in N_i} ||x - (x_i + x_j)/2||^2
    (send x_i to every neighbour)
    alpha_i <- alpha_i + c sum_{j in N_i} (x_i - x_j)

The argmin is f_i(x) + <alpha_i - c (d_i x_i + sum_j x_j), x> + c d_i ||x||^2
up to a constant: the ``newton`` solve (exact for least squares) or ``sgd``
inner steps (workbench.algorithms.edges). With alpha_0 = 0 the duals stay in
the range of the graph Laplacian and the fixed point is the exact optimum of
sum_i f_i. Before the first exchange the neighbours' sum is taken as d_i x_i
(all peers start from the same model). The ``gather`` exchange delivers the
neighbours' models; a round costs one vector per edge.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import Algorithm, LossFn, PyTree, RoundStructure
from workbench.algorithms.edges import Solver, column_sum, solve
from workbench.algorithms.registry import ALGORITHMS


class ADMMState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) stacked: x_i
    opt_state: PyTree  # the inner solver's optax state, like params
    dual: PyTree  # like params: alpha_i (starts at 0)
    neighbours: PyTree  # like params: sum_j x_j from the last exchange
    step: jax.Array  # () int32 rounds done
    loss: jax.Array  # () mean training loss of the round's batches


def admm(
    loss_fn: LossFn,
    inner: optax.GradientTransformation,
    *,
    c: float = 1.0,
    solver: Solver = "sgd",
    steps: int = 1,
) -> Algorithm:
    """Decentralized ADMM with penalty ``c`` (module doc)."""

    def init(params, key):
        del key
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
        return ADMMState(
            params,
            inner.init(params),
            zeros(),
            zeros(),
            jnp.zeros((), jnp.int32),
            jnp.zeros(()),
        )

    def local(state, batches, topo, key):
        del key
        d = topo.degree.astype(jnp.result_type(float))
        first = state.step == 0
        linear = jax.tree.map(
            lambda a, x, s: a - c * (d * x + jnp.where(first, d * x, s)),
            state.dual,
            state.params,
            state.neighbours,
        )
        x, opt_state, loss = solve(
            solver,
            loss_fn,
            inner,
            state.params,
            state.opt_state,
            batches,
            linear,
            2 * c * d,
        )
        return state._replace(params=x, opt_state=opt_state, loss=loss), x

    def combine(state, inbox, topo):
        d = topo.degree.astype(jnp.result_type(float))
        total = column_sum(inbox.messages, inbox.mask)
        dual = jax.tree.map(
            lambda a, x, s: a + c * (d * x - s), state.dual, state.params, total
        )
        return state._replace(dual=dual, neighbours=total, step=state.step + 1)

    rounds = RoundStructure(local_steps=steps, static_graph=True, undirected=True)
    return Algorithm(init, local, combine, "gather", rounds, uses_topology=True)


@ALGORITHMS.register("admm")
def _admm(
    loss_fn,
    optimizer,
    *,
    c: Annotated[float, annotated_types.Gt(0)] = 1.0,
    solver: Solver = "sgd",
    local_steps: Annotated[int, annotated_types.Ge(1)] = 1,
) -> Algorithm:
    return admm(loss_fn, optimizer(local_steps), c=c, solver=solver, steps=local_steps)
