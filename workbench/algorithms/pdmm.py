"""PDMM (Sherson et al., arXiv 1706.02654): edge duals, theta-averaged.

Each peer i keeps a dual z_{i|j} per edge (A_{i|j} = +1 if i < j else -1, see
workbench.algorithms.edges). One round, with penalty c and d_i neighbours:

    x_i     = argmin_x f_i(x) + sum_j A_{i|j} z_{i|j}^T x + (c/2) d_i ||x||^2
    y_{i|j} = z_{i|j} + 2 c A_{i|j} x_i               (sent to j, edge message)
    z_{j|i} <- (1 - theta) z_{j|i} + theta y_{i|j}    (at j, on receipt)

theta = 1 is PDMM, theta = 1/2 is ADMM (Douglas-Rachford). At a fixed point
x_i = x_j on every edge and sum_i grad f_i(x_i) = 0: the exact optimum of
sum_i f_i, with no step-size bias. The local argmin is the ``newton`` solve
(exact for least squares) or ``sgd`` inner steps (see edges.py). The duals
are per-edge state, one row per neighbour column (padded to the max degree);
each round sends one dual per edge (the ``edge`` exchange), so a round costs
d_i vectors per peer.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import Algorithm, LossFn, PyTree
from workbench.algorithms.edges import (
    Solver,
    column_sum,
    edge_algorithm,
    edge_columns,
    edge_mask,
    from_neighbours,
    outer,
    signs,
    solve,
    stack_columns,
    where_columns,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.messages import PerEdge


class PDMMState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) stacked: x_i
    opt_state: PyTree  # the inner solver's optax state, like params
    z: PyTree  # leaves (k - 1, ...): dual z_{i|j} per edge column (padding: 0)
    loss: jax.Array  # () mean training loss of the round's batches


def pdmm(
    loss_fn: LossFn,
    inner: optax.GradientTransformation,
    *,
    c: float = 1.0,
    theta: float = 1.0,
    solver: Solver = "sgd",
    steps: int = 1,
) -> Algorithm:
    """PDMM with penalty ``c`` and dual averaging ``theta`` (module doc)."""

    def init(params, key, topo):
        del key
        zeros = jax.tree.map(jnp.zeros_like, params)
        z = stack_columns(zeros, edge_columns(topo))
        return PDMMState(params, inner.init(params), z, jnp.zeros(()))

    def local(state, batches, topo, key):
        del key
        a = signs(topo)
        linear = column_sum(state.z, a * edge_mask(topo))  # sum_j A_{i|j} z_{i|j}
        quad = c * topo.degree
        x, opt_state, loss = solve(
            solver, loss_fn, inner, state.params, state.opt_state, batches, linear, quad
        )
        y = jax.tree.map(jnp.add, state.z, outer(2 * c * a, x))
        new = state._replace(params=x, opt_state=opt_state, loss=loss)
        return new, PerEdge(y)

    def message(outbox, sender, receiver, key):
        del sender, receiver, key
        return outbox.value  # y_{j|i}: the receiver's column of the sender's duals

    def combine(state, inbox, topo):
        mixed = jax.tree.map(
            lambda z, y: (1 - theta) * z + theta * y,
            state.z,
            from_neighbours(inbox.messages),
        )
        return state._replace(z=where_columns(edge_mask(topo), mixed, state.z))

    return edge_algorithm(init, local, combine, message, steps)


@ALGORITHMS.register("pdmm")
def _pdmm(
    loss_fn,
    optimizer,
    *,
    c: Annotated[float, annotated_types.Gt(0)] = 1.0,
    theta: Annotated[float, annotated_types.Interval(gt=0, le=1)] = 1.0,
    solver: Solver = "sgd",
    local_steps: Annotated[int, annotated_types.Ge(1)] = 1,
) -> Algorithm:
    return pdmm(
        loss_fn,
        optimizer(local_steps),
        c=c,
        theta=theta,
        solver=solver,
        steps=local_steps,
    )
