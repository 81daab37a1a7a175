"""Device memory: what a scenario's state needs, and a readable out-of-memory error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

from workbench.errors import WorkbenchError

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays or ShapeDtypeStructs."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def human(nbytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    units, i = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while nbytes >= 1024 and i < len(units) - 1:
        nbytes, i = nbytes / 1024, i + 1
    return f"{nbytes:.0f} B" if i == 0 else f"{nbytes:.1f} {units[i]}"


class StateEstimate:
    """n x parameters x bytes x state multiplier, for the out-of-memory message."""

    def __init__(self, num_peers: int, param_bytes: int, state_bytes: int):
        self.num_peers = num_peers
        self.param_bytes = param_bytes  # one peer's model
        self.state_bytes = state_bytes  # one peer's algorithm state

    @property
    def multiplier(self) -> float:
        return self.state_bytes / max(self.param_bytes, 1)

    @property
    def total(self) -> int:
        return self.num_peers * self.state_bytes

    def describe(self) -> str:
        return (
            f"the stacked state alone needs {self.num_peers} peers x "
            f"{self.param_bytes:,} parameter bytes x {self.multiplier:.2f} "
            f"(parameters with optimizer and algorithm state) = {human(self.total)}"
        )


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, jax.errors.JaxRuntimeError) and any(
        m in str(error) for m in OOM_MARKERS
    )


@contextlib.contextmanager
def out_of_memory_guard(estimate: StateEstimate | None) -> Iterator[None]:
    """Turns a device or host out-of-memory error into one line with the need."""
    try:
        yield
    except (MemoryError, jax.errors.JaxRuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        need = f"; {estimate.describe()}" if estimate else ""
        raise WorkbenchError(
            f"out of memory on {jax.devices()[0].platform}{need}; use fewer peers, "
            "a smaller model or batch, or execution: {strategy: map, "
            "peers_per_chunk: K} to bound the working memory"
        ) from None
