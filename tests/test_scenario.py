"""Scenario schema: malformed inputs name their key in one line; base:, --set."""

from __future__ import annotations

import copy
from pathlib import Path

import pydantic
import pytest
import yaml

from workbench.errors import ScenarioError
from workbench.optim import make_optimizer
from workbench.scenario import (
    FrozenDict,
    Scenario,
    algorithm_parts,
    dump_scenario,
    load_scenario,
    parse_scenario,
    scenario_to_dict,
)

SCENARIOS = sorted((Path(__file__).parents[1] / "scenarios").rglob("*.yaml"))

BASE = {
    "name": "t",
    "peers": 4,
    "rounds": 10,
    "eval_every": 5,
    "data": {"name": "digits", "partition": {"name": "iid"}, "batch_size": 8},
    "model": {"name": "mlp", "hidden": [8]},
    "topology": {"name": "ring"},
    "algorithm": {"name": "dsgd", "lr": 0.1},
}
DELETE = object()


def edited(path: str, value) -> dict:
    """BASE with ``path`` (dotted) set to ``value`` (or removed for DELETE)."""
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


def error_of(raw) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(raw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(info.value.path)
    return info.value


def optimizer_of(scenario: Scenario) -> dict:
    """The optimizer keys as the engine gets them, defaults filled in."""
    return algorithm_parts(scenario)[2]


def write(directory, name: str, text: str):
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# key to edit, value, expected error path, expected fragment of the message
STRUCTURAL = [
    ("round", 10, "round", "did you mean 'rounds'"),
    ("peers", 0, "peers", "greater than or equal to 1, got 0"),
    ("peers", 2.5, "peers", "valid integer, got 2.5"),
    ("peers", DELETE, "peers", "required key missing; expected int >= 1"),
    ("seed", -1, "seed", "greater than or equal to 0"),
    ("eval_every", True, "eval_every", "valid integer, got True"),
    ("name", "a/b", "name", "got 'a/b'"),
    ("algorithm.lr", -0.1, "algorithm.lr", "greater than 0, got -0.1"),
    ("algorithm.lr", DELETE, "algorithm.lr", "missing; expected float > 0"),
    ("algorithm.momentum", 1.0, "algorithm.momentum", "less than 1"),
    ("algorithm.optimizer", 3, "algorithm.optimizer", "valid string, got 3"),
    ("algorithm.clip", 0.0, "algorithm.clip", "greater than 0"),
    ("algorithm.nesterov", "yes", "algorithm.nesterov", "valid boolean"),
    ("algorithm.weight_decay", float("nan"), "algorithm.weight_decay", "finite"),
    ("algorithm.schedule", "cosine", "algorithm.schedule", "expected a mapping"),
    ("execution.strategy", "vmapp", "execution.strategy", "did you mean 'vmap'"),
    ("execution.peers_per_chunk", 0, "execution.peers_per_chunk", "greater"),
    (
        "execution.chunks",
        2,
        "execution.chunks",
        "'kernel', 'memory_budget', 'compilation_cache', 'replicas']",
    ),
    ("output.keep_checkpoints", "two", "output.keep_checkpoints", "got 'two'"),
    ("output", True, "output", "expected a mapping, got True"),
    ("output.tensorbord", True, "output.tensorbord", "did you mean 'tensorboard'"),
    ("data.batch_size", 0, "data.batch_size", "greater than 0"),
    ("data.val_fraction", 1.0, "data.val_fraction", "less than 1"),
    ("data.batchsize", 8, "data.batchsize", "did you mean 'batch_size'"),
    ("model", "mlp", "model", "expected a mapping, got 'mlp'"),
    ("optimizer", "adam", "optimizer", "under algorithm"),
    ("topology", DELETE, "topology", "missing; expected a mapping {name:"),
]
REGISTRY = [
    ("topology.name", "rign", "topology.name", "did you mean 'ring'"),
    ("topology.name", DELETE, "topology.name", "missing; expected one of"),
    ("topology.lazy", "maybe", "topology.lazy", "got 'maybe'"),
    ("topology.wieghts", "metropolis", "topology.wieghts", "did you mean 'weights'"),
    ("model.hiden", [8], "model.hiden", "did you mean 'hidden'"),
    ("model.hidden", "wide", "model.hidden", "got 'wide'"),
    ("model.module", "a.b:C", "model", "either 'name' or 'module'"),
    ("algorithm.name", "fedav", "algorithm.name", "did you mean 'fedavg'"),
    ("algorithm.order", "both", "algorithm.order", "'atc' or 'cta'"),
    ("algorithm.local_steps", "many", "algorithm.local_steps", "got 'many'"),
    ("algorithm.lrr", 0.1, "algorithm.lrr", "did you mean 'lr'"),
    ("algorithm.optimizer", "adma", "algorithm.optimizer", "did you mean 'adam'"),
    ("algorithm.schedule", {"name": "cosin"}, "algorithm.schedule.name", "'cosine'"),
    (
        "algorithm.schedule",
        {"name": "cosine", "alpah": 0.1},
        "algorithm.schedule.alpah",
        "did you mean 'alpha'",
    ),
    ("data.name", "cifar", "data.name", "did you mean 'cifar10'"),
    (
        "data.partition",
        {"name": "dirichlet", "alpha": "x"},
        "data.partition.alpha",
        "x",
    ),
    ("data.partition", {"name": "diriclet"}, "data.partition.name", "'dirichlet'"),
]


@pytest.mark.parametrize(("key", "value", "path", "fragment"), STRUCTURAL + REGISTRY)
def test_malformed_scenario_names_the_key_in_one_line(key, value, path, fragment):
    error = error_of(edited(key, value))
    assert error.path == path
    assert fragment in error.message


def test_valid_scenario_and_defaults():
    s = parse_scenario(BASE)
    assert (s.name, s.seed, s.peers, s.rounds, s.eval_every) == ("t", 0, 4, 10, 5)
    assert s.model == FrozenDict({"name": "mlp", "hidden": (8,)})
    assert s.algorithm == FrozenDict({"name": "dsgd", "lr": 0.1})  # as written
    name, kwargs, optimizer = algorithm_parts(s)
    assert (name, kwargs) == ("dsgd", {})
    assert optimizer == {
        **{"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False},
        **{"weight_decay": 0.0, "l2": 0.0, "clip": None},
        "schedule": {"name": "constant"},
    }
    assert s.execution.strategy == "auto" and s.execution.peers_per_chunk is None
    assert s.output.checkpoint and s.output.keep_checkpoints == 2
    assert parse_scenario({k: v for k, v in BASE.items() if k != "name"}).name == (
        "scenario"
    )
    assert parse_scenario(edited("data", DELETE)).data.name == "digits"


def test_scenario_is_frozen_all_the_way_down():
    s = parse_scenario(BASE)
    with pytest.raises(pydantic.ValidationError):
        s.peers = 8
    with pytest.raises(TypeError):
        s.algorithm["lr"] = 1.0
    with pytest.raises(TypeError):
        s.model["hidden"] = (16,)
    assert isinstance(s.model["hidden"], tuple)
    assert hash(s.model) == hash(parse_scenario(BASE).model)
    plain = s.model.to_dict()
    plain["hidden"].append(4)
    assert s.model["hidden"] == (8,)


def test_algorithm_parts_feed_the_engine():
    raw = edited("algorithm", {"name": "fedavg", "lr": 0.5, "local_steps": 3, "l2": 1})
    name, kwargs, optimizer = algorithm_parts(parse_scenario(raw))
    assert (name, kwargs) == ("fedavg", {"local_steps": 3})
    assert optimizer.pop("l2") == 1.0
    assert optimizer["name"] == "sgd" and optimizer["schedule"] == {"name": "constant"}
    make_optimizer(**optimizer, total_steps=10)  # the engine's call accepts them


def test_dump_then_load_gives_an_equal_scenario(tmp_path):
    raw = edited("algorithm", {"name": "fedavg", "lr": 1e-3, "optimizer": "adam"})
    raw["algorithm"]["schedule"] = {"name": "cosine", "alpha": 0.1}
    raw["execution"] = {"strategy": "map", "peers_per_chunk": 2}
    raw["data"]["partition"] = {"name": "dirichlet", "alpha": 0.3}
    s = parse_scenario(raw)
    text = "# jax: 0.10\n# device: cpu\n" + dump_scenario(s)  # as the runner writes it
    plain = yaml.safe_load(text)
    assert plain["algorithm"]["optimizer"] == "adam" and plain["model"]["hidden"] == [8]
    assert load_scenario(write(tmp_path, "run.yaml", text)) == s


def test_yaml_file_reads_exponent_floats_and_takes_the_file_stem(tmp_path):
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "name"})
    path = write(tmp_path, "my_run.yaml", text.replace("lr: 0.1", "lr: 1e-3"))
    s = load_scenario(path)
    assert s.name == "my_run" and optimizer_of(s)["lr"] == 0.001


def test_set_overrides_parse_values_as_yaml(tmp_path):
    path = write(tmp_path, "s.yaml", yaml.safe_dump(BASE))
    sets = [
        "algorithm.lr=0.05",
        "model.hidden=[64, 64]",
        "output.tensorboard=true",
        "data.options.test_fraction=0.5",
        "algorithm.weight_decay=5e-4",
        "topology.name=ring",
    ]
    s = load_scenario(path, sets)
    assert s.algorithm["lr"] == 0.05 and isinstance(optimizer_of(s)["lr"], float)
    assert s.model["hidden"] == (64, 64)
    assert s.output.tensorboard is True
    assert s.data.options == {"test_fraction": 0.5}
    assert optimizer_of(s)["weight_decay"] == 5e-4
    assert load_scenario(path, ["name=other"]).name == "other"


def test_set_of_a_new_entry_replaces_its_arguments(tmp_path):
    algorithm = {"name": "dsgd", "order": "cta", "lr": 0.1, "momentum": 0.9}
    text = yaml.safe_dump(edited("algorithm", algorithm), sort_keys=False)
    path = write(tmp_path, "s.yaml", text)
    s = load_scenario(path, ["model.name=logistic", "algorithm.name=fedavg"])
    assert s.model == {"name": "logistic"}
    # dsgd's own key goes, the optimizer keys stay, the new name takes its place
    assert list(s.algorithm.items()) == [
        ("name", "fedavg"),
        ("lr", 0.1),
        ("momentum", 0.9),
    ]


@pytest.mark.parametrize(
    ("item", "path", "fragment"),
    [
        ("algorithm.lr", "", "expected dotted.key=value"),
        ("=3", "", "expected dotted.key=value"),
        ("a..b=3", "", "expected dotted.key=value"),
        ("peers.x=1", "peers", "is 4 (int), not a mapping"),
        ("algorithm.lr.x=1", "algorithm.lr", "not a mapping"),
        ("model.hidden=[64", "model.hidden", "invalid YAML '[64'"),
        ("base=other.yaml", "base", "cannot be set"),
        ("rounds=ten", "rounds", "got 'ten'"),
    ],
)
def test_bad_set_is_one_line(tmp_path, item, path, fragment):
    scenario = write(tmp_path, "s.yaml", yaml.safe_dump(BASE))
    with pytest.raises(ScenarioError) as info:
        load_scenario(scenario, [item])
    assert info.value.path == path and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_base_chain_deep_merges_and_later_files_win(tmp_path):
    write(tmp_path, "common/a.yaml", yaml.safe_dump({**BASE, "seed": 7}))
    write(
        tmp_path,
        "common/b.yaml",
        "base: a.yaml\nname: b\nrounds: 20\n"
        "data: {partition: {name: dirichlet, alpha: 0.5}}\n",
    )
    leaf = write(
        tmp_path,
        "exp/c.yaml",
        "base: ../common/b.yaml\n"
        "data: {partition: {alpha: 0.1}}\n"
        "model: {name: logistic}\n"
        "algorithm: {name: fedavg, momentum: 0.5}\n",
    )
    s = load_scenario(leaf)
    assert s.name == "c"  # names are not inherited
    assert (s.seed, s.rounds, s.peers) == (7, 20, 4)
    assert s.data.partition == {"name": "dirichlet", "alpha": 0.1}
    assert s.data.batch_size == 8
    assert s.model == {"name": "logistic"}  # a new entry drops mlp's hidden
    assert s.algorithm == {"name": "fedavg", "lr": 0.1, "momentum": 0.5}


@pytest.mark.parametrize(
    ("files", "path", "fragment"),
    [
        ({"s.yaml": "base: s.yaml\n"}, "base", "cycle of base files: s.yaml -> s.yaml"),
        (
            {"s.yaml": "base: t.yaml\n", "t.yaml": "base: s.yaml\n"},
            "base",
            "s.yaml -> t.yaml -> s.yaml",
        ),
        ({"s.yaml": "base: gone.yaml\n"}, "base", "file not found"),
        ({"s.yaml": "base: [a.yaml]\n"}, "base", "expected a file path"),
        ({"s.yaml": "peers: 4\nrounds: 10\n  bad: 1\n"}, "", "s.yaml:3:"),
        ({"s.yaml": "peers: 4\npeers: 5\n"}, "", "s.yaml:2:1: invalid YAML"),
        ({"s.yaml": "- peers: 4\n"}, "", "expected a mapping of keys, got list"),
        ({"s.yaml": ""}, "", "got an empty file"),
        ({"t.yaml": "peers: 4\n"}, "", "cannot read scenario file"),
        ({"s.yaml": "!!python/object:os.system {}\n"}, "", "invalid YAML"),
        ({"s.yaml": "peers: 4\n[1]: 2\n"}, "", "unhashable"),
    ],
)
def test_bad_file_is_one_line(tmp_path, files, path, fragment):
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "s.yaml")
    assert info.value.path == path and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_scenario_accepts_its_own_split_form():
    s = parse_scenario(BASE)
    again = Scenario(**{k: getattr(s, k) for k in Scenario.model_fields})
    assert again == s


def test_algorithm_holds_its_section_as_written():
    written = {
        **{"lr": 0.05, "name": "fedavg", "schedule": {"name": "cosine", "alpha": 0.1}},
        **{"local_steps": 2, "clip": 1.0, "optimizer": "adam", "momentum": 0.5},
    }
    s = parse_scenario(edited("algorithm", written))
    assert "optimizer" not in Scenario.model_fields
    assert list(s.algorithm.items()) == list(FrozenDict(written).items())
    dumped = scenario_to_dict(s)
    assert list(dumped["algorithm"].items()) == list(written.items())  # no defaults
    assert s.model_dump() == dumped  # the model's own dump is the YAML form
    assert parse_scenario(s.model_dump()) == s
    name, kwargs, optimizer = algorithm_parts(s)
    assert (name, kwargs) == ("fedavg", {"local_steps": 2})
    assert optimizer == {
        **{"name": "adam", "lr": 0.05, "momentum": 0.5, "nesterov": False},
        **{"weight_decay": 0.0, "l2": 0.0, "clip": 1.0},
        "schedule": {"name": "cosine", "alpha": 0.1},
    }


def test_optimizer_keys_are_validated_in_place():
    s = parse_scenario(edited("algorithm", {"name": "dsgd", "lr": 1, "l2": 0}))
    assert s.algorithm == {"name": "dsgd", "lr": 1.0, "l2": 0.0}
    assert type(s.algorithm["lr"]) is float and type(s.algorithm["l2"]) is float
    assert isinstance(s.algorithm, FrozenDict)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_scenario_file_dumps_and_reloads_exactly(tmp_path, path):
    s = load_scenario(path)
    text = dump_scenario(s)
    again = load_scenario(write(tmp_path, "scenario.yaml", text))
    assert again == s
    assert scenario_to_dict(again) == scenario_to_dict(s)
    assert dump_scenario(again) == text  # same keys, order and value types


def test_set_of_a_new_compressor_drops_the_old_ones_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "peers: 4\nrounds: 2\nmodel: {name: mlp}\ntopology: {name: ring}\n"
        "algorithm: {name: choco, lr: 0.1, gamma: 0.2,\n"
        "            compressor: {name: topk, fraction: 0.01}}\n"
    )
    s = load_scenario(path, ["algorithm.compressor.name=qsgd"])
    assert dict(s.algorithm["compressor"]) == {"name": "qsgd"}
    assert s.algorithm["gamma"] == 0.2
