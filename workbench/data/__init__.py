"""Datasets, partitioners and the padded per-peer arrays the engine trains on.

- ``DATASETS``: loaders ``fn(data_dir, seed, **options) -> Dataset``: digits,
  synthetic, cifar10, mnist, fashion_mnist, femnist, npz, csv.
- ``PARTITIONERS``: ``fn(labels, num_peers, rng, groups, **options)`` -> one
  index array per peer: iid, dirichlet, shards, unbalanced, natural.
- ``load_federated(cfg, num_peers, seed, data_dir) -> FederatedData``.
- ``fetch(name, data_dir)``: checksum-verified downloads (``SOURCES``).
"""

from workbench.data import cifar, embedded, idx, leaf, tabular  # noqa: F401 (register)
from workbench.data.config import DataConfig
from workbench.data.dataset import DATASETS, Dataset, resolve_data_dir
from workbench.data.federated import (
    FederatedData,
    PeerArrays,
    load_dataset,
    load_federated,
)
from workbench.data.fetch import SOURCES, FileSource, fetch
from workbench.data.partition import PARTITIONERS

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "SOURCES",
    "DataConfig",
    "Dataset",
    "FederatedData",
    "FileSource",
    "PeerArrays",
    "fetch",
    "load_dataset",
    "load_federated",
    "resolve_data_dir",
]
