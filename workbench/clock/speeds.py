"""Compute models: how long each peer's local step takes, in virtual seconds.

A SPEEDS entry is built with the number of peers and the seed and returns a
:class:`Speed`: ``draw(key, step) -> (n,)`` durations of every peer's next
step (``step``: (n,) int32, how many steps each peer has finished). Draws
use the tick's key only, so they are the same whatever the execution
strategy. Stragglers (``clock.stragglers``) multiply on top.

- ``constant``: every step takes ``time``.
- ``lognormal``: ``time * exp(sigma z - sigma^2 / 2)`` (mean ``time``), z a
  standard normal drawn per step, or once per peer (``per: peer``: a
  fixed, heterogeneous fleet).
- ``sleep``: the ETRI seed's sleep factor: ``time * (1 + U * factor)``, U
  uniform in [0, 1) per step.
- ``trace``: measured durations from a CSV file, one column per peer and
  one row per step (cycled).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import Field

from workbench.errors import DataError
from workbench.registry import Registry

SPEEDS = Registry("compute model", context=("n", "seed"))

Positive = Annotated[float, Field(gt=0)]


class Speed(NamedTuple):
    draw: Callable  # (key, step (n,) int32) -> (n,) float32 step durations


@SPEEDS.register("constant")
def constant(n: int, time: Positive = 1.0) -> Speed:
    def draw(key, step):
        del key, step
        return jnp.full((n,), time, jnp.float32)

    return Speed(draw)


@SPEEDS.register("lognormal")
def lognormal(
    n: int,
    seed: int,
    sigma: Annotated[float, Field(ge=0)] = 0.5,
    time: Positive = 1.0,
    per: Literal["step", "peer"] = "step",
) -> Speed:
    from workbench.keys import root_key

    fixed = jax.random.normal(jax.random.fold_in(root_key(seed), 7), (n,))

    def draw(key, step):
        del step
        z = fixed if per == "peer" else jax.random.normal(key, (n,))
        return (time * jnp.exp(sigma * z - sigma**2 / 2)).astype(jnp.float32)

    return Speed(draw)


@SPEEDS.register("sleep")
def sleep(
    n: int, time: Positive = 1.0, factor: Annotated[float, Field(ge=0)] = 0.0
) -> Speed:
    def draw(key, step):
        del step
        return time * (1 + jax.random.uniform(key, (n,)) * factor)

    return Speed(draw)


def read_trace(path: str, n: int) -> np.ndarray:
    """(steps, n) float32 durations from a CSV file (one column per peer)."""
    try:
        values = np.loadtxt(Path(path), delimiter=",", ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise DataError(
            f"clock.compute.file: cannot read {path} ({e}); expected a CSV of "
            f"step durations, one column per peer"
        ) from None
    if values.shape[1] != n or values.shape[0] == 0:
        raise DataError(
            f"clock.compute.file: {path} has {values.shape[1]} columns and "
            f"{values.shape[0]} rows; expected {n} columns (one per peer), >= 1 row"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DataError(f"clock.compute.file: {path} needs finite durations > 0")
    return values.astype(np.float32)


@SPEEDS.register("trace")
def trace(n: int, file: str) -> Speed:
    table = jnp.asarray(read_trace(file, n))

    def draw(key, step):
        del key
        return table[step % table.shape[0], jnp.arange(n)]

    return Speed(draw)
