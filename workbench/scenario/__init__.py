"""Scenario schema: YAML -> validated, frozen objects, with base: and --set.

A scenario is one YAML mapping::

    name: quickstart        # default: the file stem; names the run directory
    base: other.yaml        # optional, relative to this file; deep-merged under it
    seed: 0                 # int in [0, 2**32)
    peers: 16               # int >= 1
    rounds: 300             # int >= 1
    eval_every: 25          # int >= 1, rounds per jitted chunk
    data: {name: digits, partition: {name: iid}, batch_size: 32}   # DataConfig
    model: {name: mlp, hidden: [64]}    # MODELS entry + kwargs, or {module: "p.m:Cls"}
    topology: {name: ring}              # TOPOLOGIES entry + kwargs
    algorithm:                          # ALGORITHMS entry + kwargs, plus the
      name: dsgd                        # optimizer keys (OptimizerConfig):
      lr: 0.1                           # optimizer, lr, momentum, nesterov,
      schedule: {name: constant}        # weight_decay, l2, clip, schedule
    execution: {strategy: auto, peers_per_chunk: null}
    output: {checkpoint: true, tensorboard: false, keep_checkpoints: 2}

``Scenario.algorithm`` holds the whole ``algorithm`` section as written (the
optimizer keys validated in place); ``algorithm_parts`` splits it for the engine.

Every user mistake raises one-line :class:`~workbench.errors.ScenarioError`
naming the dotted key. The modules, one concept each:

- ``frozen``: FrozenDict (registry sections), the frozen model base, ``plain``;
- ``optimizer``: the optimizer keys of ``algorithm``: their schema, validated
  in place, and ``algorithm_parts`` (what the engine builds from the section);
- ``schema``: the pydantic models (Scenario and its fixed sections);
- ``messages``: pydantic errors -> one-line ScenarioError;
- ``registries``/``checks``: registry sections checked by their registry;
- ``parse``: parse_scenario, a mapping -> Scenario;
- ``merge``: the deep merge of ``base:`` files and ``--set`` overrides;
- ``yaml_io``: reading and writing scenario files.
"""

from workbench.scenario.frozen import FrozenDict
from workbench.scenario.optimizer import (
    OPTIMIZER_KEYS,
    OptimizerConfig,
    algorithm_parts,
)
from workbench.scenario.parse import parse_scenario
from workbench.scenario.schema import ExecutionConfig, OutputConfig, Scenario
from workbench.scenario.yaml_io import dump_scenario, load_scenario, scenario_to_dict

__all__ = [
    "OPTIMIZER_KEYS",
    "ExecutionConfig",
    "FrozenDict",
    "OptimizerConfig",
    "OutputConfig",
    "Scenario",
    "algorithm_parts",
    "dump_scenario",
    "load_scenario",
    "parse_scenario",
    "scenario_to_dict",
]
