"""The ``data:`` section of a scenario."""

from __future__ import annotations

from typing import Any

import pydantic

from workbench.data.dataset import DATASETS
from workbench.data.partition import PARTITIONERS
from workbench.errors import ScenarioError


class DataConfig(pydantic.BaseModel):
    """Which dataset, how it is split among peers, and how batches look.

    Attributes:
      name: a ``DATASETS`` entry ("digits", "cifar10", "femnist", "csv", ...).
      options: keyword arguments of that loader (e.g. ``{path: x.npz}``).
      partition: a ``PARTITIONERS`` section, e.g. ``{name: dirichlet, alpha: 0.1}``.
      val_fraction: share of each peer's samples held out as its validation set.
      batch_size: local minibatch size.
      normalize: standardise each channel (last input axis) with the mean and
        std of all peers' training samples; applied to train, val and test.
      max_train_per_peer: cap on a peer's training samples (validation samples
        are capped in proportion); None keeps all.

    Types are strict, as in the rest of the scenario: ``batch_size: "32"`` or
    ``normalize: 1`` is an error, not a conversion (an int is accepted for a
    float, e.g. ``val_fraction: 0``), and NaN/inf are rejected. ``options`` and
    ``partition`` may be any string-keyed mapping; their values are checked
    against the loader's and the partitioner's signatures by the registries.
    """

    model_config = pydantic.ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False
    )

    name: str = "digits"
    options: dict[str, Any] = pydantic.Field(default_factory=dict, strict=False)
    partition: dict[str, Any] = pydantic.Field(
        default_factory=lambda: {"name": "iid"}, strict=False
    )
    val_fraction: float = pydantic.Field(0.1, ge=0.0, lt=1.0)
    batch_size: int = pydantic.Field(32, gt=0)
    normalize: bool = True
    max_train_per_peer: int | None = pydantic.Field(None, gt=0)

    @pydantic.model_validator(mode="after")
    def _check_entries(self) -> DataConfig:
        """Fails early (one ScenarioError line) on unknown names or options."""
        DATASETS.lookup(self.name, "data.name")
        DATASETS.validate(self.name, self.options, "data.options")
        spec = dict(self.partition)
        name = spec.pop("name", None)
        if name is None:
            raise ScenarioError("data.partition.name", "missing; expected a partition")
        PARTITIONERS.validate(name, spec, "data.partition")
        return self
