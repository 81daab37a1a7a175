"""The validated form of a scenario: frozen pydantic models.

Fixed sections are :class:`~workbench.scenario.frozen.FrozenModel` subclasses
(strict types: YAML already typed the values). Registry sections (``model``,
``topology``, ``algorithm``) are :class:`~workbench.scenario.frozen.FrozenDict`
holding the values as written; their registries check them after validation
(``checks``). The optimizer keys of ``algorithm`` are validated in place by
:data:`~workbench.scenario.optimizer.OptimizerKeysInPlace`. ``data`` is a
:class:`~workbench.data.config.DataConfig`, which checks its own entries.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Literal

from pydantic import Field, field_serializer, field_validator
from pydantic_core import PydanticCustomError

from workbench.data.config import DataConfig
from workbench.scenario.clock import ClockConfig
from workbench.scenario.frozen import FrozenDict, FrozenModel
from workbench.scenario.optimizer import OptimizerKeysInPlace
from workbench.scenario.privacy import PrivacyConfig
from workbench.scenario.sweep import SweepConfig

__all__ = ["EvaluationConfig", "ExecutionConfig", "OutputConfig", "Scenario"]


class ExecutionConfig(FrozenModel):
    """How the engine runs the peers and their communication.

    Attributes:
      strategy: how the per-peer step is lifted over the peer axis: ``vmap``
        (all peers at once), ``map`` (a loop over chunks of peers), ``unroll``
        (the chunks unrolled in one jit), or ``auto`` (the engine picks the
        strategy and the chunk size). All give the same numbers.
      peers_per_chunk: peers per chunk for ``map`` and ``unroll`` (None: one).
      devices: local devices the peers are split over (their state and data
        sharded along the peer axis, see workbench.sharding); must divide the
        number of peers. ``auto``: all local devices, or the most of them that
        divides the peers. None or 1: one device, no sharding.
      kernel: the array form of the mixing step, forced, or ``auto`` to pick
        it from the topology.
      memory_budget: GiB the compiled chunk and evaluation may need (XLA's
        estimate, checked before any round runs); ``auto`` chunks the peers
        to fit, other strategies fail in one line. None: no check.
      compilation_cache: a directory for JAX's persistent compilation cache,
        so a repeated run of the same shapes skips compilation.
      replicas: the most runs of a sweep that run as replicas of one jitted
        chunk (runs that differ only in their seed, learning rate or SGD
        momentum; see workbench.replicas); 1: every run alone. ``auto``: up
        to 32, fewer
        when the memory budget needs it. ``workbench simulate`` runs alone.
    """

    strategy: Literal["auto", "vmap", "map", "unroll"] = "auto"
    peers_per_chunk: int | None = Field(None, ge=1)
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    kernel: Literal["auto", "mean", "roll", "table", "segment", "dense"] = "auto"
    memory_budget: float | None = Field(None, gt=0)
    compilation_cache: str | None = None
    replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"

    @field_validator("devices", "replicas", mode="before")
    @classmethod
    def _devices(cls, value, info):
        ok = value is None or value == "auto" or type(value) is int and value >= 1
        if not ok:  # one message, not one per member of the union
            raise PydanticCustomError(info.field_name, "expected an int >= 1 or 'auto'")
        return value


class OutputConfig(FrozenModel):
    """What the run directory receives besides metrics."""

    checkpoint: bool = True
    tensorboard: bool = False
    keep_checkpoints: int = Field(2, ge=1)


class EvaluationConfig(FrozenModel):
    """Metrics computed at every evaluation besides the defaults.

    Attributes:
      metrics: names of entries of the metric registry (``workbench list
        metrics``); each adds columns to metrics.csv and peers.csv.
      test_samples: evaluate on this many test samples, a fixed random subset
        drawn from the seed (every peer and every evaluation sees the same
        one); None: the whole test set. Every peer evaluates its own model on
        the test set, so on a large one (FEMNIST's) evaluation can cost more
        than training.
    """

    metrics: tuple[str, ...] = ()
    test_samples: int | None = Field(None, ge=1)

    @field_validator("metrics", mode="before")
    @classmethod
    def _listed(cls, names):
        return tuple(names) if isinstance(names, list) else names

    @field_serializer("metrics")
    def _as_list(self, names: tuple[str, ...]) -> list[str]:
        return list(names)  # the YAML form

    @field_validator("metrics")
    @classmethod
    def _known(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from workbench.evaluation import METRICS

        unknown = [name for name in names if name not in METRICS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(METRICS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown metric '{unknown[0]}'{hint}; expected some of "
                f"{sorted(METRICS)}"
            )
        return names


class Scenario(FrozenModel):
    """A validated scenario. Registry sections are FrozenDicts ``{name, **kw}``."""

    name: str = Field("scenario", pattern=r"^\w[\w.+-]*$")
    seed: int = Field(0, ge=0, lt=2**32)  # the range of a 32-bit generator seed
    peers: int = Field(ge=1)
    rounds: int = Field(ge=1)
    eval_every: int = Field(25, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: FrozenDict
    topology: FrozenDict
    # the ALGORITHMS entry and its keyword arguments, plus the optimizer keys
    algorithm: Annotated[FrozenDict, OptimizerKeysInPlace]
    execution: ExecutionConfig = ExecutionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    output: OutputConfig = OutputConfig()
    privacy: PrivacyConfig | None = None  # message capture and attacks
    clock: ClockConfig | None = None  # virtual time (None: synchronous rounds)
    sweep: SweepConfig | None = None  # points and seeds (``workbench sweep``)
