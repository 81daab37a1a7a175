"""D-SGD with compressed model exchange and error feedback (DeepSqueeze form).

Each round, peer i runs tau local optax steps (x_i -> x'_i), then sends one
compressed message of its model, with error feedback (e_i, the part of past
messages not sent yet, is added to the next one):

    q_i = C(x'_i + e_i);   e_i <- x'_i + e_i - q_i
    x_i <- x'_i + gamma (sum_j W_ij q_j - q_i)

This is DeepSqueeze (Tang et al. 2019, arXiv 1907.07346) with consensus step
``gamma``. Why this form rather than mixing the decoded messages in directly
(x_i <- W_ii x'_i + sum_{j != i} W_ij q_j): the model moves only by
*differences* of messages, so a peer keeps its exact x'_i, peers that agree
send equal messages and stay put, the consensus step keeps the models'
average (W doubly stochastic), and a sparsifier's zeros never pull a model
towards 0.
With the identity compressor (q = x', e = 0) and gamma = 1 it is D-SGD
adapt-then-combine, x_i <- sum_j W_ij x'_j; the combine is computed as
``inbox + (x' - q) + (gamma - 1) (inbox - q)`` so that this holds bit for bit.

What it costs: the residual is the unsent part of the *model*, not of a
difference that shrinks, so with a sparsifier the models keep a consensus error
that does not vanish (large gamma amplifies the residual, small gamma slows the
mixing); CHOCO (``choco``) compresses differences to public copies instead.
Quantizers with a small relative error (the default, 8-bit ``uniform``) suit
this form.

Only ``C(.)`` is sent (as a ``Coded`` part: the compressor's exact bits), over
the ``average`` exchange. ``error_feedback`` is the one switch for the residual:
the compressor is built with its own ``error_feedback`` option off and the
residual is added here, so it is never applied twice (a compressor section
that sets ``error_feedback`` to the other value is an error).

This module also holds what compressed algorithms share: the scenario type of
an ``algorithm.compressor`` section, checked against COMPRESSORS when the
scenario is read, and :func:`build_compressor`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple

import annotated_types
import jax
import jax.numpy as jnp
import optax
import pydantic

from workbench.algorithms.base import (
    Algorithm,
    LossFn,
    PyTree,
    RoundStructure,
    local_steps,
)
from workbench.algorithms.registry import ALGORITHMS
from workbench.comm.messages import Coded
from workbench.compression import COMPRESSORS, Compressor
from workbench.compression import error_feedback as with_error_feedback
from workbench.errors import ScenarioError

PATH = "algorithm.compressor"  # the scenario section, for messages


def _check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Looks the section up in COMPRESSORS and checks its keys (a one-line
    ScenarioError at ``algorithm.compressor.<key>``); returns it unchanged."""
    name = spec.get("name")
    if name is None:
        raise ScenarioError(f"{PATH}.name", "missing; expected a compressor name")
    if not isinstance(name, str):
        raise ScenarioError(f"{PATH}.name", f"expected a compressor name, got {name!r}")
    COMPRESSORS.validate(name, {k: v for k, v in spec.items() if k != "name"}, PATH)
    return spec


CompressorSpec = Annotated[dict[str, Any], pydantic.AfterValidator(_check_spec)]
"""An ``algorithm.compressor`` section, ``{name: topk, fraction: 0.01, ...}``;
checked against COMPRESSORS when the algorithm's keys are validated."""

TOP_1_PERCENT = {"name": "topk", "fraction": 0.01}
"""choco's default compressor section (builders copy it, never change it)."""

UNIFORM_8BIT = {"name": "uniform", "levels": 256}
"""compressed_dsgd's default compressor section (read only, like TOP_1_PERCENT)."""


def build_compressor(spec: Mapping[str, Any], **defaults: Any) -> Compressor:
    """Builds the COMPRESSORS entry of an ``algorithm.compressor`` section.

    Args:
      spec: ``{name, **kwargs}`` as written in the scenario.
      defaults: keyword arguments the algorithm sets unless ``spec`` does
        (passed only to entries that take them).

    Raises:
      ScenarioError: at ``algorithm.compressor.<key>``, one line.
    """
    spec = _check_spec(dict(spec))
    takes = inspect.signature(COMPRESSORS[spec["name"]]).parameters
    spec = {**{k: v for k, v in defaults.items() if k in takes}, **spec}
    try:
        return COMPRESSORS.build(spec, PATH)
    except ScenarioError as e:  # the compressors' own checks say "compressor.<key>"
        if e.path.startswith(PATH) or not e.path.startswith("compressor"):
            raise
        raise ScenarioError(f"algorithm.{e.path}", e.message) from None


class CompressedDSGDState(NamedTuple):
    params: PyTree  # leaves (...) per peer; (n, ...) once stacked: the model x_i
    opt_state: PyTree  # the local optimizer's state, same stacking
    sent: PyTree  # like params: q_i, the last decoded message (zeros before)
    compressor: PyTree  # the compressor's state: the residual e_i, if any
    loss: jax.Array  # () mean training loss of the last local steps


def compressed_dsgd(
    loss_fn: LossFn,
    local_opt: optax.GradientTransformation,
    compressor: Compressor,
    gamma: float = 1.0,
    steps: int = 1,
) -> Algorithm:
    """D-SGD exchanging ``compressor``-coded models (see the module docstring).

    Args:
      compressor: C, applied to x'_i (wrapped with ``error_feedback`` when the
        residual is wanted).
      gamma: consensus step size.
      steps: local optax steps (tau) per round.
    """

    def init(params, key):
        del key
        sent = jax.tree.map(jnp.zeros_like, params)
        return CompressedDSGDState(
            params, local_opt.init(params), sent, compressor.init(params), jnp.zeros(())
        )

    def local(state, batches, topo, key):
        del topo
        params, opt_state, loss = local_steps(
            loss_fn, local_opt, state.params, state.opt_state, batches
        )
        q, comp, bits = compressor.apply(params, state.compressor, key)
        return CompressedDSGDState(params, opt_state, q, comp, loss), Coded(q, bits)

    def combine(state, inbox, topo):
        del topo

        def mixed(inbox, x, q):
            out = inbox + (x - q)  # == x + (inbox - q), and inbox itself if q == x
            return out if gamma == 1 else out + (gamma - 1) * (inbox - q)

        params = jax.tree.map(mixed, inbox, state.params, state.sent)
        return state._replace(params=params)

    return Algorithm(init, local, combine, "average", RoundStructure(local_steps=steps))


@ALGORITHMS.register("compressed_dsgd")
def _compressed_dsgd(
    loss_fn,
    optimizer,
    *,
    compressor: CompressorSpec = UNIFORM_8BIT,  # noqa: B006 (read only)
    error_feedback: bool = True,
    gamma: Annotated[float, annotated_types.Gt(0)] = 1.0,
    local_steps: int = 1,
) -> Algorithm:
    if compressor.get("error_feedback", error_feedback) != error_feedback:
        raise ScenarioError(
            f"{PATH}.error_feedback",
            "compressed_dsgd adds the residual itself (algorithm.error_feedback: "
            f"{str(error_feedback).lower()}); remove this key",
        )
    own = {k: v for k, v in compressor.items() if k != "error_feedback"}
    c = build_compressor(own, error_feedback=False)
    if error_feedback:
        c = with_error_feedback(c)
    return compressed_dsgd(
        loss_fn, optimizer(local_steps), c, gamma=gamma, steps=local_steps
    )
