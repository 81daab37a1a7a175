"""The ``sweep:`` scenario section: a grid of points over seeds.

    sweep:
      grid:                    # every combination (the product), in key order
        algorithm.lr: [0.01, 0.05, 0.1]
        topology.name: [ring, complete]
      zip:                     # these keys walk together (equal lengths)
        algorithm.name: [dsgd, tracking]
        algorithm.local_steps: [1, 2]
      seeds: 3                 # seeds 0, 1, 2; or a list [0, 7]; none: the scenario's

Points are the product of the grid, the zip's rows and the seeds (seeds
innermost). ``workbench sweep FILE`` runs them (workbench.sweep); ``workbench
simulate`` refuses a scenario with this section.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from workbench.scenario.frozen import FrozenDict, FrozenModel

__all__ = ["SweepConfig"]


class SweepConfig(FrozenModel):
    """Dotted scenario keys and their values, and the seeds to run each with."""

    grid: FrozenDict = FrozenDict()
    zip: FrozenDict = FrozenDict()
    seeds: int | tuple[int, ...] | None = Field(None)

    @field_validator("seeds", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a number of seeds must be >= 1, got {value}")
        distinct = isinstance(value, tuple) and len(set(value)) == len(value)
        if isinstance(value, tuple) and not (value and distinct and min(value) >= 0):
            raise ValueError(f"expected distinct seeds >= 0, got {list(value)}")
        return value

    @field_validator("grid", "zip")
    @classmethod
    def _values(cls, axes: FrozenDict) -> FrozenDict:
        for key, values in axes.items():
            if key == "seed":
                raise ValueError("sweep seeds with 'seeds', not as a key")
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"{key}: expected a non-empty list of values")
        return axes

    @model_validator(mode="after")
    def _shapes(self):
        both = set(self.grid) & set(self.zip)
        if both:
            raise ValueError(f"{sorted(both)[0]} is in both grid and zip")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in self.zip.items()}
            raise ValueError(f"zip lists must have equal lengths, got {sizes}")
        return self

    def seed_list(self, default: int) -> list[int]:
        """The seeds to run: ``seeds`` as given, 0..N-1, or ``[default]``."""
        if self.seeds is None:
            return [default]
        if isinstance(self.seeds, int):
            return list(range(self.seeds))
        return list(self.seeds)
