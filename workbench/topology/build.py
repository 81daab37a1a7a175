"""``build_topology``: a scenario section -> the ``Topology`` the engine runs.

Static graphs become kernel arrays of their W (``at`` returns them every
round); periodic sequences a stack of kernel arrays with a common width
(``at`` indexes ``t % period``); random samplers keep their own ``at``,
optionally followed by an in-jit conversion to the requested kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import scipy.sparse as sp

from workbench.comm import KERNEL_NAMES, choose_kernel, convert, from_matrix
from workbench.comm.host import needed_width
from workbench.comm.kernels import can_convert, kernel_name
from workbench.errors import ScenarioError, one_of
from workbench.topology import diagnostics
from workbench.topology.base import (
    PATH,
    TOPOLOGIES,
    Periodic,
    Sampler,
    Static,
    Topology,
    periodic_at,
    static_at,
)
from workbench.topology.weights import validate

DENSE_HOST_MAX_N = 4096  # Topology.W is a dense ndarray up to this n
SAMPLED_ROUNDS = 16  # rounds sampled for the diagnostics of random topologies


@dataclasses.dataclass(frozen=True)
class Converted:
    """``at`` followed by an in-jit conversion to another kernel."""

    inner: Callable
    kernel: str
    n: int

    def __call__(self, data, t, key):
        return convert(self.inner(data, t, key), self.kernel, self.n)


def build_topology(
    spec: Mapping[str, Any],
    n: int,
    seed: int,
    kernel: str = "auto",
    *,
    require_doubly_stochastic: bool = False,
) -> Topology:
    """Builds the topology of a scenario section such as ``{name: ring}``.

    Args:
      spec: ``{name: <TOPOLOGIES entry>, **kwargs}``.
      n: number of peers.
      seed: scenario seed (random graphs, diagnostics).
      kernel: ``"auto"`` or a kernel name to force (``mean | dense | roll |
        table | segment``).
      require_doubly_stochastic: fail unless every W_t preserves the mean.

    Raises:
      ScenarioError: one line naming the bad ``topology.*`` key.
    """
    if kernel != "auto" and kernel not in KERNEL_NAMES:
        raise ScenarioError("execution.kernel", one_of(kernel, [*KERNEL_NAMES, "auto"]))
    built = TOPOLOGIES.build(spec, PATH, n=n, seed=seed)
    make = BUILDERS[type(built)]
    topo = make(built, n, seed, kernel, require_doubly_stochastic)
    info = {"name": spec.get("name"), "n": n, "kernel": topo.kernel, **topo.info}
    return dataclasses.replace(topo, info=info)


def _kernel_error(kernel: str, reason: str) -> ScenarioError:
    return ScenarioError(
        "execution.kernel", f"'{kernel}' cannot hold this topology: {reason}"
    )


def _static(built: Static, n: int, seed: int, kernel: str, ds: bool) -> Topology:
    W = sp.csr_array(built.W)
    validate(W, ds)
    kernel = choose_kernel(W) if kernel == "auto" else kernel
    try:
        data = from_matrix(kernel, W)
    except ValueError as e:
        raise _kernel_error(kernel, str(e)) from None
    host = W.toarray() if n <= DENSE_HOST_MAX_N else W
    info = {"dynamic": False, "period": None, **diagnostics.static_info(W)}
    return Topology(n, kernel, data, static_at, host, info)


def common_kernel(Ws) -> str:
    """One kernel for every W of a sequence.

    The choice for each W_t when they agree, else the choice for the union of
    their patterns (with ``table`` for ``mean``/``roll``, which would not hold
    the non-circulant members).
    """
    kinds = {choose_kernel(W) for W in Ws}
    if len(kinds) == 1:
        return kinds.pop()
    union = sum(abs(W) for W in Ws)
    kind = choose_kernel(union)
    return "table" if kind in ("mean", "roll") else kind


def _periodic(built: Periodic, n: int, seed: int, kernel: str, ds: bool) -> Topology:
    Ws = [sp.csr_array(W) for W in built.Ws]
    for W in Ws:
        validate(W, ds)
    kernel = common_kernel(Ws) if kernel == "auto" else kernel
    try:
        width = max(needed_width(kernel, W) for W in Ws)
        stack = [from_matrix(kernel, W, width) for W in Ws]
    except ValueError as e:
        raise _kernel_error(kernel, str(e)) from None
    data = jax.tree.map(lambda *a: jnp.stack(a), *stack)
    prod = diagnostics.product_rho(Ws)
    rate = prod ** (1.0 / len(Ws))
    info = {
        "dynamic": True,
        "period": len(Ws),
        "rho": rate,
        "spectral_gap": 1.0 - rate,
        "product_rho": prod,
        **diagnostics.dynamic_info(Ws, seed),
        "doubly_stochastic": diagnostics.doubly_stochastic(Ws),
    }
    return Topology(n, kernel, data, periodic_at, None, info)


def _sampler(built: Sampler, n: int, seed: int, kernel: str, ds: bool) -> Topology:
    if ds and not built.doubly_stochastic:
        raise ScenarioError(
            f"{PATH}.name",
            "this topology's mixing is only "
            "row-stochastic but the algorithm needs the average "
            "preserved (doubly stochastic W)",
        )
    shape = jax.eval_shape(built.at, built.data, jnp.int32(0), jax.random.key(0))
    native = type(shape)
    at = built.at
    if kernel not in ("auto", kernel_name(shape)):
        if not can_convert(native, kernel):
            raise _kernel_error(
                kernel, f"its rounds are sampled as {kernel_name(shape)} arrays"
            )
        at = Converted(built.at, kernel, n)
    kernel = kernel_name(shape) if kernel == "auto" else kernel
    Ws = diagnostics.sample_rounds(built.at, built.data, n, seed, SAMPLED_ROUNDS)
    rounds = diagnostics.dynamic_info(Ws, seed)
    info = {
        "dynamic": True,
        "period": None,
        "rho": rounds["contraction"],
        "spectral_gap": 1.0 - rounds["contraction"],
        **rounds,
        "doubly_stochastic": built.doubly_stochastic,
        **getattr(built.at, "info", {}),  # the sampler's own facts
    }
    return Topology(n, kernel, built.data, at, None, info)


BUILDERS = {Static: _static, Periodic: _periodic, Sampler: _sampler}
