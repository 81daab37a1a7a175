"""What a defense guarantees on paper: differential-privacy accounting of a run.

A defense algorithm declares its mechanism in ``Algorithm.privacy``
(``{"mechanism": name, **parameters}``); the entry of that name here turns it,
with the run's graph, rounds, delta and sensitivity, into a JSON-ready report
that the runner writes to ``privacy_accounting.json`` and ``summary.json``:

- ``muffliato``: pairwise network DP (epsilon of u's data at v, over edges and
  non-edges) next to the local-DP epsilon of the same noise.
- ``dpsgd``: the Poisson-subsampled Gaussian mechanism composed over every
  local step (the sampler draws with replacement, so this is the usual
  approximation), sampling rate batch / smallest local dataset.
- ``zerosum``: no epsilon. The noise cancels in every neighbour average, so a
  peer that hears all of a victim's edges learns the victim's model exactly;
  the defense is empirical (see the attacks in privacy.csv).

``sensitivity`` is the l2 sensitivity the noise is measured against (sigma is
in those units; 1.0 reads the figures per unit sensitivity).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workbench.privacy.accounting import gaussian_epsilon, privacy_report
from workbench.registry import Registry

ACCOUNTING_JSON = "privacy_accounting.json"
MECHANISMS = Registry(
    "privacy mechanism",
    context=("W", "rounds", "delta", "sensitivity", "sampling_rate"),
)


def _no_noise(name: str) -> dict:
    return {"mechanism": name, "epsilon": None, "note": "sigma = 0: no guarantee"}


@MECHANISMS.register("muffliato")
def muffliato(
    W, rounds, delta, sensitivity, *, sigma: float, gossip_steps: int, omegas=None
) -> dict:
    if sigma == 0:
        return _no_noise("muffliato")
    if W is None:
        return {
            "mechanism": "muffliato",
            "epsilon": None,
            "note": "the graph changes every round: pairwise accounting needs one W",
        }
    report = privacy_report(
        W, sigma, gossip_steps, rounds, delta, sensitivity, omegas=omegas
    )
    return {"mechanism": "muffliato", **report}


@MECHANISMS.register("dpsgd")
def dpsgd(
    rounds, delta, sampling_rate, *, noise_multiplier: float, local_steps: int
) -> dict:
    if noise_multiplier == 0:
        return _no_noise("dpsgd")
    steps = rounds * local_steps
    return {
        "mechanism": "dpsgd",
        "noise_multiplier": noise_multiplier,
        "steps": steps,
        "sampling_rate": sampling_rate,
        "delta": delta,
        "epsilon": gaussian_epsilon(noise_multiplier, steps, delta, sampling_rate),
    }


@MECHANISMS.register("zerosum")
def zerosum(*, sigma: float) -> dict:
    return {
        "mechanism": "zerosum",
        "sigma": sigma,
        "epsilon": None,
        "note": "zero-sum noise cancels in a neighbour's average: no DP guarantee",
    }


def accounting(sim) -> dict[str, Any] | None:
    """The run's report, or None if its algorithm declares no mechanism."""
    declared = sim.spec.algorithm.privacy
    if declared is None:
        return None
    cfg, sc = sim.scenario.privacy, sim.scenario
    sizes = np.asarray(sim.data.size)
    W = sim.topology.W if not sim.topology.info.get("dynamic") else None
    spec = dict(declared)
    spec["name"] = spec.pop("mechanism")
    return MECHANISMS.build(
        spec,
        "algorithm",
        W=W,
        rounds=sc.rounds,
        delta=cfg.delta,
        sensitivity=cfg.sensitivity,
        sampling_rate=min(1.0, sc.data.batch_size / max(int(sizes.min()), 1)),
    )
