"""How a server reduces the participants' uploads to one model (robust FL).

An aggregator is ``aggregate(uploads, weights) -> model``: ``uploads`` leaves
are stacked over the m participants (m, ...), ``weights`` (m,) are their
aggregation weights (data size, uniform, or by loss), normalised to sum 1.
``mean`` is FedAvg's; the robust ones ignore the weights (each upload counts
once, as in the papers):

- ``median``: coordinate-wise median (Yin et al. 2018).
- ``trimmed_mean``: per coordinate, drop the ``trim`` largest and the ``trim``
  smallest values, average the rest (Yin et al. 2018).
- ``krum``: score each upload by the sum of squared distances to its
  m - f - 2 nearest others; take the ``select`` best-scored and average them
  (``select = 1``: Krum; more: Multi-Krum; Blanchard et al. 2017).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from workbench.algorithms.registry import AGGREGATORS
from workbench.comm.exchange import weighted_mean
from workbench.errors import ScenarioError


@AGGREGATORS.register("mean")
def _mean():
    return weighted_mean


@AGGREGATORS.register("median")
def _median():
    def median(uploads, weights):
        del weights
        return jax.tree.map(lambda leaf: jnp.median(leaf, axis=0), uploads)

    return median


@AGGREGATORS.register("trimmed_mean")
def _trimmed_mean(trim: int = 1):
    if trim < 0:
        raise ScenarioError("algorithm.aggregator.trim", f"must be >= 0, got {trim}")

    def trimmed(uploads, weights):
        del weights

        def one(leaf):
            m = leaf.shape[0]
            if 2 * trim >= m:
                raise ScenarioError(
                    "algorithm.aggregator.trim",
                    f"drops 2 x {trim} of the {m} uploads of a round: nothing is "
                    f"left; use trim < {m / 2:g}",
                )
            return jnp.sort(leaf, axis=0)[trim : m - trim].mean(0)

        return jax.tree.map(one, uploads)

    return trimmed


def krum_scores(flat: jax.Array, byzantine: int) -> jax.Array:
    """(m,) Krum score of each row of ``flat`` (m, d): the sum of squared
    distances to its m - f - 2 nearest other rows (at least one)."""
    m = flat.shape[0]
    flat = flat - jnp.mean(flat, 0, keepdims=True)  # centred: less cancellation
    sq = jnp.sum(flat**2, 1)
    gram = jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
    dist = sq[:, None] + sq[None, :] - 2 * gram
    dist = jnp.where(jnp.eye(m, dtype=bool), jnp.inf, jnp.maximum(dist, 0.0))
    nearest = max(min(m - byzantine - 2, m - 1), 1) if m > 1 else 0
    return jnp.sort(dist, 1)[:, :nearest].sum(1)


@AGGREGATORS.register("krum")
def _krum(byzantine: int = 1, select: int = 1):
    if byzantine < 0 or select < 1:
        raise ScenarioError(
            "algorithm.aggregator",
            f"krum needs byzantine >= 0 and select >= 1, got {byzantine}, {select}",
        )

    def krum(uploads, weights):
        del weights
        leaves = jax.tree.leaves(uploads)
        m = leaves[0].shape[0]
        if m <= 2 * byzantine + 2:
            raise ScenarioError(
                "algorithm.aggregator.byzantine",
                f"Krum needs more than 2 f + 2 = {2 * byzantine + 2} uploads per "
                f"round, got {m}",
            )
        flat = jnp.concatenate(
            [x.reshape(m, -1).astype(jnp.float32) for x in leaves], 1
        )
        chosen = jnp.argsort(krum_scores(flat, byzantine))[: min(select, m)]
        return jax.tree.map(lambda leaf: leaf[chosen].mean(0), uploads)

    return krum
