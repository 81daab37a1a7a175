"""The wire format: a small msgpack header, then the raw bytes of each array.

A message is a multipart zmq message ``[header, buffer_0, buffer_1, ...]``.
The header is a msgpack map of plain types (never pickle, never eval)::

    v         format version (VERSION)
    kind      what the message is ("data", "up", "down", "go", "done", ...)
    round     the round it belongs to
    step      the gossip step within the round (0 for one exchange per round)
    sender    rank of the node that sent it
    receiver  rank of the node it is for
    arrays    [[name, dtype, shape, nbytes], ...], one per buffer, in order
    live      (go only) the ranks taking part in the round

``decode`` checks every field (types, version, receiver, that the sender is
the authenticated connection, the array list against the names, dtypes and
shapes expected for that kind, and each buffer's byte count) before a single
array byte is read; anything else is a :class:`WireError` with one line.
Arrays go to the socket as buffers (``copy=False``): the only copy is the
host's own (device to host), and receiving wraps the frames without copying.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

VERSION = 1
MAX_HEADER = 1 << 16  # bytes; a header is a few hundred
MAX_ARRAYS = 4096
DTYPES = frozenset(
    {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32",
     "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
)  # fmt: skip


class WireError(Exception):
    """A message that is not what this node expects (one line, never raised out)."""


class ArraySpec(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class Header(BaseModel):
    model_config = ConfigDict(extra="forbid")  # scalars strict; lists as tuples

    v: StrictInt
    kind: StrictStr = Field(max_length=16)
    round: StrictInt = Field(ge=0)
    step: StrictInt = Field(ge=0)
    sender: StrictInt = Field(ge=0)
    receiver: StrictInt = Field(ge=0)
    arrays: list[tuple[StrictStr, StrictStr, list[StrictInt], StrictInt]] = Field(
        max_length=MAX_ARRAYS
    )
    live: list[StrictInt] | None = None


class Message(NamedTuple):
    kind: str
    round: int
    step: int
    sender: int
    arrays: dict[str, np.ndarray]  # read-only views of the frames
    live: tuple[int, ...] | None = None


def encode(
    kind: str,
    round_: int,
    step: int,
    sender: int,
    receiver: int,
    arrays: Mapping[str, Any],
    live=None,
) -> list:
    """Frames ``[header, buffers...]`` for ``arrays`` (name -> array)."""
    # np.require keeps a 0-d array 0-d (ascontiguousarray makes it (1,))
    bufs = [np.require(a, requirements="C") for a in arrays.values()]
    specs = [
        [name, str(b.dtype), list(b.shape), b.nbytes]
        for name, b in zip(arrays, bufs, strict=True)
    ]
    header = {
        "v": VERSION,
        "kind": kind,
        "round": int(round_),
        "step": int(step),
        "sender": int(sender),
        "receiver": int(receiver),
        "arrays": specs,
    }
    if live is not None:
        header["live"] = [int(r) for r in live]
    return [msgpack.packb(header, use_bin_type=True)] + [memoryview(b) for b in bufs]


class Expect(NamedTuple):
    """What a node accepts: its rank, the ranks that exist, and per kind the
    array specs {name: (dtype, shape)} (a shape's leading -1: any length)."""

    rank: int
    ranks: int
    kinds: Mapping[str, tuple[Mapping[str, tuple[str, tuple[int, ...]]], ...]]


def _header(frame: bytes) -> Header:
    if len(frame) > MAX_HEADER:
        raise WireError(f"header of {len(frame)} bytes (at most {MAX_HEADER})")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, TypeError) as e:  # fmt: skip
        raise WireError(f"header is not msgpack ({type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise WireError("header is not a msgpack map")
    try:
        return Header.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "header"
        raise WireError(f"header field '{where}': {err['msg']}") from None


def _shape_ok(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    if len(shape) != len(want):
        return False
    return all(w == -1 or s == w for s, w in zip(shape, want, strict=True))


def _check_arrays(h: Header, frames: list, expect: Expect) -> list[ArraySpec]:
    variants = expect.kinds.get(h.kind)
    if variants is None:
        raise WireError(f"unknown message kind '{h.kind}'")
    names = [a[0] for a in h.arrays]
    wanted = next((v for v in variants if list(v) == names), None)
    if wanted is None:
        raise WireError(
            f"'{h.kind}' message with arrays {names[:3]}... (expected "
            f"{list(variants[0])[:3]}...)"
        )
    if len(frames) != len(h.arrays):
        raise WireError(
            f"'{h.kind}' message has {len(frames)} buffers for {len(h.arrays)} "
            "arrays (truncated?)"
        )
    specs = []
    for (name, dtype, shape, nbytes), frame in zip(h.arrays, frames, strict=True):
        want_dtype, want_shape = wanted[name]
        shape = tuple(shape)
        if dtype != want_dtype or dtype not in DTYPES:
            raise WireError(f"array '{name}' has dtype {dtype}, expected {want_dtype}")
        if any(s < 0 for s in shape) or not _shape_ok(shape, want_shape):
            raise WireError(f"array '{name}' has shape {shape}, expected {want_shape}")
        size = int(np.prod(shape, dtype=np.int64)) * jnp.dtype(dtype).itemsize
        if nbytes != size or len(frame) != size:
            raise WireError(
                f"array '{name}' has {len(frame)} bytes, its header says {nbytes}, "
                f"its dtype and shape {size}"
            )
        specs.append(ArraySpec(name, dtype, shape, nbytes))
    return specs


def decode(frames: list, expect: Expect, authenticated: int | None = None) -> Message:
    """The message in ``frames`` (bytes-like), or a one-line :class:`WireError`.

    ``authenticated`` is the rank whose key the connection proved (CurveZMQ);
    the header's sender must match it.
    """
    if not frames:
        raise WireError("empty message")
    h = _header(bytes(frames[0]))
    if h.v != VERSION:
        raise WireError(f"wire format version {h.v}, this node speaks {VERSION}")
    if h.receiver != expect.rank:
        raise WireError(f"message for rank {h.receiver} reached rank {expect.rank}")
    if h.sender >= expect.ranks or h.sender == expect.rank:
        raise WireError(f"sender rank {h.sender} is not another node of this run")
    if authenticated is not None and authenticated != h.sender:
        raise WireError(
            f"sender claims rank {h.sender} but authenticated as rank {authenticated}"
        )
    specs = _check_arrays(h, list(frames[1:]), expect)
    arrays = {
        s.name: np.frombuffer(f, dtype=jnp.dtype(s.dtype)).reshape(s.shape)
        for s, f in zip(specs, frames[1:], strict=True)
    }
    live = None if h.live is None else tuple(h.live)
    return Message(h.kind, h.round, h.step, h.sender, arrays, live)
