"""dyn-fed's failure handling: a crashed peer's most representative samples
go to the live peers (``clock.faults.redistribute: k``).

When a peer goes down (it was up in the last tick), the server takes the
``k`` samples of its training data (its own and any it was sent before) on
which its last model has the highest loss, and sends them to the peers that
are up, evenly: the j-th (highest loss first; several crashed peers in id
order) to the (j mod L)-th of the L live peers in id order. A peer keeps what
it is sent in an overlay of at most ``capacity`` samples, (n, E) flat indices
into the training arrays, and samples its batches from its own data followed
by the overlay. The server pays for each sample it sends: its features and
label at 32 bits each.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from workbench.objective import Batch


def per_sample_loss(loss_fn: Callable) -> Callable:
    """``(params, x (m, ...), y (m,)) -> (m,)``: ``loss_fn`` on each sample alone."""

    def losses(params, x, y):
        one = lambda xi, yi: loss_fn(params, Batch(xi[None], yi[None], jnp.ones(1)))  # noqa: E731
        return jax.vmap(one)(x, y)

    return losses


def overlay(x, y, size, moved, moved_n):
    """Each peer's data with the samples it was sent appended: (x, y, size)
    with m + E positions, the overlay at positions size_i .. size_i + moved_n_i."""
    n, m = y.shape
    cap = moved.shape[1]
    if cap == 0:
        return x, y, size
    flat, real = jax.vmap(lambda p: positions(size, moved, moved_n, p, m))(
        jnp.arange(n)
    )  # (n, m + E)
    xf = x.reshape((n * m,) + x.shape[2:])
    grow = (1,) * (x.ndim - 2)
    x2 = jnp.where(real.reshape(real.shape + grow), xf[flat], 0)
    y2 = jnp.where(real, y.reshape(-1)[flat], 0)
    return x2, y2, size + moved_n


def positions(size, moved, moved_n, peer, m: int):
    """(m + E,) flat training index of each position of ``peer``'s data (its
    own samples, then its overlay), and (m + E,) whether the position is real."""
    cap = moved.shape[1]
    pos = jnp.arange(m + cap)
    own = pos < size[peer]
    j = pos - size[peer]
    extra = ~own & (j < moved_n[peer])
    theirs = moved[peer, jnp.clip(j, 0, cap - 1)]  # cap >= 1 (see overlay)
    flat = jnp.where(own, peer * m + jnp.minimum(pos, m - 1), theirs)
    real = own | extra
    return jnp.where(real, flat, 0), real


def most_representative(losses, real, k: int):
    """(k,) positions of the ``k`` highest losses among the real ones, highest
    first, and (k,) whether each is real (fewer than k real samples)."""
    masked = jnp.where(real, losses, -jnp.inf)
    top, where = jax.lax.top_k(masked, k)
    return where, top > -jnp.inf


def assign(picked, valid, alive, moved, moved_n, offset=0):
    """The overlays after sending the ``valid`` ``picked`` (flat indices) to
    the live peers, round robin in id order from the ``offset``-th; and how
    many were sent (the rest did not fit)."""
    n, cap = moved.shape
    live = jnp.maximum(jnp.sum(alive), 1)
    order = jnp.argsort(~alive, stable=True)  # live peers first, in id order
    target = order[(offset + jnp.cumsum(valid) - 1) % live]
    mine = (target[:, None] == jnp.arange(n)[None, :]) & valid[:, None]  # (k, n)
    before = (jnp.cumsum(mine, axis=0) - mine)[jnp.arange(len(target)), target]
    slot = moved_n[target] + before
    ok = valid & jnp.any(alive) & (slot < cap)
    moved = moved.at[jnp.where(ok, target, n), slot].set(picked, mode="drop")
    moved_n = moved_n + jnp.zeros((n,), moved_n.dtype).at[target].add(ok)
    return moved, moved_n, jnp.sum(ok)


def make_redistribute(sample_loss: Callable, k: int, m: int):
    """``(params (n, ...), x, y, size, moved, moved_n, down (n,), alive (n,))
    -> (moved, moved_n, samples sent)``: each peer in ``down`` in id order."""

    def one(params, x, y, size, carry, peer, alive):
        moved, moved_n, sent, given = carry
        flat, real = positions(size, moved, moved_n, peer, m)
        xf = x.reshape((-1,) + x.shape[2:])
        mine = jax.tree.map(lambda a: a[peer], params)
        losses = sample_loss(mine, xf[flat], y.reshape(-1)[flat])
        where, valid = most_representative(losses, real, k)
        moved, moved_n, count = assign(flat[where], valid, alive, moved, moved_n, given)
        return moved, moved_n, sent + count, given + jnp.sum(valid)

    def redistribute(params, x, y, size, moved, moved_n, down, alive):
        def body(state):
            left, carry = state
            peer = jnp.argmax(left)
            carry = one(params, x, y, size, carry, peer, alive)
            return left.at[peer].set(False), carry

        zero = jnp.zeros((), jnp.int32)
        start = (down, (moved, moved_n, zero, zero))
        _, (moved, moved_n, sent, _) = jax.lax.while_loop(
            lambda s: jnp.any(s[0]), body, start
        )
        return moved, moved_n, sent

    return redistribute
