"""Kernel arrays: how a mixing matrix W is held on the device.

Each kernel is a NamedTuple of arrays (a pytree). They are arguments of the
jitted step, so a new graph of the same kernel and shapes never recompiles.
``out_i = sum_j W_ij x_j``: row i holds what peer i takes from every peer j.
Weights are float32 (float64 under ``jax_enable_x64``); ``mix`` casts them to
the dtype of each leaf.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def weight_dtype():
    """Dtype of mixing weights: float32, or float64 when jax_enable_x64 is on."""
    return jnp.result_type(float)


class Mean(NamedTuple):
    """W = 11^T / n (complete graph, uniform weights). No arrays."""


class Dense(NamedTuple):
    W: Array  # (n, n) float, row i holds the weights peer i gives to every peer


class Roll(NamedTuple):
    shifts: Array  # (k,) int32: out_i += weights[s] * x[(i + shifts[s]) % n]
    weights: Array  # (k,) float (padding: weight 0)


class Table(NamedTuple):
    idx: Array  # (n, k) int32 in-neighbour indices, column 0 = self (padding: self)
    weight: Array  # (n, k) float W[i, idx[i, c]] (padding: 0)


class Segment(NamedTuple):
    senders: Array  # (e,) int32 source peer of each edge (padding: n - 1)
    receivers: Array  # (e,) int32 target peer, sorted ascending (padding: n - 1)
    weight: Array  # (e,) float W[receiver, sender] (padding: 0)


KernelArrays = Mean | Dense | Roll | Table | Segment

KERNEL_NAMES = {
    "mean": Mean,
    "dense": Dense,
    "roll": Roll,
    "table": Table,
    "segment": Segment,
}
NAME_OF = {cls: name for name, cls in KERNEL_NAMES.items()}
