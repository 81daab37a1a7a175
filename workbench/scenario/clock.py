"""The ``clock:`` scenario section: virtual time, stragglers, lossy links, crashes.

    clock:
      mode: async            # sync: rounds with a barrier (optionally a timeout);
                             # async: ticks of `tick` virtual seconds, each peer
                             # on its own schedule
      tick: 1.0              # async: virtual seconds per tick (the resolution)
      timeout: 3.0           # sync: a round waits at most this long
      compute: {name: lognormal, sigma: 0.5, time: 1.0}   # SPEEDS entry
      stragglers: {fraction: 0.125, factor: 10}           # or peers: [3, 7]
      link: {latency: 0.1, bandwidth: 1.0e6, loss: 0.05, spread: 0.5}
      faults:
        crash_rate: 0.01     # crashes per live peer per virtual second
        rejoin_rate: 0.1     # rejoins per crashed peer per virtual second
        schedule: [{peer: 3, at: 10.0, until: 30.0}]
        rejoin: own          # own: resume from its last state; neighbour: pull
                             # the first live in-neighbour's model
        swap_timeout: 20.0   # drop an edge that has not delivered for this long
        redistribute: 10     # a crashed peer's 10 highest-loss samples go to
                             # the live peers (dyn-fed; needs the schedule)

Without a ``clock:`` section a run is today's synchronous rounds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from workbench.errors import ScenarioError
from workbench.scenario.frozen import FrozenDict, FrozenModel, plain

__all__ = ["ClockConfig", "CrashEvent", "FaultConfig", "LinkConfig", "Stragglers"]


class LinkConfig(FrozenModel):
    """The links: a message's delivery time is f (latency + bytes / bandwidth).

    Attributes:
      latency: virtual seconds a message takes besides its transfer.
      bandwidth: bytes per virtual second; None: transfers take no time.
      loss: probability that one message on one link is lost.
      spread: sigma of f, each link's own speed: a lognormal factor of mean 1
        drawn once per undirected link from the seed (clipped to 3 sigma);
        0: every link alike (f = 1).
    """

    latency: float = Field(0.0, ge=0)
    bandwidth: float | None = Field(None, gt=0)
    loss: float = Field(0.0, ge=0, lt=1)
    spread: float = Field(0.0, ge=0)

    @property
    def delays(self) -> bool:
        return self.latency > 0 or self.bandwidth is not None


class CrashEvent(FrozenModel):
    """Peer ``peer`` is down from virtual time ``at`` until ``until`` (None: ever)."""

    peer: int = Field(ge=0)
    at: float = Field(ge=0)
    until: float | None = None

    @model_validator(mode="after")
    def _ordered(self):
        if self.until is not None and self.until <= self.at:
            raise ValueError(f"until ({self.until}) must be after at ({self.at})")
        return self


class FaultConfig(FrozenModel):
    """Crashes and rejoins (random rates and an explicit schedule), swap timeout."""

    crash_rate: float = Field(0.0, ge=0)
    rejoin_rate: float = Field(0.0, ge=0)
    schedule: tuple[CrashEvent, ...] = ()
    rejoin: Literal["own", "neighbour"] = "own"
    swap_timeout: float | None = Field(None, gt=0)
    redistribute: int | None = Field(None, ge=1)

    @field_validator("schedule", mode="before")
    @classmethod
    def _listed(cls, value):
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _scheduled(self):
        if self.redistribute is not None and (self.crash_rate > 0 or not self.schedule):
            raise ValueError(
                "redistribute moves the samples of the crashes in `schedule` (it "
                "sizes what each peer can receive from it): give a schedule and no "
                "crash_rate"
            )
        return self

    @property
    def any(self) -> bool:
        return self.crash_rate > 0 or bool(self.schedule)

    @property
    def capacity(self) -> int:
        """Samples a peer can receive by redistribution: k per scheduled crash."""
        return (self.redistribute or 0) * len(self.schedule)


class Stragglers(FrozenModel):
    """Peers whose every step takes ``factor`` times longer.

    Attributes:
      fraction: this fraction of the peers (rounded, at least one), drawn
        from the seed; or
      peers: these peers.
    """

    fraction: float | None = Field(None, gt=0, le=1)
    peers: tuple[int, ...] | None = None
    factor: float = Field(gt=0)

    @field_validator("peers", mode="before")
    @classmethod
    def _listed(cls, value):
        return tuple(value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one(self):
        if (self.fraction is None) == (self.peers is None):
            raise ValueError("give either 'fraction' or 'peers'")
        return self


class ClockConfig(FrozenModel):
    """Virtual time: who finishes a step when, which messages arrive when."""

    mode: Literal["sync", "async"] = "sync"
    tick: float = Field(1.0, gt=0)
    timeout: float | None = Field(None, gt=0)
    compute: FrozenDict = FrozenDict({"name": "constant"})
    stragglers: Stragglers | None = None
    link: LinkConfig = LinkConfig()
    faults: FaultConfig = FaultConfig()

    @field_validator("compute")
    @classmethod
    def _speed(cls, spec: FrozenDict) -> FrozenDict:
        from workbench.clock.speeds import SPEEDS

        kwargs = {k: plain(v) for k, v in spec.items() if k != "name"}
        name = spec.get("name")
        if not isinstance(name, str):
            raise ScenarioError("clock.compute.name", f"expected one of {list(SPEEDS)}")
        SPEEDS.validate(name, kwargs, "clock.compute")
        return spec

    @model_validator(mode="after")
    def _modes(self):
        if self.timeout is not None and self.mode != "sync":
            raise ValueError("'timeout' is for mode: sync (an async peer never waits)")
        return self
