"""User-facing errors: one line naming what is wrong and what was expected."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable


class WorkbenchError(Exception):
    """An error caused by user input; the CLI prints it as one line, no traceback."""


class ScenarioError(WorkbenchError):
    """A bad scenario key or value.

    Args:
      path: dotted key path, e.g. ``"topology.d"``.
      message: what is wrong and what was expected.
    """

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class DataError(WorkbenchError):
    """A missing or malformed dataset file."""


class DivergenceError(WorkbenchError):
    """Training produced NaN/inf."""


class RunInterrupted(WorkbenchError):
    """SIGINT or SIGTERM stopped a run; the CLI exits with status 130."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Returns ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(word: str, choices: Iterable[str]) -> str:
    """Message for an unknown name: lists the valid ones and the nearest."""
    choices = sorted(choices)
    return f"unknown '{word}'{did_you_mean(word, choices)}; expected one of {choices}"


def warn(message: str) -> None:
    """Prints one ``workbench: warning: ...`` line on stderr (no traceback, no source
    line, unlike ``warnings.warn``); the run goes on."""
    print(f"workbench: warning: {message}", file=sys.stderr)
