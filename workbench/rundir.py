"""Run directories: where a run may write, and one run per directory at a time.

A run directory holds ``scenario.yaml`` from the moment the run starts. A run
is refused a directory that is a file, holds another run (use ``--resume``) or
holds anything else (someone's own files). While a run lives it holds an OS
file lock (``flock``) on ``<run>/.lock``; the kernel releases it when the
process exits or crashes, so a stale lock never blocks a resume. The lock file
records who holds it, so a second process can name the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from workbench.errors import WorkbenchError

LOCK_NAME = ".lock"
RUN_MARKER = "scenario.yaml"


def new_run_dir(root: str | os.PathLike, name: str) -> Path:
    """Creates ``root/name/<timestamp>`` (a suffix keeps same-second runs apart)."""
    base = Path(root) / name / time.strftime("%Y%m%d-%H%M%S")
    path, i = base, 1
    while True:
        try:
            with disk_errors(path):
                path.mkdir(parents=True)
            return path
        except FileExistsError:
            path, i = base.with_name(f"{base.name}-{i}"), i + 1


def _contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)


def check_out_dir(path: Path) -> None:
    """Refuses an ``--out`` that is a file, a run, or a folder with other files."""
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f"--out {path} is a file; expected a directory")
    if not path.is_dir():
        return
    contents = _contents(path)
    if RUN_MARKER in contents:
        raise WorkbenchError(
            f"--out {path} already holds a run; continue it with --resume {path} "
            "or pick a new directory"
        )
    if contents:
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise WorkbenchError(
            f"--out {path} is not empty ({shown}) and is not a run directory; "
            "pick a new or empty directory"
        )


def is_finished(run_dir: Path, rounds: int) -> dict | None:
    """The summary of a finished run (all ``rounds`` done), else None."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("rounds") == rounds else None


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Holds the run directory's lock for the ``with`` block; fails at once if held."""
    lock = run_dir / LOCK_NAME
    with disk_errors(lock):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkbenchError(
                f"{run_dir} is in use by {_holder(lock)}; wait for it to finish "
                "or pick another directory"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with disk_errors(lock):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


ADVICE = {
    errno.ENOSPC: "free some space or write the run elsewhere with --out",
    errno.EDQUOT: "free some space or write the run elsewhere with --out",
    errno.EROFS: "the file system is read-only; write the run elsewhere with --out",
    errno.EACCES: "no permission; write the run elsewhere with --out",
    errno.EPERM: "no permission; write the run elsewhere with --out",
    errno.ENOTDIR: "a path component is a file; pick another --out",
    errno.EISDIR: "a directory is in the way; pick another --out",
}


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turns an OSError while writing ``path`` into one line saying what to do."""
    try:
        yield
    except (FileExistsError, BlockingIOError):
        raise
    except OSError as e:
        advice = ADVICE.get(e.errno, "check the path and disk, or pick another --out")
        reason = e.strerror or type(e).__name__
        raise WorkbenchError(f"cannot write {path}: {reason}; {advice}") from None
