"""The ``privacy:`` scenario section: who is attacked, when, by whom, and how.

    privacy:
      victims: all            # all | a count (peers 0..c-1 spread evenly) | [0, 5]
      every: 10               # attack the messages of every 10th round ...
      at: [1, 50, 100]        # ... or of these rounds (1-based, as metrics.csv)
      colluding: [[1, 2]]     # attacker sets besides each single neighbour
      attacks: [threshold, linkability]
      save_messages: true     # privacy/messages_*.msgpack, for `workbench privacy`
      marginalized: false     # add the attacker that knows W (multi-step gossip)
      delta: 1.0e-5           # the accounting's (epsilon, delta)
      sensitivity: 1.0        # l2 sensitivity the defense's noise is measured in

Only the chosen victims' messages at the chosen rounds are kept (captured in
the jitted chunk), never the whole history.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_serializer, field_validator, model_validator

from workbench.errors import ScenarioError
from workbench.scenario.frozen import FrozenDict, FrozenModel, plain

DEFAULT_ATTACKS = ("threshold", "linkability")


def _tuple(value):
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


class PrivacyConfig(FrozenModel):
    """Message capture and the attacks run on what was captured.

    Attributes:
      victims: ``all``, a count c (peers spread evenly over 0..n-1), or a list.
      every: attack rounds every, 2 every, ... (1-based round numbers).
      at: attack these rounds instead (1-based; at most the scenario's rounds).
      colluding: attacker sets; each pools what its members received from
        the victim (W-weighted mean of the per-edge messages).
      attacks: ATTACKS entries run after every chunk (``workbench list attacks``).
      save_messages: keep the captured messages in the run directory.
      marginalized: add the ``marginalized`` attacker: it knows W and every
        step-0 message a victim averaged, and strips them from the victim's
        gossip step-1 message to get its own model (victims: all; an
        algorithm with gossip_steps >= 2).
      delta: delta of the (epsilon, delta) accounting of a defense.
      sensitivity: the l2 sensitivity sigma is measured against.
    """

    victims: Literal["all"] | int | tuple[int, ...] = "all"
    every: int | None = Field(None, ge=1)
    at: tuple[int, ...] | None = None
    colluding: tuple[tuple[int, ...], ...] = ()
    attacks: tuple[str | FrozenDict, ...] = DEFAULT_ATTACKS
    save_messages: bool = True
    marginalized: bool = False
    delta: float = Field(1e-5, gt=0, lt=1)
    sensitivity: float = Field(1.0, gt=0)

    @field_validator("victims", "at", "colluding", mode="before")
    @classmethod
    def _listed(cls, value):
        return _tuple(value)

    @field_validator("attacks", mode="before")
    @classmethod
    def _entries(cls, value):
        if isinstance(value, list):
            return tuple(FrozenDict(a) if isinstance(a, dict) else a for a in value)
        return value

    @field_serializer("victims", "at", "colluding", "attacks")
    def _as_list(self, value):
        return plain(value)

    @field_validator("victims")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a victim count must be >= 1, got {value}")
        if isinstance(value, tuple) and (not value or min(value) < 0):
            raise ValueError(f"victims must be peer indices >= 0, got {list(value)}")
        return value

    @field_validator("at")
    @classmethod
    def _rounds(cls, value):
        if value is not None and (not value or min(value) < 1):
            raise ValueError(f"rounds are 1-based and >= 1, got {list(value)}")
        return value

    @field_validator("attacks")
    @classmethod
    def _known(cls, entries):
        from workbench.privacy.run import ATTACKS

        for i, entry in enumerate(entries):  # a one-line ScenarioError naming it
            spec = {"name": entry} if isinstance(entry, str) else dict(entry)
            name = spec.pop("name", None)
            path = f"privacy.attacks[{i}]"
            if name is None:
                raise ScenarioError(f"{path}.name", "missing; expected an attack name")
            ATTACKS.validate(name, spec, path)
        return entries

    @model_validator(mode="after")
    def _one_schedule(self):
        if self.every is not None and self.at is not None:
            raise ValueError("give either 'every' or 'at', not both")
        return self

    def victim_peers(self, n: int) -> tuple[int, ...]:
        """The victims' peer indices for n peers (sorted, distinct)."""
        if self.victims == "all":
            return tuple(range(n))
        if isinstance(self.victims, int):
            c = min(self.victims, n)
            return tuple(sorted({i * n // c for i in range(c)}))
        return tuple(sorted(set(self.victims)))

    def attack_rounds(self, rounds: int, eval_every: int) -> tuple[int, ...]:
        """0-based indices of the rounds whose messages are captured."""
        if self.at is not None:
            return tuple(sorted({r - 1 for r in self.at}))
        every = self.every or eval_every
        return tuple(range(every - 1, rounds, every))


__all__ = ["DEFAULT_ATTACKS", "PrivacyConfig"]
