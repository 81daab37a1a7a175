"""From a ``DataConfig`` to padded per-peer arrays the engine puts on device.

Steps (all randomness from ``seed``, one numpy stream per purpose):
load the dataset -> partition the training indices among peers -> hold out a
per-peer validation split (and apply ``max_train_per_peer``) -> standardise
each channel with statistics of the peers' training samples -> pad every peer
to the largest size. Same seed, same arrays. A peer with fewer training
samples than ``batch_size`` gets a one-line warning (its batches, drawn with
replacement, repeat samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from workbench.data.config import DataConfig
from workbench.data.dataset import DATASETS, Dataset, resolve_data_dir
from workbench.data.partition import PARTITIONERS
from workbench.errors import ScenarioError, warn

_PARTITION, _VALIDATION = 1, 2  # stream ids: default_rng([seed, purpose])
_CHUNK = 4096


class PeerArrays(NamedTuple):
    """Per-peer samples, zero-padded to a common length."""

    x: np.ndarray  # (n, m_max, *input_shape) float32, zero-padded
    y: np.ndarray  # (n, m_max) int32, padded with 0
    size: np.ndarray  # (n,) int32 true number of samples per peer


class FederatedData(NamedTuple):
    """Everything the engine needs about the data of one run."""

    train: PeerArrays
    val: PeerArrays  # sizes may be 0 (val_fraction=0); m_max >= 1 always
    test_x: np.ndarray  # (m_test, *input_shape) global test set
    test_y: np.ndarray  # (m_test,) int32
    num_classes: int
    input_shape: tuple[int, ...]


def load_dataset(cfg: DataConfig, seed: int, data_dir: str | None) -> Dataset:
    """Calls the configured loader (``data_dir`` resolved as for the CLI)."""
    DATASETS.lookup(cfg.name, "data.name")
    kwargs = DATASETS.validate(cfg.name, cfg.options, "data.options")
    return DATASETS[cfg.name](data_dir=resolve_data_dir(data_dir), seed=seed, **kwargs)


def split_validation(
    idx: np.ndarray,
    val_fraction: float,
    max_train: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffles one peer's indices into (train, val).

    ``floor(val_fraction * len)`` samples go to val (at least one stays in
    train). With ``max_train``, train keeps its first ``max_train`` and val its
    first ``floor(max_train * f / (1 - f))`` so the ratio is preserved.
    """
    idx = rng.permutation(idx)
    num_val = min(int(np.floor(val_fraction * len(idx))), max(len(idx) - 1, 0))
    val, train = idx[:num_val], idx[num_val:]
    if max_train is not None:
        train = train[:max_train]
        val = val[: int(np.floor(max_train * val_fraction / (1.0 - val_fraction)))]
    return train, val


def channel_stats(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) mean and std of ``x[idx]``; std 0 becomes 1.

    Accumulated in float64 over chunks, so no copy of the whole subset is made.
    """
    channels = x.shape[-1]
    total, sq, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(idx), _CHUNK):
        rows = x[idx[start : start + _CHUNK]].reshape(-1, channels).astype(np.float64)
        total += rows.sum(0)
        sq += np.square(rows).sum(0)
        count += len(rows)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def pad_peers(
    x: np.ndarray,
    y: np.ndarray,
    parts: Sequence[np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray],
) -> PeerArrays:
    """Stacks ``transform(x[idx])`` per peer, zero-padded to max(1, max size)."""
    sizes = np.asarray([len(p) for p in parts], np.int32)
    m_max = max(int(sizes.max(initial=0)), 1)
    out_x = np.zeros((len(parts), m_max, *x.shape[1:]), np.float32)
    out_y = np.zeros((len(parts), m_max), np.int32)
    for i, idx in enumerate(parts):
        out_x[i, : len(idx)] = transform(x[idx])
        out_y[i, : len(idx)] = y[idx]
    return PeerArrays(out_x, out_y, sizes)


def partition_indices(
    cfg: DataConfig, ds: Dataset, num_peers: int, seed: int
) -> list[np.ndarray]:
    """Runs the configured partitioner; every peer must get a sample."""
    rng = np.random.default_rng([seed, _PARTITION])
    parts = PARTITIONERS.build(
        cfg.partition,
        "data.partition",
        labels=ds.train_y,
        num_peers=num_peers,
        rng=rng,
        groups=ds.train_groups,
    )
    return [np.asarray(p, np.int64) for p in parts]


def warn_small_peers(batch_size: int, sizes: Sequence[int]) -> None:
    """One warning line when some peer has fewer training samples than a batch.

    Batches are drawn with replacement, so such a peer's batches repeat its
    samples.
    """
    small = [i for i, m in enumerate(sizes) if m < batch_size]
    if not small:
        return
    peer = min(small, key=lambda i: sizes[i])
    warn(
        f"data.batch_size {batch_size} is larger than the smallest peer's "
        f"training set ({sizes[peer]} examples, peer {peer}; {len(small)} of "
        f"{len(sizes)} peers have fewer than {batch_size}); their batches repeat "
        "examples"
    )


def load_federated(
    cfg: DataConfig, num_peers: int, seed: int, data_dir: str | None
) -> FederatedData:
    """Loads, partitions, splits, normalises and pads the data of a run.

    Args:
      cfg: the scenario's ``data`` section.
      num_peers: number of peers n.
      seed: scenario seed (non-negative); fixes every random choice here.
      data_dir: ``--data-dir`` value or None (then ``$WORKBENCH_DATA``/cache).
    """
    if num_peers < 1:
        raise ScenarioError("", f"need at least one peer, got {num_peers}")
    ds = load_dataset(cfg, seed, data_dir)
    parts = partition_indices(cfg, ds, num_peers, seed)
    rng = np.random.default_rng([seed, _VALIDATION])
    splits = [
        split_validation(p, cfg.val_fraction, cfg.max_train_per_peer, rng)
        for p in parts
    ]
    train_parts, val_parts = [s[0] for s in splits], [s[1] for s in splits]
    empty = [i for i, p in enumerate(train_parts) if len(p) == 0]
    if empty:
        raise ScenarioError(
            "data.partition",
            f"peers {empty[:5]} got no training samples; use fewer peers or "
            "another partition",
        )
    warn_small_peers(cfg.batch_size, [len(p) for p in train_parts])
    transform = _identity
    if cfg.normalize:
        mean, std = channel_stats(ds.train_x, np.concatenate(train_parts))
        transform = lambda a: (a - mean) / std
    return FederatedData(
        train=pad_peers(ds.train_x, ds.train_y, train_parts, transform),
        val=pad_peers(ds.train_x, ds.train_y, val_parts, transform),
        test_x=transform(ds.test_x).astype(np.float32),
        test_y=ds.test_y.astype(np.int32),
        num_classes=ds.num_classes,
        input_shape=tuple(ds.train_x.shape[1:]),
    )


def _identity(a: np.ndarray) -> np.ndarray:
    return a
