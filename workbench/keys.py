"""The workbench's random keys: one derivation for the run and its diagnostics.

Every random draw of a run derives from ``root_key(seed)``; round t's draws for
one purpose use ``round_key(seed, t, purpose)`` (then ``fold_in(., peer)`` for
per-peer draws). The engine (``workbench.rounds``) and the topology diagnostics
(``workbench.topology.diagnostics``) both call ``round_key``, so the reported
figures of a random dynamic topology describe the graphs the run trains on.
"""

from __future__ import annotations

import jax

# philox compiles ~2x faster than the default threefry on CPU (jax 0.10) and runs
# faster; every key of the workbench derives from ``root_key``.
KEY_IMPL = "philox2x32"

# purposes for fold_in: stable integers, never reorder
LOCAL, TOPOLOGY, PARTICIPATION, EXCHANGE = 0, 1, 2, 3
# the virtual clock's draws: step durations, message loss, crashes, AD-PSGD
# pairs, each link's speed
CLOCK, LOSS, FAULT, PAIRING, LINK = 4, 5, 6, 7, 8
# a party's draws on its link to the global server (hierarchical FL)
PARTY = 9
# a clique's draws in a session (SMPL: who starts it)
SESSION = 10


def root_key(seed: int) -> jax.Array:
    """The key every draw of a run with this seed derives from."""
    return jax.random.key(seed, impl=KEY_IMPL)


def round_key(seed: int, t, purpose: int) -> jax.Array:
    """``fold_in(fold_in(root_key(seed), t), purpose)``; ``t`` may be traced."""
    return jax.random.fold_in(jax.random.fold_in(root_key(seed), t), purpose)
