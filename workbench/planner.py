"""Execution planning: how much memory a scenario needs, and a strategy that fits.

XLA's ``compiled.memory_analysis()`` of the jitted chunk and of the evaluation
gives their arguments, outputs and temporaries before anything runs. A chunk
donates its state, so its peak is arguments + outputs - aliased + temporaries;
the evaluation runs while the state and the data stay resident. A scenario
whose estimate exceeds the budget either gets chunked over peers (``strategy:
auto``: ``map`` with the largest peers-per-chunk that fits) or fails before any
round runs, with one line saying how much it needs and what to change.

The budget is ``execution.memory_budget`` (GiB) or, when unset, 90% of what the
device has: a GPU's memory limit, or on the CPU the machine's memory (or the
container's limit, when lower) less what the process already holds (Python,
JAX, the dataset on the host), which XLA's estimate does not cover.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax

from workbench.errors import WorkbenchError
from workbench.memory import human

GIB = 2**30
DEVICE_SHARE = 0.9  # of the device's memory, the budget when none is set
CGROUP_LIMIT = "/sys/fs/cgroup/memory.max"


class Budget(NamedTuple):
    """The memory a run may plan for, and where that number comes from."""

    bytes: int
    source: str  # for messages: "execution.memory_budget = 2 GiB", ...
    explicit: bool  # set in the scenario


def _device_stats() -> dict:
    """The device's memory statistics ({} where it keeps none, as the CPU)."""
    return getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}


def device_memory() -> int | None:
    """Bytes the device has: a GPU's limit; the machine's (or cgroup's) on CPU."""
    stats = _device_stats()
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None
    try:
        limit = Path(CGROUP_LIMIT).read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def resident_bytes() -> int:
    """What this process holds in memory now (0 where /proc does not say)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def memory_budget(gib: float | None) -> Budget | None:
    """``execution.memory_budget``, or DEVICE_SHARE of the device's memory
    (on the CPU, less what the process already holds: data, runtime)."""
    if gib is not None:
        return Budget(int(gib * GIB), f"execution.memory_budget = {gib:g} GiB", True)
    total = device_memory()
    if total is None:
        return None
    source = f"{DEVICE_SHARE:.0%} of this device's {human(total)}"
    held = resident_bytes() if jax.default_backend() == "cpu" else 0
    if held:
        source += f" less the {human(held)} this process holds"
    return Budget(int(DEVICE_SHARE * total) - held, source, False)


class Footprint(NamedTuple):
    """Bytes the compiled chunk and evaluation need (XLA's memory analysis)."""

    resident: int  # the chunk's arguments: state, data, topology (stay on device)
    chunk_temp: int  # temporaries of one chunk of rounds
    eval_extra: int  # evaluation data, outputs and temporaries
    strategy: tuple[str, int | None]

    @property
    def chunk_peak(self) -> int:
        return self.resident + self.chunk_temp

    @property
    def eval_peak(self) -> int:
        return self.resident + self.eval_extra

    @property
    def peak(self) -> int:
        return max(self.chunk_peak, self.eval_peak)

    def describe(self) -> str:
        return (
            f"about {human(self.peak)} (state and data {human(self.resident)}, "
            f"chunk temporaries {human(self.chunk_temp)}, evaluation "
            f"{human(self.eval_extra)})"
        )

    def to_dict(self) -> dict:
        return {
            "estimate_bytes": self.peak,
            "resident_bytes": self.resident,
            "chunk_temp_bytes": self.chunk_temp,
            "eval_bytes": self.eval_extra,
        }


def footprint(chunk, evaluate, strategy) -> Footprint:
    """From compiled (AOT) chunk and evaluation executables."""
    c, e = chunk.memory_analysis(), evaluate.memory_analysis()
    if c is None or e is None:  # a backend without memory analysis
        return Footprint(0, 0, 0, strategy)
    resident = c.argument_size_in_bytes
    out = max(c.output_size_in_bytes - c.alias_size_in_bytes, 0)
    params = e.argument_size_in_bytes  # params + eval data; params are resident
    return Footprint(
        resident,
        c.temp_size_in_bytes + out,
        params + e.output_size_in_bytes + e.temp_size_in_bytes,
        strategy,
    )


def candidates(
    num_peers: int, start: tuple[str, int | None] = ("vmap", None)
) -> list[tuple[str, int | None]]:
    """``map`` over n/2, n/4, ..., 1 peers: those with fewer peers per chunk
    than ``start`` (full vmap and ``unroll`` hold all n peers' activations)."""
    kind, k = start
    most = k if kind == "map" else num_peers
    out: list[tuple[str, int | None]] = []
    k = num_peers // 2
    while k >= 1:
        if k < most:
            out.append(("map", k))
        k //= 2
    return out


def fit(
    compile_for: Callable[[tuple[str, int | None]], Footprint],
    strategy: tuple[str, int | None],
    num_peers: int,
    budget: Budget | None,
    auto: bool,
) -> Footprint:
    """The footprint of ``strategy``, or of the first candidate within budget.

    Args:
      compile_for: compiles the chunk and evaluation for a strategy.
      strategy: the one the scenario resolved to.
      auto: whether the engine may pick another strategy (``strategy: auto``).

    Raises:
      WorkbenchError: one line when nothing allowed fits the budget.
    """
    first = compile_for(strategy)
    if budget is None or first.peak <= budget.bytes:
        return first
    tried = first
    if auto:
        for option in candidates(num_peers, strategy):
            tried = compile_for(option)
            if tried.peak <= budget.bytes:
                return tried
    hint = (
        "use fewer peers, a smaller model or batch"
        if auto
        else "try execution: {strategy: auto} (it chunks peers to fit), fewer "
        "peers, or a smaller model or batch"
    )
    if budget.explicit:
        hint += ", or a larger budget"
    raise WorkbenchError(
        f"this scenario needs {tried.describe()} with strategy "
        f"{strategy_name(tried.strategy)}, over {budget.source}; {hint}"
    )


def strategy_name(strategy) -> str:
    """``("map", 4)`` -> ``"map x4"``; ``("vmap", None)`` -> ``"vmap"``."""
    kind, k = strategy
    return kind if k is None else f"{kind} x{k}"


def peak_memory() -> dict[str, Any]:
    """Peak resident memory of this process, and of the device when it says."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux
    out: dict[str, Any] = {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    }
    stats = _device_stats()
    if "peak_bytes_in_use" in stats:
        out["peak_device_bytes"] = int(stats["peak_bytes_in_use"])
    return out


CACHE_OPTIONS = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


_HITS = [0]  # programs JAX's persistent cache has served in this process


def _count_hit(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _HITS[0] += 1


jax.monitoring.register_event_listener(_count_hit)


def cache_hits() -> int:
    """Programs the persistent compilation cache has served so far (JAX's events)."""
    return _HITS[0]


@contextlib.contextmanager
def compilation_cache(directory: str):
    """JAX's persistent compilation cache in ``directory`` for the block,
    unless one is already on (then that one); the options are put back."""
    before = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
    if before["jax_compilation_cache_dir"] is None:
        use_compilation_cache(directory)
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def use_compilation_cache(directory: str | None) -> None:
    """Turns on JAX's persistent compilation cache in ``directory`` (every entry)."""
    if directory is None:
        return
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
