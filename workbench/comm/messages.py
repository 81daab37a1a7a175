"""Messages: what a peer sends, and exactly how many bits that costs.

An outbox is any pytree. A part wrapped in :class:`Coded` (what a compressor
produces) costs the bits it reports; any other leaf costs its size times the
bits of its dtype. Receivers only ever see the values (``plain``).

For the ``edge`` exchange, a part wrapped in :class:`PerEdge` holds one value
per out-edge of the sender (leaves (k - 1, ...), row c for the neighbour in
column c + 1 of the sender's table; column 0 is the sender itself): the
message function sees only the receiver's row. A message that an edge's
schedule does not send this round is ``sent_if(message, False)``: it costs 0
bits (the receiver must ignore it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class Coded(NamedTuple):
    """A compressed message part: its decoded value and the bits on the wire."""

    value: PyTree  # what the receiver reconstructs
    bits: jax.Array  # () exact bits sent (values, indices, scales)


class PerEdge(NamedTuple):
    """Per-out-edge values in an outbox (``edge`` exchange only)."""

    value: PyTree  # leaves (k - 1, ...): row c is for the sender's table column c + 1


class Scored(NamedTuple):
    """A server upload with a score (``server`` exchange): the server weighs
    the uploads by the softmax of their scores (a client's loss)."""

    value: PyTree  # the upload
    score: jax.Array  # () the client's score; costs its bits like any leaf


def sent_if(message: PyTree, sent) -> Coded:
    """``message`` costing its bits if ``sent`` (a () bool), else 0 bits."""
    bits = message_bits(message, batch_dims=0)  # a Coded part: its own bits
    return Coded(plain(message), jnp.where(sent, bits, 0.0))


def _is_coded(x) -> bool:
    return isinstance(x, Coded)


def plain(outbox: PyTree) -> PyTree:
    """The outbox with every Coded part replaced by its value."""
    return jax.tree.map(
        lambda x: x.value if _is_coded(x) else x, outbox, is_leaf=_is_coded
    )


def message_bits(outbox: PyTree, batch_dims: int = 1) -> jax.Array:
    """Bits of each message in a stacked outbox: shape ``leaves.shape[:batch_dims]``.

    Args:
      outbox: messages with ``batch_dims`` leading axes (senders, or edges).
      batch_dims: how many leading axes index messages rather than content.
    """

    def bits(x):
        if _is_coded(x):
            return x.bits.astype(jnp.float32)
        lead, inner = x.shape[:batch_dims], x.shape[batch_dims:]
        size = 1
        for d in inner:
            size *= d
        return jnp.full(lead, size * x.dtype.itemsize * 8, jnp.float32)

    parts = jax.tree.leaves(jax.tree.map(bits, outbox, is_leaf=_is_coded))
    return sum(parts[1:], parts[0]) if parts else jnp.zeros(())


class Inbox(NamedTuple):
    """What a ``gather`` or ``edge`` exchange delivers to one peer."""

    messages: PyTree  # leaves (k, ...): column c came from topo.idx[c]
    weight: jax.Array  # (k,) W_ij
    mask: jax.Array  # (k,) bool: a real in-neighbour (column 0, self, is False)
