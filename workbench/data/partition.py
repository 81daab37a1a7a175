"""Partitioners: split the training indices among peers.

A partitioner is ``fn(labels, num_peers, rng, groups, **options) -> list of
index arrays``, one per peer, every training index used at most once. The
scenario section ``data.partition`` names one: ``{name: dirichlet, alpha: 0.1}``.

- ``iid``: a uniform random split into near-equal parts.
- ``dirichlet``: per class, proportions ``p ~ Dir(alpha 1_n)`` (Hsu et al. 2019)
  and counts ``~ Multinomial(class size, p)`` (unbiased even for tiny classes,
  unlike flooring cumulative cuts); small alpha -> few classes per peer.
  Redrawn until every peer has ``min_size`` samples.
- ``shards``: sort by label, cut into ``n k`` shards, deal ``k`` to each peer
  (McMahan et al. 2017).
- ``unbalanced``: iid labels, sizes proportional to ``lognormal(0, sigma)``.
- ``class_subsets``: peer i holds ``classes`` of the C classes, the window
  starting at class i * floor(C / n) (wrapping); each class is split evenly
  among the peers holding it (the ETRI seed: 3 peers, 8 of 10 classes each).
- ``contiguous``: the dataset in one order, cut into consecutive parts (the
  dyn-fed seed's splits): ``order: label`` sorts by label (non-IID), then
  swaps ``swaps`` x N random pairs of positions; ``order: random`` shuffles.
  ``cuts: equal`` gives near-equal parts; ``cuts: random`` draws the n - 1
  cut points uniformly (unbalanced), every part at least ``min_size``.
- ``natural``: the dataset's own groups (FEMNIST writers, Synthetic users),
  dealt round-robin to peers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from workbench.errors import ScenarioError
from workbench.registry import Registry

PARTITIONERS = Registry("partition", context=("labels", "num_peers", "rng", "groups"))

_PATH = "data.partition"
_MAX_DRAWS = 1000


def _need(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ScenarioError(f"{_PATH}.{key}" if key else _PATH, message)


def _check_peers(labels: np.ndarray, num_peers: int) -> None:
    _need(num_peers >= 1, "", f"needs at least one peer, got {num_peers}")
    _need(
        len(labels) >= num_peers,
        "",
        f"{len(labels)} training samples cannot give {num_peers} peers one each",
    )


@PARTITIONERS.register("iid")
def iid(labels, num_peers, rng, groups) -> list[np.ndarray]:
    """Uniformly random, sizes differing by at most one."""
    del groups
    _check_peers(labels, num_peers)
    return np.array_split(rng.permutation(len(labels)), num_peers)


def _dirichlet_draw(labels, num_peers, rng, alpha) -> list[np.ndarray]:
    parts = [[] for _ in range(num_peers)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        counts = rng.multinomial(len(idx), rng.dirichlet(np.full(num_peers, alpha)))
        for peer, chunk in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            parts[peer].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels, num_peers, rng, groups, alpha: float = 0.5, min_size: int = 1
) -> list[np.ndarray]:
    """Label skew: each class split among peers by ``Dir(alpha)`` proportions."""
    del groups
    _check_peers(labels, num_peers)
    _need(alpha > 0, "alpha", f"must be > 0, got {alpha}")
    _need(min_size >= 0, "min_size", f"must be >= 0, got {min_size}")
    _need(
        min_size * num_peers <= len(labels),
        "min_size",
        f"{min_size} x {num_peers} peers exceeds the {len(labels)} training samples",
    )
    for _ in range(_MAX_DRAWS):
        parts = _dirichlet_draw(labels, num_peers, rng, alpha)
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ScenarioError(
        f"{_PATH}.min_size",
        f"no Dir({alpha}) draw in {_MAX_DRAWS} gave every peer {min_size} "
        "samples; lower min_size or raise alpha",
    )


@PARTITIONERS.register("shards")
def shards(
    labels, num_peers, rng, groups, shards_per_peer: int = 2
) -> list[np.ndarray]:
    """Pathological non-iid: ``shards_per_peer`` label-sorted shards per peer."""
    del groups
    _check_peers(labels, num_peers)
    total = num_peers * shards_per_peer
    _need(
        shards_per_peer >= 1, "shards_per_peer", f"must be >= 1, got {shards_per_peer}"
    )
    _need(
        total <= len(labels),
        "shards_per_peer",
        f"{num_peers} x {shards_per_peer} shards exceed the {len(labels)} samples",
    )
    shuffled = rng.permutation(len(labels))
    ordered = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(ordered, total)
    deal = rng.permutation(total).reshape(num_peers, shards_per_peer)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]


def lognormal_sizes(total: int, num_peers: int, sigma: float, rng) -> np.ndarray:
    """Sizes >= 1 summing to ``total``, proportional to ``lognormal(0, sigma)``."""
    weights = rng.lognormal(0.0, sigma, num_peers)
    share = weights / weights.sum() * (total - num_peers)
    sizes = np.floor(share).astype(np.int64)
    leftover = total - num_peers - sizes.sum()
    sizes[np.argsort(sizes - share)[:leftover]] += 1  # largest remainders
    return sizes + 1


@PARTITIONERS.register("unbalanced")
def unbalanced(labels, num_peers, rng, groups, sigma: float = 1.0) -> list[np.ndarray]:
    """Random samples, peer sizes from a lognormal(0, sigma) (sigma=0: equal)."""
    del groups
    _check_peers(labels, num_peers)
    _need(sigma >= 0, "sigma", f"must be >= 0, got {sigma}")
    sizes = lognormal_sizes(len(labels), num_peers, sigma, rng)
    return np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])


@PARTITIONERS.register("class_subsets")
def class_subsets(labels, num_peers, rng, groups, classes: int = 8) -> list[np.ndarray]:
    """Peer i: classes (i * floor(C / n) + c) mod C, c < ``classes``."""
    del groups
    _check_peers(labels, num_peers)
    kinds = np.unique(labels)
    C = len(kinds)
    _need(
        1 <= classes <= C, "classes", f"must be in 1..{C} (the classes), got {classes}"
    )
    start = np.arange(num_peers) * (C // num_peers)
    holds = [kinds[(s + np.arange(classes)) % C] for s in start]
    parts = [[] for _ in range(num_peers)]
    for c in kinds:
        owners = [p for p in range(num_peers) if c in holds[p]]
        if not owners:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for peer, chunk in zip(owners, np.array_split(idx, len(owners)), strict=True):
            parts[peer].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def random_sizes(total: int, n: int, min_size: int, rng) -> np.ndarray:
    """n sizes >= min_size summing to ``total``: uniform cut points (stars and bars)."""
    free = total - n * min_size
    cuts = np.sort(rng.choice(free + n - 1, size=n - 1, replace=False))
    gaps = np.diff(np.concatenate([[-1], cuts, [free + n - 1]])) - 1
    return gaps + min_size


@PARTITIONERS.register("contiguous")
def contiguous(
    labels,
    num_peers,
    rng,
    groups,
    order: Literal["label", "random"] = "label",
    swaps: float = 0.0,
    cuts: Literal["equal", "random"] = "equal",
    min_size: int = 1,
) -> list[np.ndarray]:
    """The samples in ``order`` (with ``swaps`` x N pair swaps), cut in turn."""
    del groups
    _check_peers(labels, num_peers)
    total = len(labels)
    _need(swaps >= 0, "swaps", f"must be >= 0, got {swaps}")
    _need(
        1 <= min_size <= total // num_peers,
        "min_size",
        f"must be in 1..{total // num_peers} ({total} samples, {num_peers} peers), "
        f"got {min_size}",
    )
    if order == "label":
        idx = np.argsort(labels, kind="stable")
    else:
        idx = rng.permutation(total)
    pairs = rng.integers(0, total, size=(int(round(swaps * total)), 2))
    for a, b in pairs:
        idx[a], idx[b] = idx[b], idx[a]
    if cuts == "equal":
        return np.array_split(idx, num_peers)
    sizes = random_sizes(total, num_peers, min_size, rng)
    return np.split(idx, np.cumsum(sizes)[:-1])


@PARTITIONERS.register("natural")
def natural(labels, num_peers, rng, groups) -> list[np.ndarray]:
    """The dataset's own groups; group ``j`` (in sorted id order) -> peer ``j % n``."""
    del rng
    _need(
        groups is not None,
        "name",
        "'natural' needs a dataset with natural groups (femnist, synthetic)",
    )
    _check_peers(labels, num_peers)
    ids, owner = np.unique(groups, return_inverse=True)
    _need(
        len(ids) >= num_peers,
        "name",
        f"'natural' has {len(ids)} groups (users) for {num_peers} peers; "
        f"use at most {len(ids)} peers",
    )
    peer_of = np.arange(len(ids)) % num_peers
    return [np.flatnonzero(peer_of[owner] == p) for p in range(num_peers)]
