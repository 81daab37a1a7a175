"""Per-edge state for primal-dual methods: edge signs, edge schedules, local solves.

A peer's per-edge quantities (duals z_{i|j}, last received models) are arrays
of shape (k - 1, ...), one row per neighbour column of its in-neighbour table
(``PeerTopo.idx`` columns 1..k-1; column 0 is the peer itself and has no
edge; padding is masked out), so a graph of max degree k - 1 needs no ragged
lists. The functions here return such (k - 1,) "edge columns". The constraint
of edge {i, j} is A_{i|j} x_i + A_{j|i} x_j = 0 with A_{i|j} = +1 if i < j
else -1.

Edge schedule: edge {i, j} is exchanged at step t when t mod R equals its
phase. With ``round_robin`` the phase is (i + j) mod R, the same at both ends,
so a peer's edges take turns (on a ring, or K3 with R >= 3, no two edges of a
peer share a phase); otherwise every edge has phase R - 1 (all edges every R
steps, after R local steps). Either way each edge is exchanged exactly once
every R steps.

Local solves, ``argmin_x f(x) + <v, x> + (s/2) ||x||^2`` with f the peer's
loss on the round's batches (mean over them):

- ``newton``: one Newton step on the flattened parameters (a P x P Hessian),
  exact when the loss is quadratic in the parameters (least squares), which
  is what exact ADMM and PDMM assume; for small models only.
- ``sgd``: one step of the local optax optimizer per batch on that objective
  (``local_steps`` of them; an inexact inner solver for any model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from workbench.algorithms.base import (
    Algorithm,
    PeerTopo,
    RoundStructure,
    local_steps,
)
from workbench.errors import ScenarioError

Solver = Literal["newton", "sgd"]
MAX_NEWTON_PARAMS = 4096  # a dense P x P Hessian per peer beyond this is not sensible


def edge_columns(topo: PeerTopo) -> int:
    """k - 1: the per-edge rows a peer keeps (its table's neighbour columns)."""
    return topo.idx.shape[0] - 1


def edge_mask(topo: PeerTopo) -> jax.Array:
    """(k - 1,) bool: the neighbour column is a real edge (not padding)."""
    return topo.mask[1:]


def from_neighbours(inbox_values):
    """An inbox's messages (k, ...) per leaf without column 0 (the peer itself)."""
    return jax.tree.map(lambda v: v[1:], inbox_values)


def signs(topo: PeerTopo) -> jax.Array:
    """(k - 1,) A_{i|j} per edge column: +1 if the peer's index is the smaller."""
    return jnp.where(topo.idx[0] < topo.idx[1:], 1.0, -1.0)


def edge_phase(i, j, interval: int, round_robin: bool) -> jax.Array:
    """int32 phase in [0, interval) of edge {i, j} (symmetric in i and j)."""
    i, j = jnp.asarray(i), jnp.asarray(j)
    if round_robin:
        return ((i + j) % interval).astype(jnp.int32)
    return jnp.full(jnp.broadcast_shapes(i.shape, j.shape), interval - 1, jnp.int32)


def phases(topo: PeerTopo, interval: int, round_robin: bool) -> jax.Array:
    """(k - 1,) int32 phase of each edge column."""
    return edge_phase(topo.idx[0], topo.idx[1:], interval, round_robin)


def scheduled(topo: PeerTopo, step, interval: int, round_robin: bool) -> jax.Array:
    """(k - 1,) bool: the edge column is exchanged at ``step`` (real edges only)."""
    return edge_mask(topo) & (step % interval == phases(topo, interval, round_robin))


def _along_rows(c: jax.Array, v: jax.Array) -> jax.Array:
    """The (k,) array ``c`` shaped to broadcast against a (k, ...) leaf ``v``."""
    return c.reshape((-1,) + (1,) * (v.ndim - 1))


def column_sum(values, c: jax.Array):
    """sum_c c[c] * values[c] per leaf: (k, ...) -> (...).

    Written as k elementwise terms (k is static): XLA on the CPU reduces over
    a leading axis of a large leaf up to 10x slower than it adds k slices.
    """

    def one(v):
        w = c.astype(v.dtype)
        zero = jnp.zeros(v.shape[1:], v.dtype)  # no edge columns: 0
        return sum((w[j] * v[j] for j in range(v.shape[0])), zero)

    return jax.tree.map(one, values)


def outer(c: jax.Array, tree):
    """(k, ...) leaves c[j] * x for each leaf x of ``tree`` (broadcast, no copy)."""
    return jax.tree.map(
        lambda x: _along_rows(c.astype(x.dtype), x[None]) * x[None], tree
    )


def stack_columns(tree, k: int):
    """Each leaf repeated over k columns: (...) -> (k, ...) (a new buffer)."""
    return jax.tree.map(lambda v: jnp.repeat(v[None], k, axis=0), tree)


def where_columns(cond: jax.Array, new, old):
    """Per column: ``new`` where ``cond`` (k,), else ``old``."""
    return jax.tree.map(lambda a, b: jnp.where(_along_rows(cond, a), a, b), new, old)


def edge_algorithm(init, local, combine, message, steps: int = 1) -> Algorithm:
    """An algorithm with per-edge state: ``edge`` exchange, static undirected graph,
    its state sized by round 0's graph."""
    rounds = RoundStructure(local_steps=steps, static_graph=True, undirected=True)
    return Algorithm(
        init,
        local,
        combine,
        "edge",
        rounds,
        message=message,
        uses_topology=True,
        init_topology=True,
    )


def _regularized(loss_fn: Callable, linear, quad) -> Callable:
    def loss(params, batch):
        lin = sum(
            jnp.vdot(v, p)
            for v, p in zip(
                jax.tree.leaves(linear), jax.tree.leaves(params), strict=True
            )
        )
        sq = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return loss_fn(params, batch) + lin + 0.5 * quad * sq

    return loss


def newton_solve(loss_fn: Callable, params, batches, linear, quad):
    """(argmin, mean loss) of mean_b f(x; b) + <linear, x> + (quad/2)||x||^2, one
    Newton step from ``params`` (exact for a quadratic f)."""
    flat, unravel = ravel_pytree(params)
    if flat.size > MAX_NEWTON_PARAMS:
        raise ScenarioError(
            "algorithm.solver",
            f"'newton' needs a {flat.size} x {flat.size} Hessian per peer; "
            f"use solver 'sgd' for models over {MAX_NEWTON_PARAMS} parameters",
        )
    objective = _regularized(loss_fn, linear, quad)

    def total(x):
        per = jax.vmap(lambda b: objective(unravel(x), b))(batches)
        return per.mean()

    g = jax.grad(total)(flat)
    H = jax.hessian(total)(flat)
    x = flat - jnp.linalg.solve(H, g)
    losses = jax.vmap(lambda b: loss_fn(params, b))(batches)
    return unravel(x), losses.mean()


def solve(
    solver: Solver,
    loss_fn: Callable,
    opt: optax.GradientTransformation,
    params,
    opt_state,
    batches,
    linear,
    quad,
):
    """(params, opt_state, mean loss) after the local solve (see module doc)."""
    if solver == "newton":
        x, loss = newton_solve(loss_fn, params, batches, linear, quad)
        return x, opt_state, loss
    objective = _regularized(loss_fn, linear, quad)
    return local_steps(objective, opt, params, opt_state, batches)
