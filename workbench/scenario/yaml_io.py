"""Scenario files: reading with ``base:`` and ``--set``, writing back.

Files are read with a SafeLoader that reads ``1e-3`` and ``1.0e6`` as floats and rejects
duplicate keys. ``base:`` names another file, relative to this one, merged
under it (its ``name`` is never inherited); ``--set dotted.key=value`` values
are YAML too. YAML errors name ``file:line:column``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from workbench.errors import ScenarioError
from workbench.scenario.frozen import plain
from workbench.scenario.merge import merge
from workbench.scenario.messages import short
from workbench.scenario.parse import parse_scenario
from workbench.scenario.schema import Scenario

__all__ = ["dump_scenario", "load_scenario", "parse_value", "scenario_to_dict"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` and ``1.0e6`` as floats (YAML 1.2) and
    rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):
                continue  # SafeLoader rejects unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> Scenario:
    """Reads a scenario file, resolves ``base:``, applies ``--set`` overrides.

    Args:
      path: the YAML file.
      overrides: ``"dotted.key=value"`` strings, applied in order; values are
        YAML (``0.05`` float, ``[64, 64]`` list, ``true`` bool, ``ring`` str).

    Raises:
      ScenarioError: one line naming the file or the first bad key.
    """
    path = Path(path)
    raw = _read(path, ())
    raw.setdefault("name", path.stem)
    for item in overrides:
        raw = _apply_override(raw, item)
    return parse_scenario(raw, str(path))


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    """The YAML form in plain types; ``parse_scenario`` reads it back equal.

    Registry sections (``algorithm`` with its optimizer keys) are as written;
    fixed sections have every key, defaults included.
    """
    return plain(scenario.model_dump())


def dump_scenario(scenario: Scenario) -> str:
    """The fully resolved scenario as YAML; ``load_scenario`` reads it back equal."""
    return yaml.safe_dump(
        scenario_to_dict(scenario), sort_keys=False, default_flow_style=None
    )


def parse_value(text: str, key: str) -> Any:
    """One ``--set`` value: YAML as a scenario file reads it (``1e-3`` a
    float); a ScenarioError naming ``key`` if it is not YAML."""
    return _parse_yaml(text, key)


def _parse_yaml(text: str, path: str, source: str | None = None) -> Any:
    """``yaml.load`` with _Loader; errors name ``source:line:column`` or ``path``.

    Args:
      text: the YAML text.
      path: dotted key the text is the value of ("" for a whole file).
      source: the file name, when the text is a file.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        problem = " ".join(str(problem).split())[:120]
        if source is None:
            raise ScenarioError(path, f"invalid YAML {text!r}: {problem}") from None
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ScenarioError(path, f"{where}: invalid YAML: {problem}") from None


def _read(path: Path, chain: tuple[Path, ...]) -> dict:
    """Reads one file and, recursively, its ``base:`` chain (bases merged under)."""
    if path.resolve() in chain:
        cycle = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise ScenarioError("base", f"cycle of base files: {cycle}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ScenarioError(
            "", f"cannot read scenario file {path}: {e.strerror}"
        ) from None
    raw = _parse_yaml(text, "", str(path))
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ScenarioError("", f"{path}: expected a mapping of keys, got {got}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ScenarioError(
            "base", f"expected a file path in {path}, got {short(base)}"
        )
    base_path = path.parent / base
    if not base_path.is_file():
        raise ScenarioError("base", f"file not found: {base_path} (base of {path})")
    parent = _read(base_path, (*chain, path.resolve()))
    parent.pop("name", None)
    return merge(parent, raw)


def _apply_override(raw: dict, item: str) -> dict:
    """Applies one ``dotted.key=value`` (value parsed as YAML)."""
    key, sep, text = item.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ScenarioError("", f"bad --set {item!r}; expected dotted.key=value")
    if keys[0] == "base":
        raise ScenarioError("base", "cannot be set with --set; use it in the file")
    node: Any = raw
    for depth, name in enumerate(keys[:-1]):
        node = node.get(name)
        if node is None:
            break
        if not isinstance(node, Mapping):
            where = ".".join(keys[: depth + 1])
            got = f"{short(node)} ({type(node).__name__})"
            raise ScenarioError(where, f"is {got}, not a mapping; cannot set {key}")
    value = _parse_yaml(text, key)
    for name in reversed(keys):
        value = {name: value}
    return merge(raw, value)
