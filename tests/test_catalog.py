"""``workbench.catalog``: the registries' entries with their keyword arguments."""

import pytest

from workbench.catalog import KINDS, arguments, catalog, registry
from workbench.errors import ScenarioError, WorkbenchError


def _block(text: str, kind: str) -> list[str]:
    """The entry lines under the heading of ``kind``."""
    blocks = {b.splitlines()[0].split()[0]: b.splitlines() for b in text.split("\n\n")}
    return blocks[kind][1:]


def test_kinds_cover_every_registry():
    assert KINDS == (
        "algorithms",
        "topologies",
        "models",
        "datasets",
        "partitions",
        "weights",
        "compressors",
        "metrics",
        "optimizers",
        "schedules",
        "aggregators",
        "server_optimizers",
        "speeds",
        "attacks",
    )
    assert [registry(k).kind for k in KINDS] == [
        "algorithm",
        "topology",
        "model",
        "dataset",
        "partition",
        "weights",
        "compressor",
        "metric",
        "optimizer",
        "schedule",
        "aggregator",
        "server optimizer",
        "compute model",
        "attack",
    ]


def test_catalog_lists_every_kind_with_a_heading_in_order():
    text = catalog()
    headings = [b.splitlines()[0] for b in text.split("\n\n")]
    assert [h.split()[0] for h in headings] == list(KINDS)
    assert "partitions  (data.partition: {name, kwargs})" in headings
    assert "datasets  (data: {name, options: {kwargs}})" in headings


def test_entries_show_keyword_arguments_defaults_and_types():
    text = catalog()
    assert _block(text, "partitions") == [
        "  class_subsets(classes: int = 8)",
        "  contiguous(order: 'label'|'random' = 'label', swaps: float = 0.0, "
        "cuts: 'equal'|'random' = 'equal', min_size: int = 1)",
        "  dirichlet(alpha: float = 0.5, min_size: int = 1)",
        "  iid",
        "  natural",
        "  shards(shards_per_peer: int = 2)",
        "  unbalanced(sigma: float = 1.0)",
    ]
    algorithms = _block(text, "algorithms")
    assert "  dsgd(order: 'atc'|'cta' = 'atc', local_steps: int = 1)" in algorithms
    assert any(line.startswith("  fedavg(local_steps: int = 1,") for line in algorithms)
    assert (
        "  admm_sgd(eta: float>=0 = 1.0, rho: float>=0 = 0.1, interval: int>=1 = 10, "
        "round_robin: bool = False, fan_in_scaling: bool = False, "
        "degree_normalized: bool = False, averaging: 'seed'|'relaxed' = 'seed')"
    ) in algorithms
    topologies = _block(text, "topologies")
    assert "  ring(weights: str = 'metropolis', lazy: bool = False)" in topologies
    assert "  peer_sampler(d: int = 4)" in topologies
    assert "  one_peer_exponential" in topologies
    assert any(line.startswith("  file(path: str, format: ") for line in topologies)
    models = _block(text, "models")
    assert "  mlp(hidden: tuple[int>0, ...] = (64,))" in models
    assert "  logistic" in models
    datasets = _block(text, "datasets")
    assert "  npz(path: str, num_classes: int | None = None)" in datasets
    assert "  digits(test_fraction: float = 0.2, label_noise: float = 0.0)" in datasets
    assert _block(text, "weights") == ["  max_degree", "  metropolis", "  uniform"]
    assert _block(text, "optimizers") == ["  adam", "  adamw", "  momentum", "  sgd"]
    assert "  step(boundaries: list[int], factor: float = 0.1)" in _block(
        text, "schedules"
    )


def test_engine_supplied_arguments_are_left_out():
    assert [a.name for a in arguments("topologies", "ring")] == ["weights", "lazy"]
    assert [a.name for a in arguments("models", "cnn")] == ["hidden", "conv_impl"]
    assert [a.name for a in arguments("datasets", "digits")] == [
        "test_fraction",
        "label_noise",
    ]
    assert arguments("weights", "metropolis") == []  # called as rule(G, A)
    for kind in KINDS:
        context = set(registry(kind).context)
        for name in registry(kind):
            assert not context & {a.name for a in arguments(kind, name)}, name


def test_every_entry_of_the_registries_is_listed():
    text = catalog()
    for kind in KINDS:
        names = [line.split("(")[0].strip() for line in _block(text, kind)]
        assert names == sorted(registry(kind)), kind


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "weights"])
def test_listed_arguments_are_what_the_registry_validates(kind):
    """Defaults validate; each required argument is reported missing by name."""
    reg = registry(kind)
    for name in reg:
        args = arguments(kind, name)
        defaults = {a.name: a.default for a in args if not a.required}
        required = [a.name for a in args if a.required]
        if not required:
            assert reg.validate(name, defaults, kind) == defaults
            continue
        with pytest.raises(ScenarioError) as e:
            reg.validate(name, defaults, kind)
        assert e.value.path == f"{kind}.{required[0]}"


def test_required_arguments_have_no_default():
    (path,) = [a for a in arguments("datasets", "csv") if a.name == "path"]
    assert path.required and str(path) == "path: str"
    assert [a.name for a in arguments("schedules", "step") if a.required] == [
        "boundaries"
    ]


def test_chosen_kinds_only_in_the_order_given_and_singular_names_work():
    text = catalog(["schedule", "partitions", "partition"])
    assert [b.splitlines()[0].split()[0] for b in text.split("\n\n")] == [
        "schedules",
        "partitions",
    ]
    assert catalog(["topology"]).startswith("topologies  (topology: {name, kwargs})")
    assert catalog([]) == catalog()


def test_unknown_kind_is_one_line_with_the_nearest_and_the_valid_kinds():
    with pytest.raises(WorkbenchError) as e:
        catalog(["topolgies"])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("unknown kind 'topolgies' (did you mean 'topologies'?)")
    assert message.endswith(f"expected one of {list(KINDS)}")


def test_cli_list_prints_the_catalog(capsys):
    from workbench.cli import main

    assert main(["list", "partitions"]) == 0
    out = capsys.readouterr().out
    assert "  dirichlet(alpha: float = 0.5, min_size: int = 1)" in out
    assert "topologies" not in out
    assert main(["list", "topolgies"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'topologies'" in err


def test_cli_help_shows_no_raw_markup(capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "list" in out and "simulate" in out
