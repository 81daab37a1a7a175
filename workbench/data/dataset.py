"""The ``Dataset`` record, the ``DATASETS`` registry and data-directory helpers.

A loader is ``fn(data_dir: str, seed: int, **options) -> Dataset``, registered
with ``@DATASETS.register("name")``; scenario options (``data.options``) are its
keyword arguments. Images are NHWC float32 in [0, 1]; tabular inputs are
``(features,)`` float32. Normalisation happens later, in ``load_federated``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import platformdirs

from workbench.errors import DataError, ScenarioError
from workbench.registry import Registry

DATASETS = Registry("dataset", context=("data_dir", "seed"))

ENV_VAR = "WORKBENCH_DATA"


class Dataset(NamedTuple):
    """A centralised dataset before partitioning.

    Attributes:
      train_x: (m, *input_shape) float32 training inputs.
      train_y: (m,) int32 training labels in [0, num_classes).
      test_x: (m_test, *input_shape) float32 test inputs.
      test_y: (m_test,) int32 test labels.
      num_classes: number of classes.
      name: dataset name (the registry key).
      train_groups: (m,) int32 natural owner (user/writer) of each training
        sample, or None; read by the ``natural`` partitioner.
    """

    train_x: np.ndarray  # (m, *input_shape) float32
    train_y: np.ndarray  # (m,) int32
    test_x: np.ndarray  # (m_test, *input_shape) float32
    test_y: np.ndarray  # (m_test,) int32
    num_classes: int
    name: str
    train_groups: np.ndarray | None = None  # (m,) int32 or None


def resolve_data_dir(cli_value: str | None) -> str:
    """Returns the data directory: CLI flag, else ``$WORKBENCH_DATA``, else cache.

    Args:
      cli_value: value of ``--data-dir`` (None when not given).
    """
    if cli_value:
        return str(Path(cli_value).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        return str(Path(env).expanduser())
    return str(Path(platformdirs.user_cache_dir("workbench")) / "data")


def missing_files_error(name: str, directory: Path, files: Sequence[str]) -> DataError:
    """One-line DataError naming the dataset, the files and the directory."""
    from workbench.data.fetch import SOURCES  # fetch imports nothing from here

    hint = (
        f"; run `workbench data fetch {name}` or place them there"
        if name in SOURCES
        else "; place them there"
    )
    return DataError(
        f"dataset '{name}': missing {', '.join(files)} in {directory}"
        f" (data dir from --data-dir, ${ENV_VAR} or the cache){hint}"
    )


def find_file(directory: Path, filename: str, gz: bool = False) -> Path | None:
    """Returns ``directory/filename`` (or its ``.gz`` twin if ``gz``), or None."""
    for candidate in (filename, filename + ".gz") if gz else (filename,):
        path = directory / candidate
        if path.is_file():
            return path
    return None


def require_files(
    name: str, directory: Path, filenames: Sequence[str], gz: bool = False
) -> list[Path]:
    """Finds every file or raises one DataError listing all missing ones."""
    found = [find_file(directory, f, gz) for f in filenames]
    missing = [f for f, p in zip(filenames, found, strict=True) if p is None]
    if missing:
        raise missing_files_error(name, directory, missing)
    return found  # type: ignore[return-value]


def resolve_path(data_dir: str, path: str) -> Path:
    """``path`` as given if absolute, else relative to ``data_dir``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(data_dir) / p


def check_fraction(value: float, key: str) -> None:
    """Raises ScenarioError at ``data.options.<key>`` unless 0 < value < 1."""
    if not 0.0 < value < 1.0:
        raise ScenarioError(f"data.options.{key}", f"must be in (0, 1), got {value}")


def split_test(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded shuffle, then the last ``test_fraction`` of the rows is the test set.

    Returns:
      (train_x, train_y, test_x, test_y).
    """
    check_fraction(test_fraction, "test_fraction")
    m = len(y)
    order = np.random.default_rng(seed).permutation(m)
    num_test = max(1, int(round(test_fraction * m)))
    if num_test >= m:
        raise ScenarioError(
            "data.options.test_fraction", f"leaves no training rows out of {m}"
        )
    train, test = order[: m - num_test], order[m - num_test :]
    return x[train], y[train], x[test], y[test]


def make_dataset(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    train_groups: np.ndarray | None = None,
) -> Dataset:
    """Casts to float32/int32, checks shapes and label range, builds a Dataset."""
    (tx, ty), (vx, vy) = train, test
    tx, vx = np.asarray(tx, np.float32), np.asarray(vx, np.float32)
    ty, vy = np.asarray(ty).astype(np.int32), np.asarray(vy).astype(np.int32)
    if tx.shape[1:] != vx.shape[1:]:
        raise DataError(
            f"dataset '{name}': train inputs {tx.shape[1:]} and test inputs "
            f"{vx.shape[1:]} differ in shape"
        )
    for split, x, y in (("train", tx, ty), ("test", vx, vy)):
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"dataset '{name}': {split} has {len(x)} inputs but labels of "
                f"shape {y.shape}; expected ({len(x)},)"
            )
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"dataset '{name}': {split} labels span [{y.min()}, {y.max()}]; "
                f"expected [0, {num_classes - 1}]"
            )
    if train_groups is not None:
        train_groups = np.asarray(train_groups).astype(np.int32)
    return Dataset(tx, ty, vx, vy, int(num_classes), name, train_groups)
