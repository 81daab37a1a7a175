"""Loss-based attacks on a message: membership (loss threshold) and linkability.

The score functions are pure jax.numpy, written for one target (one message,
one victim) and vmapped by the caller over messages, victims or rounds; they
never loop over samples in Python. The loss threshold attack of Yeom et al.
(2018) scores a sample by minus its loss under the attacked model; the
decentralizepy / Zip-DL evaluation adds a balanced version (non-members
subsampled to the member count), a per-class breakdown and the "biased
threshold" (fraction of members among the k lowest losses). Linkability guesses
a message's source as the peer whose training set has the lowest mean loss.
Turning scores into figures is ``workbench.privacy.metrics`` (host side).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench.privacy.metrics import attack_metrics

BIASED_KS = (1, 5, 10, 100, 250, 500)


def example_losses(logits: jax.Array, y: jax.Array) -> jax.Array:
    """(m,) per-example cross-entropy of logits (m, c) at integer labels y (m,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def threshold_scores(losses: jax.Array) -> jax.Array:
    """Loss threshold membership scores (Yeom et al.): -loss, same shape."""
    return -losses


def balanced_indices(
    key: jax.Array, count_nonmembers: int, count_members: int
) -> jax.Array:
    """(min(members, non-members),) distinct non-member indices, drawn from key.

    Index the non-member scores with it for the balanced attack; with fewer
    non-members than members every non-member is kept (in a shuffled order).
    """
    size = min(count_members, count_nonmembers)
    return jax.random.permutation(key, count_nonmembers)[:size]


def lowest_member_fraction(
    member_losses: jax.Array, nonmember_losses: jax.Array, ks=BIASED_KS
) -> jax.Array:
    """(len(ks),) fraction of members among the k lowest losses of the pool.

    The pool is both sides together; k is capped to its size (m + k'), so a k
    beyond it gives the overall member fraction. Tied losses rank non-members
    first (the conservative side). ``ks`` is static; vmappable over targets.
    """
    pooled = jnp.concatenate([nonmember_losses, member_losses])  # (p,)
    is_member = jnp.concatenate(
        [jnp.zeros(nonmember_losses.shape), jnp.ones(member_losses.shape)]
    )  # (p,)
    order = jnp.argsort(pooled, stable=True)  # (p,)
    members_below = jnp.cumsum(is_member[order])  # (p,) members among the j+1 lowest
    capped = np.minimum(np.asarray(ks), pooled.shape[0])  # (len(ks),) static
    return members_below[capped - 1] / capped


_jit_lowest_member_fraction = jax.jit(lowest_member_fraction, static_argnums=2)


def biased_threshold(member_losses, nonmember_losses, ks=BIASED_KS) -> dict[int, float]:
    """{k: fraction of members among the k lowest pooled losses}, k capped.

    See ``lowest_member_fraction``: k is capped to the pool size (members plus
    non-members), and ties rank non-members first.
    """
    fractions = _jit_lowest_member_fraction(
        jnp.asarray(member_losses), jnp.asarray(nonmember_losses), tuple(ks)
    )
    return {int(k): float(f) for k, f in zip(ks, np.asarray(fractions), strict=True)}


def per_class_metrics(
    member_scores,
    member_labels,
    nonmember_scores,
    nonmember_labels,
    num_classes: int,
) -> dict[int, dict[str, float]]:
    """{class: attack_metrics on that class's samples}, host side.

    A class is reported only when it has both members and non-members.
    """
    member_scores, member_labels = np.asarray(member_scores), np.asarray(member_labels)
    nonmember_scores = np.asarray(nonmember_scores)
    nonmember_labels = np.asarray(nonmember_labels)
    out = {}
    for c in range(num_classes):
        inside = member_scores[member_labels == c]  # (m_c,)
        outside = nonmember_scores[nonmember_labels == c]  # (k_c,)
        if inside.size and outside.size:
            out[c] = attack_metrics(inside, outside)
    return out


def source_ranks(mean_losses: jax.Array, source: jax.Array) -> jax.Array:
    """(messages,) 1-based rank of each message's true source by mean loss.

    Args:
        mean_losses: (messages, peers) mean loss of each message's model on each
            peer's training set.
        source: (messages,) int, the peer that sent each message.

    Rank = 1 + number of peers with a strictly lower loss than the source (ties
    count in the source's favour).
    """
    own = jnp.take_along_axis(mean_losses, source[:, None], axis=1)  # (messages, 1)
    return 1 + jnp.sum(mean_losses < own, axis=1)


def linkability(mean_losses: jax.Array, source: jax.Array) -> dict[str, jax.Array]:
    """Source-guessing accuracy: {top1, top5, mean_rank}, each a () array.

    ``topk`` is the fraction of messages whose true source ranks <= k (see
    ``source_ranks``; with fewer than 5 peers top5 is over all peers, i.e. 1);
    ``mean_rank`` is the mean 1-based rank. Pure jnp, vmappable.
    """
    ranks = source_ranks(mean_losses, source)  # (messages,)
    return {
        "top1": jnp.mean(ranks <= 1),
        "top5": jnp.mean(ranks <= 5),
        "mean_rank": jnp.mean(ranks.astype(jnp.float32)),
    }
