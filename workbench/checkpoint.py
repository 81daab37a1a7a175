"""Checkpoints: checksummed, tied to their scenario, restored with shape checks.

A checkpoint file ``checkpoints/round_<r>.msgpack`` is a msgpack map (plain
types only, never pickle):

    format, version    what wrote it
    round              rounds completed
    scenario           the resolved scenario as canonical JSON
    scenario_sha256    digest of that JSON
    payload            flax-serialized state and totals (bytes)
    payload_sha256     checksum of ``payload``

Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint under the real name; a file corrupted afterwards fails
its checksum and resume falls back to the previous good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import msgpack
import numpy as np

from workbench.errors import WorkbenchError, warn
from workbench.rundir import disk_errors

FORMAT, VERSION = "workbench-checkpoint", 1


class CorruptCheckpoint(WorkbenchError):
    """A checkpoint that cannot be read or fails its checksum."""


class Checkpoint(NamedTuple):
    path: Path
    round: int
    scenario: dict  # the resolved scenario it was written with
    payload: bytes  # flax-serialized pytree


def canonical(scenario: dict) -> str:
    return json.dumps(scenario, sort_keys=True, separators=(",", ":"), default=str)


def digest(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# flax serializes an array above its MAX_CHUNK_SIZE as a list of chunks (and
# reads either form back): with small chunks no leaf is copied whole on the
# way to the payload. Saving a 105 MB stacked state raised peak memory by
# 299 MB with flax's default (1 GiB), by 197-208 MB (its host copy and the
# payload) with this.
CHUNK_BYTES = 4 * 2**20


@contextlib.contextmanager
def _chunks_of(size: int):
    default = flax.serialization.MAX_CHUNK_SIZE
    flax.serialization.MAX_CHUNK_SIZE = size
    try:
        yield
    finally:
        flax.serialization.MAX_CHUNK_SIZE = default


def _serialize(tree) -> bytes:
    """flax's msgpack bytes of ``tree``, its arrays fetched and chunked."""
    host = jax.device_get(tree)
    with _chunks_of(CHUNK_BYTES):
        return flax.serialization.to_bytes(host)


def _bin_header(size: int) -> bytes:
    """msgpack's header of a ``bytes`` value: the smallest of bin 8, 16, 32."""
    for code, width in ((0xC4, "B"), (0xC5, "H"), (0xC6, "I")):
        if size < 2 ** (8 * struct.calcsize(width)):
            return struct.pack(f">B{width}", code, size)
    raise ValueError(f"msgpack cannot hold {size} bytes in one value")


def _write_map(f, record: dict) -> None:
    """``msgpack.packb(record)``'s bytes, written field by field: a large
    ``bytes`` value goes to the file as it is, not copied into one buffer
    (a 108 MB FEMNIST CNN state would be held twice more)."""
    packer = msgpack.Packer(use_bin_type=True)
    f.write(packer.pack_map_header(len(record)))
    for key, value in record.items():
        f.write(packer.pack(key))
        if isinstance(value, bytes):  # msgpack's bin 8/16/32 header, then the bytes
            f.write(_bin_header(len(value)))
            f.write(value)
        else:
            f.write(packer.pack(value))


def save_checkpoint(
    run_dir: Path, round_: int, tree: Any, scenario: dict, keep: int = 2
) -> Path:
    """Writes ``tree`` atomically as checkpoints/round_<r>.msgpack; keeps ``keep``."""
    ckpt_dir = run_dir / "checkpoints"
    path = ckpt_dir / f"round_{round_:08d}.msgpack"
    payload = _serialize(tree)
    text = canonical(scenario)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "round": int(round_),
        "scenario": text,
        "scenario_sha256": digest(text),
        "payload": payload,
        "payload_sha256": digest(payload),
    }
    tmp = path.with_suffix(".tmp")
    with disk_errors(path):
        ckpt_dir.mkdir(exist_ok=True)
        with tmp.open("wb") as f:
            _write_map(f, record)
        os.replace(tmp, path)
        for old in sorted(ckpt_dir.glob("round_*.msgpack"))[:-keep]:
            old.unlink()
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """Reads and verifies one checkpoint file; raises CorruptCheckpoint."""
    try:
        record = msgpack.unpackb(path.read_bytes(), raw=False)
        if isinstance(record, dict) and "state" in record and "format" not in record:
            raise WorkbenchError(
                f"{path} was written by a workbench before checkpoints carried a "
                "checksum and their scenario; resume it with that version"
            )
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("not a workbench checkpoint")
        payload, text = record["payload"], record["scenario"]
        if digest(payload) != record["payload_sha256"]:
            raise ValueError("payload checksum mismatch")
        if digest(text) != record["scenario_sha256"]:
            raise ValueError("scenario checksum mismatch")
        return Checkpoint(path, int(record["round"]), json.loads(text), payload)
    except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({e})") from None


def latest_good(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; corrupt newer ones are set aside."""
    for path in sorted((run_dir / "checkpoints").glob("round_*.msgpack"))[::-1]:
        try:
            return read_checkpoint(path)
        except CorruptCheckpoint as e:
            aside = path.with_name(path.name + ".corrupt")
            warn(f"{e}; set aside as {aside.name}, trying an older one")
            with disk_errors(aside):
                os.replace(path, aside)
    return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two scenario dicts."""
    a, b = _flat(json.loads(canonical(old))), _flat(json.loads(canonical(new)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, None) != b.get(k, None))


def restore(ckpt: Checkpoint, target: Any) -> Any:
    """Restores ``ckpt`` into the structure of ``target``, checking every leaf."""
    try:
        got = flax.serialization.from_bytes(target, ckpt.payload)
    except Exception as e:  # flax raises several types on a structure mismatch
        raise WorkbenchError(
            f"cannot restore {ckpt.path}: {e}; expected a checkpoint of this scenario"
        ) from None
    expected = jax.tree_util.tree_flatten_with_path(target)[0]
    restored = jax.tree_util.tree_leaves(got)
    if len(expected) != len(restored):
        raise WorkbenchError(
            f"{ckpt.path} holds {len(restored)} arrays; expected {len(expected)}"
        )
    for (path, want), have in zip(expected, restored, strict=True):
        want_type, have_type = _dtype(want), _dtype(have)
        if np.shape(want) != np.shape(have) or want_type != have_type:
            raise WorkbenchError(
                f"{ckpt.path}: {jax.tree_util.keystr(path)} is {have_type}"
                f"{list(np.shape(have))}; expected {want_type}{list(np.shape(want))}"
            )
    return got


def _dtype(x: Any) -> str:
    return str(x.dtype) if hasattr(x, "dtype") else str(np.asarray(x).dtype)
