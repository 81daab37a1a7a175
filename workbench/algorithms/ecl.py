"""Edge-consensus learning: stochastic linearized PDMM / ADMM (Niwa et al., KDD 2020)
and its ISVR form (Niwa et al., ICML 2021), the optimizers of the ETRI P2P seed.

Peer i keeps, per edge {i, j} (a column of its table, edges.py): the last
dual it received z_{i|j} (starts at 0), for the ADMM forms an averaged dual
zbar_{i|j} (starts as a copy of the initial model, as the seed does), and,
when rho > 0, the neighbour's last model xhat_j (starts as the initial
model). With alpha the step size (``algorithm.lr`` and its schedule: the
seed's mu = 1/alpha = 200 is lr 0.005), g_i the stochastic gradient and
d_i the degree, one step is

    x_i <- (x_i/alpha - g_i + eta sum_j A_{i|j} zc_{i|j} + rho sum_j xhat_j)
           / (1/alpha + (eta + rho) d_i)
    y_{i|j} = z_{i|j} - 2 A_{i|j} x_i                    (the dual sent to j)

with zc = z (PDMM: on receipt z_{j|i} <- y_{i|j}, a swap) or zc = zbar
(ADMM, ``averaging: seed``, the seed's form: on receipt also
zbar_{j|i} <- (zbar_{j|i} + z_{j|i}) / 2, while y is still made from z).
``averaging: relaxed`` is the Douglas-Rachford relaxation instead (PDMM with
theta = 1/2, as in ``pdmm``): z_{j|i} <- (z_{j|i} + y_{i|j}) / 2 and zc = z.
The seed's form low-passes the duals the primal step sees but not the ones it
sends; on a 32-peer ring (scenarios/gt_vs_dsgd.yaml, interval 1) it diverged
(consensus distance > 1000) where the relaxed form reached 0.972 test
accuracy. Written
as a step of the local optax optimizer, x_i <- (x_i + u_i + alpha (eta sum A zc
+ rho sum xhat)) / (1 + alpha (eta + rho) d_i) with u_i the optimizer's update
for g_i: exactly the formula above for plain SGD (u = -alpha g); momentum or
Adam act on the gradient part. At a fixed point x_i = x_j on every edge and
sum_i g_i = 0.

Exchanges follow an edge schedule (edges.py): edge {i, j} swaps (y, and x
when rho > 0) once every ``interval`` = R steps, all edges together at the
end of each R steps, or, with ``round_robin``, at the step whose residue mod R
is the edge's phase. A step is a round; a round where an edge is not
scheduled sends nothing on it (0 bytes).

ISVR (``pdmm_isvr``, ``admm_isvr``): rho = 0 and eta = piw / (alpha (R d_i + R
- piw d_i)), piw in {0.5, 1, 2}, round-robin by default; ``use_gcoef`` scales
the gradient by 1 - alpha eta d_i (R/piw - 1).

Options as in the seed's code: ``fan_in_scaling`` multiplies eta and rho per
tensor by sqrt(fan_in) (a kernel's inputs; a bias or norm offset takes its
layer's value), ``degree_normalized`` divides them by d_i.

Special cases (tested): with eta = rho = 0, or an isolated peer, a step is
the local optimizer's step. With zero duals and R = 1 the first step is the
optimizer's step shrunk by 1/(1 + alpha (eta + rho) d_i) towards
alpha rho sum_j x0_j; a peer then receives z_{i|j} = 2 A_{i|j} x_j, so the
second PDMM step is x_i <- (x_i + u_i + alpha ((2 eta + rho) sum_j x_j))
/ (1 + alpha (eta + rho) d_i): D-SGD-like mixing with the neighbours.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Annotated, Literal, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import optax

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    mean_gradient,
)
from workbench.algorithms.edges import (
    column_sum,
    edge_algorithm,
    edge_columns,
    edge_mask,
    edge_phase,
    from_neighbours,
    outer,
    scheduled,
    signs,
    stack_columns,
    where_columns,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.messages import PerEdge, sent_if
from workbench.errors import ScenarioError

Duals = Literal["swap", "average"]
Averaging = Literal["seed", "relaxed"]


class ECLState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) stacked: x_i
    opt_state: PyTree  # the local optimizer's state, like params
    z: PyTree  # leaves (k - 1, ...): last received dual z_{i|j} per edge column
    zbar: PyTree  # leaves (k - 1, ...): averaged duals (ADMM, 'seed' form); else None
    xhat: PyTree  # leaves (k - 1, ...): neighbours' last models (rho > 0); else None
    step: jax.Array  # () int32 steps (rounds) done
    loss: jax.Array  # () training loss of the last step


class ECLOutbox(NamedTuple):
    y: PerEdge  # leaves (k - 1, ...): y_{i|j} per edge column
    x: PyTree  # like params (rho > 0), else None
    step: jax.Array  # () int32 the step this outbox was made at


def fan_in(params) -> PyTree:
    """Per leaf, the layer's fan-in: prod(kernel.shape[:-1]); a norm scale its
    size; a bias (or any other leaf) its module's kernel/scale value, else its size."""

    def own(leaf) -> float:
        return float(math.prod(leaf.shape[:-1]) if leaf.ndim > 1 else leaf.size)

    def walk(tree):
        if not isinstance(tree, Mapping):
            return own(tree)
        layer = next(
            (
                own(v)
                for k, v in tree.items()
                if k in ("kernel", "scale") and not isinstance(v, Mapping)
            ),
            None,
        )
        return {
            k: walk(v)
            if isinstance(v, Mapping) or layer is None
            else (own(v) if k in ("kernel", "scale") else layer)
            for k, v in tree.items()
        }

    return type(params)(walk(params)) if isinstance(params, Mapping) else walk(params)


def ecl(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    step_size: optax.Schedule,
    *,
    duals: Duals = "swap",
    averaging: Averaging = "seed",
    eta: float = 1.0,
    rho: float = 0.1,
    interval: int = 10,
    round_robin: bool = False,
    piw: float | None = None,
    use_gcoef: bool = False,
    fan_in_scaling: bool = False,
    degree_normalized: bool = False,
) -> Algorithm:
    """ECL (``piw`` None) or ECL-ISVR (``piw`` set: eta from piw, rho = 0)."""
    rho = 0.0 if piw is not None else rho
    keep_models = rho > 0
    seed_average = duals == "average" and averaging == "seed"
    relaxed = duals == "average" and averaging == "relaxed"

    def init(params, key, topo):
        del key
        k = edge_columns(topo)
        z = stack_columns(jax.tree.map(jnp.zeros_like, params), k)
        zbar = stack_columns(params, k) if seed_average else None
        xhat = stack_columns(params, k) if keep_models else None
        zero = jnp.zeros((), jnp.int32)
        return ECLState(
            params, local_opt.init(params), z, zbar, xhat, zero, jnp.zeros(())
        )

    def coefficients(params, d, alpha):
        """Per leaf (eta_i, rho_i): the penalties after the options."""
        if piw is None:
            base = jnp.asarray(eta, d.dtype)
        else:
            base = piw / (alpha * (interval * d + interval - piw * d))
        scale = 1.0 / jnp.maximum(d, 1.0) if degree_normalized else 1.0
        sizes = fan_in(params) if fan_in_scaling else jax.tree.map(lambda _: 1, params)
        etas = jax.tree.map(lambda v: base * scale * math.sqrt(v), sizes)
        rhos = jax.tree.map(lambda v: rho * scale * math.sqrt(v), sizes)
        return etas, rhos

    def local(state, batches, topo, key):
        del key
        loss, g = mean_gradient(loss_fn, state.params, batches)
        alpha = step_size(state.step)
        d = topo.degree.astype(jnp.result_type(float))
        etas, rhos = coefficients(state.params, d, alpha)
        if use_gcoef:
            g = jax.tree.map(
                lambda gi, e: gi * (1 - alpha * e * d * (interval / piw - 1)), g, etas
            )
        u, opt_state = local_opt.update(g, state.opt_state, state.params)
        a = signs(topo) * edge_mask(topo)
        cons = column_sum(state.zbar if seed_average else state.z, a)
        prox = column_sum(state.xhat, edge_mask(topo)) if keep_models else None

        def step(x, ui, ci, e, r, pi=None):
            pull = e * ci + (r * pi if pi is not None else 0.0)
            return (x + ui + alpha * pull) / (1 + alpha * (e + r) * d)

        if keep_models:
            x = jax.tree.map(step, state.params, u, cons, etas, rhos, prox)
        else:
            x = jax.tree.map(step, state.params, u, cons, etas, rhos)
        y = jax.tree.map(jnp.subtract, state.z, outer(2 * signs(topo), x))
        new = state._replace(params=x, opt_state=opt_state, loss=loss)
        return new, ECLOutbox(PerEdge(y), x if keep_models else None, state.step)

    def message(outbox, sender, receiver, key):
        del key
        phase = edge_phase(sender, receiver, interval, round_robin)
        return sent_if((outbox.y.value, outbox.x), outbox.step % interval == phase)

    def combine(state, inbox, topo):
        y, x = from_neighbours(inbox.messages)
        now = scheduled(topo, state.step, interval, round_robin)
        if relaxed:
            y = jax.tree.map(lambda a, b: (a + b) / 2, state.z, y)
        z = where_columns(now, y, state.z)
        zbar = state.zbar
        if seed_average:
            avg = jax.tree.map(lambda a, b: (a + b) / 2, state.zbar, z)
            zbar = where_columns(now, avg, state.zbar)
        xhat = where_columns(now, x, state.xhat) if keep_models else None
        return state._replace(z=z, zbar=zbar, xhat=xhat, step=state.step + 1)

    return edge_algorithm(init, local, combine, message, 1)


NonNegative = Annotated[float, annotated_types.Ge(0)]
Interval = Annotated[int, annotated_types.Ge(1)]
PIW = (0.5, 1.0, 2.0)


def _step_size(optimizer) -> optax.Schedule:
    """alpha: the scenario's lr and schedule, one step per round."""
    return optimizer.learning_rate(1)


def _ecl_sgd(
    loss_fn,
    optimizer,
    *,
    eta: NonNegative = 1.0,
    rho: NonNegative = 0.1,
    interval: Interval = 10,
    round_robin: bool = False,
    fan_in_scaling: bool = False,
    degree_normalized: bool = False,
    averaging: Averaging = "seed",
    duals: Duals,
) -> Algorithm:
    return ecl(
        loss_fn,
        optimizer(1),
        _step_size(optimizer),
        duals=duals,
        averaging=averaging,
        eta=eta,
        rho=rho,
        interval=interval,
        round_robin=round_robin,
        fan_in_scaling=fan_in_scaling,
        degree_normalized=degree_normalized,
    )


def _with_duals(builder, duals: Duals):
    """``builder`` with ``duals`` fixed: the PDMM ('swap') or ADMM ('average') form
    (only the ADMM form has the ``averaging`` key)."""

    def build(loss_fn, optimizer, **options) -> Algorithm:
        return builder(loss_fn, optimizer, **options, duals=duals)

    hidden = ("duals",) if duals == "average" else ("duals", "averaging")
    signature = inspect.signature(builder, eval_str=True)
    params = [p for name, p in signature.parameters.items() if name not in hidden]
    build.__signature__ = signature.replace(parameters=params)
    return build


ALGORITHMS.register("pdmm_sgd")(_with_duals(_ecl_sgd, "swap"))
ALGORITHMS.register("admm_sgd")(_with_duals(_ecl_sgd, "average"))


def _ecl_isvr(
    loss_fn,
    optimizer,
    *,
    piw: float = 1.0,
    interval: Interval = 10,
    use_gcoef: bool = False,
    round_robin: bool = True,
    fan_in_scaling: bool = False,
    degree_normalized: bool = False,
    averaging: Averaging = "seed",
    duals: Duals,
) -> Algorithm:
    if piw not in PIW:
        raise ScenarioError("algorithm.piw", f"must be one of {PIW}, got {piw}")
    return ecl(
        loss_fn,
        optimizer(1),
        _step_size(optimizer),
        duals=duals,
        averaging=averaging,
        interval=interval,
        round_robin=round_robin,
        piw=piw,
        use_gcoef=use_gcoef,
        fan_in_scaling=fan_in_scaling,
        degree_normalized=degree_normalized,
    )


ALGORITHMS.register("pdmm_isvr")(_with_duals(_ecl_isvr, "swap"))
ALGORITHMS.register("admm_isvr")(_with_duals(_ecl_isvr, "average"))
