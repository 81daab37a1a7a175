"""The documentation says what the code does: README commands, layout, references."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _pytest(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _section(title: str) -> str:
    """The text of README section ``title`` (up to the next heading)."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.M | re.S)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```\w*\n(.*?)^```", text, re.M | re.S)


def _files() -> list[Path]:
    """The repository's .py/.md/.yaml files (tracked or new, not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = {".git", ".venv", ".pytest_cache", "build", "dist", "__pycache__"}
        listed = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if not skip & set(p.relative_to(REPO).parts)
        ]
    return [
        REPO / f
        for f in listed
        if f.endswith((".py", ".md", ".yaml", ".yml")) and (REPO / f).is_file()
    ]


def test_readme_benchmark_command_collects_the_benchmarks():
    (command,) = re.findall(r"`(python -m pytest tests/benchmarks[^`]*)`", README)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "pytest"]
    result = _pytest(*argv[3:], "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    items = [line for line in result.stdout.splitlines() if "::" in line]
    assert f"{len(items)} tests collected" in result.stdout
    assert all(line.startswith("tests/benchmarks/bench_") for line in items)
    engine = [i for i in items if i.startswith("tests/benchmarks/bench_engine.py::")]
    mixing = [i for i in items if i.startswith("tests/benchmarks/bench_mixing.py::")]
    assert any("::test_local_step[" in i for i in engine)
    assert any("::test_mix[" in i for i in mixing)
    assert "tests/benchmarks/bench_mixing.py::test_summary" in mixing


def test_benchmarks_measure_the_code_users_run():
    """The suite compiles at LLVM -O0 to save time; benchmarks must not."""
    (command,) = re.findall(r"`(python -m pytest tests/benchmarks[^`]*)`", README)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = _pytest(*shlex.split(command)[3:], "--collect-only", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "XLA_FLAGS: (none)" in result.stdout.splitlines()
    own = _pytest("tests/test_docs.py", "-o", "addopts=", "--collect-only", env=env)
    assert "XLA_FLAGS: --xla_backend_optimization_level=0" in own.stdout.splitlines()


def test_default_run_leaves_the_benchmarks_out():
    result = _pytest("--collect-only", "-q")  # addopts' -q too: one line per file
    assert result.returncode == 0, result.stdout + result.stderr
    files = [line.split(":")[0] for line in result.stdout.splitlines() if ": " in line]
    assert "tests/test_docs.py" in files and "tests/test_catalog.py" in files
    assert not [f for f in files if "benchmarks" in f]
    assert "bench_" not in result.stdout


def test_layout_names_the_folders_that_exist():
    (block,) = _code_blocks(_section("Layout"))
    named = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert all(name.endswith("/") for name in named), named
    missing = [name for name in named if not (REPO / name).is_dir()]
    assert not missing, f"README Layout names folders that do not exist: {missing}"
    top = {f.relative_to(REPO).parts[0] + "/" for f in _files() if f.parent != REPO}
    assert not top - set(named), f"README Layout leaves out {sorted(top - set(named))}"


def test_comments_and_docs_cite_only_files_in_the_repository():
    """Markdown files named in code or docs exist (from the root or the file)."""
    files = _files()
    markdown = {f.name for f in files if f.suffix == ".md"}
    markdown.add("report.md")  # written by `workbench report` into a sweep directory
    dangling = []
    for path in files:
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for ref in re.findall(r"[\w./-]*\w\.md\b", line):
                here = (REPO / ref).is_file() or (path.parent / ref).is_file()
                if not here and not ("/" not in ref and ref in markdown):
                    where = path.relative_to(REPO)
                    dangling.append(f"{where}:{number}: {ref}")
    assert not dangling, "references to files the repository lacks:\n" + "\n".join(
        dangling
    )


def test_readme_scenario_example_is_a_valid_scenario(tmp_path):
    from workbench.scenario import load_scenario

    block = next(b for b in _code_blocks(README) if b.startswith("name: quickstart"))
    path = tmp_path / "example.yaml"
    path.write_text(block)
    scenario = load_scenario(path)
    assert (scenario.peers, scenario.rounds, scenario.eval_every) == (16, 300, 50)
    assert dict(scenario.topology) == {"name": "ring"}
    quickstart = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    for key in ("seed", "peers", "rounds", "eval_every", "model", "topology", "data"):
        assert getattr(scenario, key) == getattr(quickstart, key), key


@pytest.mark.parametrize(
    "key,kind",
    [
        ("  name: digits", "datasets"),
        ("  partition:", "partitions"),
        ("model:", "models"),
        ("  optimizer:", "optimizers"),
        ("  schedule:", "schedules"),
    ],
)
def test_readme_scenario_comments_list_exactly_the_registry_entries(key, kind):
    from workbench.catalog import registry

    block = next(b for b in _code_blocks(README) if b.startswith("name: quickstart"))
    (line,) = [line for line in block.splitlines() if line.startswith(key)]
    choices = re.sub(r"\([^)]*\)", "", line.split("#", 1)[1]).split("|")
    names = {m.group(1) for c in choices if (m := re.match(r"\s*(\w+)\s*$", c))}
    assert names == set(registry(kind)), line


def test_readme_algorithm_table_lists_exactly_the_registry():
    from workbench.algorithms import ALGORITHMS

    table = _section("Algorithms")
    names = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    assert names == set(ALGORITHMS)
    for name in ALGORITHMS:  # every key listed is a key of the entry
        row = next(r for r in table.splitlines() if r.startswith(f"| `{name}` |"))
        keys = set(re.findall(r"`(\w+)`", row.split("|")[-2]))
        assert keys <= set(_keys(name)), (name, keys)


def _keys(name: str) -> list[str]:
    import inspect

    from workbench.algorithms import ALGORITHMS

    params = inspect.signature(ALGORITHMS[name]).parameters
    return [p for p in params if p not in ALGORITHMS.context]


def _help(words: list[str], capsys) -> str:
    """``workbench SUBCOMMAND --help`` (``topology describe --help`` for topology;
    ``cluster ACTION --help`` for cluster)."""
    from workbench.cli import main
    from workbench.topology.cli import describe

    subcommand = words[1]
    with pytest.raises(SystemExit) as exit_:
        if subcommand == "topology":
            describe(["--help"])
        elif subcommand == "cluster":
            main(words[1:3] + ["-h"])
        else:
            main([subcommand, "-h"])
    assert exit_.value.code == 0, subcommand
    return capsys.readouterr().out


def test_readme_commands_use_existing_subcommands_and_options(capsys):
    block = _code_blocks(_section("Running scenarios"))[0]
    commands = [line.split("#")[0].split() for line in block.splitlines()]
    assert [c[:2] for c in commands[:2]] == [["workbench", "simulate"]] * 2
    for words in commands:
        assert words[0] == "workbench"
        usage = _help(words, capsys)
        for option in (w.strip("[]") for w in words if w.lstrip("[").startswith("--")):
            assert re.search(rf"(^|\s){re.escape(option)}\b", usage, re.M), option


def test_a_failing_run_stopped_by_x_still_reports(tmp_path):
    """The huge-page restart leaves pytest's capture alone once restarted: a
    capture stopped and started again made xdist's ``-x`` report crash on a
    closed file, hiding which test failed."""
    failing = "def test_one():\n    raise RuntimeError('the failure to report')\n"
    (tmp_path / "test_fails.py").write_text(failing)
    config = ("-c", str(REPO / "pyproject.toml"), "-p", "tests.conftest")  # -n 2
    result = _pytest(str(tmp_path / "test_fails.py"), "-x", *config)
    assert "closed file" not in result.stderr, result.stderr
    assert result.returncode == 2  # xdist: interrupted after the first failure
    assert "FAILED ::test_one - RuntimeError: the failure to report" in result.stdout
    assert "1 failed in" in result.stdout
