"""A scenario's ``clock:`` section resolved for a run: :class:`ClockSpec`.

Checks, each a one-line ScenarioError, what the clock cannot simulate, and
sizes the ring of past messages: a message takes at most ``D`` ticks to
arrive (latency plus the largest message's bytes over the bandwidth), and a
peer sends at most one message per tick, so the newest message that has
arrived is among the last ``D + 1`` each peer sent.
"""

from __future__ import annotations

import math

import numpy as np

from workbench.clock.speeds import SPEEDS
from workbench.clock.state import ClockSpec
from workbench.errors import ScenarioError
from workbench.scenario.clock import ClockConfig

BITS_PER_BYTE = 8


def needs_clock(algorithm) -> bool:
    """Whether the algorithm only runs on the clock (a stateful server, pairs)."""
    concurrent = algorithm.sessions is not None and algorithm.sessions.regular > 1
    return algorithm.server is not None or algorithm.rounds.pairwise or concurrent


def straggler_factor(cfg: ClockConfig, n: int, seed: int) -> np.ndarray:
    """(n,) float32: each peer's step-time multiplier."""
    factor = np.ones(n, np.float32)
    s = cfg.stragglers
    if s is None:
        return factor
    if s.peers is not None:
        bad = [p for p in s.peers if p >= n]
        if bad:
            raise ScenarioError(
                "clock.stragglers.peers", f"peer {bad[0]} out of range for {n} peers"
            )
        chosen = np.asarray(s.peers, np.int64)
    else:
        count = max(1, round(s.fraction * n))
        chosen = np.random.default_rng(seed).choice(n, count, replace=False)
    factor[chosen] = s.factor
    return factor


def crash_rows(cfg: ClockConfig, n: int) -> np.ndarray:
    """(e, 3) float32 rows (peer, at, until) of the crash schedule."""
    rows = []
    for i, ev in enumerate(cfg.faults.schedule):
        if ev.peer >= n:
            raise ScenarioError(
                f"clock.faults.schedule[{i}].peer",
                f"peer {ev.peer} out of range for {n} peers",
            )
        rows.append((ev.peer, ev.at, np.inf if ev.until is None else ev.until))
    return np.asarray(rows, np.float32).reshape(-1, 3)


def _check_sessions(cfg: ClockConfig, name: str) -> None:
    """What sessions on the clock do not simulate (workbench.clock.sessions)."""
    if cfg.mode != "async":
        raise ScenarioError(
            "clock.mode",
            f"'{name}' sessions start and end on their own schedules: set mode: async",
        )
    unsupported = {
        "clock.faults": cfg.faults.any or cfg.faults.swap_timeout is not None,
        "clock.link.loss": cfg.link.loss > 0,
        "clock.link.spread": cfg.link.spread > 0,
    }
    for where, given in unsupported.items():
        if given:
            raise ScenarioError(
                where,
                f"'{name}' sessions on the clock take compute times, stragglers and "
                "the links' latency and bandwidth; drop this setting",
            )


def _check(cfg: ClockConfig, algorithm, name: str, topology_info: dict) -> None:
    if algorithm.sessions is not None:
        _check_sessions(cfg, name)
        return
    exchange = algorithm.exchange
    if cfg.mode == "async" and algorithm.rounds.gossip_steps > 1:
        raise ScenarioError(
            "clock.mode",
            f"algorithm '{name}' gossips several times per round; that needs "
            "mode: sync (an async peer mixes once per step)",
        )
    if cfg.faults.swap_timeout is not None and topology_info.get("dynamic"):
        raise ScenarioError(
            "clock.faults.swap_timeout",
            "drops edges of a static graph; this topology changes every round",
        )
    if algorithm.rounds.pairwise and exchange != "average":
        raise ScenarioError("algorithm.name", f"'{name}' pairs peers: needs 'average'")
    if algorithm.rounds.server_copies:
        raise ScenarioError(
            "algorithm.name",
            f"'{name}' keeps a copy of the server's state on every peer, which "
            "must see every round's aggregate; on the clock only the peers that "
            "receive it update their copy: drop the clock (or the server optimizer)",
        )
    if exchange in ("coordinator", "hierarchy"):
        raise ScenarioError(
            "algorithm.name",
            f"'{name}' runs synchronous rounds of a {exchange} exchange; "
            "drop the clock",
        )
    if algorithm.aggregate is not None:
        raise ScenarioError(
            "algorithm.aggregator",
            "a robust aggregator needs a fixed cohort of uploads; on the clock "
            "uploads arrive as peers finish: use the mean, or drop the clock",
        )


def build_clock(
    cfg: ClockConfig | None,
    algorithm,
    name: str,
    n: int,
    seed: int,
    message_bits: float,
    reply_bits: float,
    topology_info: dict,
) -> ClockSpec:
    """The ClockSpec of a run (``cfg`` None: the default clock, for algorithms
    that need one).

    Args:
      message_bits: bits of the largest message one peer sends (an upper bound).
      reply_bits: bits of a server's reply (server algorithms).
    """
    if cfg is None:  # the default clock; sessions are asynchronous
        cfg = ClockConfig(mode="async" if algorithm.sessions else "sync")
    _check(cfg, algorithm, name, topology_info)
    speed = SPEEDS.build(dict(cfg.compute), "clock.compute", n=n, seed=seed)
    link = cfg.link
    per_byte = 0.0 if link.bandwidth is None else 1.0 / link.bandwidth
    slowest = math.exp(3 * link.spread - link.spread**2 / 2)  # the clipped factor
    longest = slowest * (link.latency + message_bits / BITS_PER_BYTE * per_byte)
    upload = 2 * link.latency + (message_bits + reply_bits) / BITS_PER_BYTE * per_byte
    gossip_ring = (
        cfg.mode == "async"
        and algorithm.server is None
        and algorithm.sessions is None
        and algorithm.exchange in ("average", "gather")
    )
    buffer = math.ceil(longest / cfg.tick) + 1 if gossip_ring else 0
    return ClockSpec(
        config=cfg,
        speed=speed,
        factor=straggler_factor(cfg, n, seed),
        crashes=crash_rows(cfg, n),
        buffer=buffer,
        upload=float(upload),
    )
