"""How ``base:`` files and ``--set`` overrides combine: a deep merge.

The later value wins, except that naming a different entry in a registry
section (``model.name``, ``topology.name``, ``data.name``, ...) replaces the
entry's keyword arguments instead of merging them: ``--set model.name=cnn``
drops mlp's ``hidden``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from workbench.scenario.optimizer import OPTIMIZER_KEYS

__all__ = ["merge"]

_ENTRY_KEYS = ("name", "module")  # keys that pick a registry entry
# Registry section -> which of its keys survive a change of entry.
_ENTRY_SECTIONS: dict[tuple[str, ...], Callable[[str], bool]] = {
    ("model",): lambda key: False,
    ("topology",): lambda key: False,
    ("algorithm",): lambda key: key in OPTIMIZER_KEYS,
    ("algorithm", "schedule"): lambda key: False,
    ("algorithm", "compressor"): lambda key: False,
    ("data",): lambda key: key != "options",
    ("data", "partition"): lambda key: False,
}


def merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """Deep merge, ``over`` wins; a new registry entry drops the old kwargs.

    Args:
      base: the earlier value (a base file, or the scenario before ``--set``).
      over: the later value.
      path: the keys leading to both, which pick the section's rule.
    """
    if not (isinstance(base, Mapping) and isinstance(over, Mapping)):
        return over
    keep = _ENTRY_SECTIONS.get(path)
    if keep and any(k in over and over[k] != base.get(k) for k in _ENTRY_KEYS):
        # the new entry key takes the old one's place (a dump lists it first)
        base = {
            key: value
            for key, value in base.items()
            if keep(key) or (key in _ENTRY_KEYS and key in over)
        }
    merged = dict(base)
    for key, value in over.items():
        merged[key] = merge(base[key], value, (*path, key)) if key in base else value
    return merged
