"""The progress display of a run: rounds done, accuracy, throughput, compiling."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn


class RunProgress:
    """A rich progress bar over rounds; says when it is compiling.

    Use as a context manager; with ``enabled=False`` it prints nothing.
    """

    def __init__(
        self, total: int, start: int, enabled: bool, console: Console | None = None
    ):
        self.bar = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not enabled,
            console=console,
        )
        self.task = self.bar.add_task("rounds", total=total, completed=start, status="")

    def __enter__(self) -> RunProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def compiling(self, what: str) -> None:
        self.bar.update(self.task, status=f"compiling {what}...")
        self.bar.refresh()

    def advance(self, round_: int, accuracy: float, peer_steps: float) -> None:
        status = f"acc {accuracy:.3f}  {peer_steps:,.0f} peer-steps/s"
        self.bar.update(self.task, completed=round_, status=status)
