"""SIGINT and SIGTERM end a run cleanly: never in the middle of writing results.

While ``handle_termination()`` is active both signals raise KeyboardInterrupt,
except inside a ``deferred()`` block (writing a chunk's rows and checkpoint),
where the signal is remembered and raised when the block ends. So a run stops
after a whole chunk is written, or abandons the chunk in flight; either way
``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Deferral:
    depth = 0
    pending: int | None = None


_state = _Deferral()


def _handler(signum, frame) -> None:
    del frame
    if _state.depth:
        _state.pending = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """Routes SIGINT and SIGTERM to KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Holds SIGINT/SIGTERM until the block is done, then raises KeyboardInterrupt."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if not _state.depth and _state.pending is not None:
        signum, _state.pending = _state.pending, None
        raise KeyboardInterrupt(signal.Signals(signum).name)
