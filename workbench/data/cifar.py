"""CIFAR-10 from the official python batches, read with a restricted unpickler.

The batches (``<data_dir>/cifar-10-batches-py/data_batch_1..5``, ``test_batch``)
are pickled dicts: ``b"data"`` uint8 (N, 3072) row-major CHW, ``b"labels"`` a
list of N ints. Pickle can run arbitrary code, so ``ArrayUnpickler`` resolves
only numpy's array-reconstruction globals; any other global is a DataError.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from workbench.data.dataset import DATASETS, Dataset, make_dataset, require_files
from workbench.errors import DataError

CIFAR_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, any version
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
)


class ArrayUnpickler(pickle.Unpickler):
    """An Unpickler that can build numpy arrays, dicts, lists and scalars only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays "
                "are allowed in dataset files"
            ) from None


def load_pickle(path: Path) -> Any:
    """Unpickles ``path`` with ``ArrayUnpickler`` (``encoding="bytes"``)."""
    with path.open("rb") as f:
        try:
            return ArrayUnpickler(f, encoding="bytes").load()
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        except _PICKLE_ERRORS as e:
            raise DataError(f"{path}: not a readable pickle ({e})") from None


def _field(batch: dict, key: str) -> Any:
    """``batch[b"key"]`` (python-2 batches) or ``batch["key"]``."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch file.

    Returns:
      images (N, 32, 32, 3) float32 in [0, 1] and labels (N,) int64.
    """
    batch = load_pickle(path)
    try:
        data, labels = _field(batch, "data"), np.asarray(_field(batch, "labels"))
    except (KeyError, TypeError):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels'") from None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels.shape != (data.shape[0],)
    ):
        raise DataError(
            f"{path}: expected b'data' uint8 (N, 3072) and N labels, got "
            f"{getattr(data, 'dtype', type(data).__name__)} "
            f"{getattr(data, 'shape', '')} and {labels.shape[0]} labels"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


@DATASETS.register("cifar10")
def cifar10(data_dir: str, seed: int) -> Dataset:
    """CIFAR-10: 50000 train / 10000 test RGB images (32, 32, 3), 10 classes."""
    del seed
    directory = Path(data_dir) / CIFAR_DIR
    paths = require_files("cifar10", directory, (*TRAIN_FILES, TEST_FILE))
    train = [read_batch(p) for p in paths[:-1]]
    tx = np.concatenate([x for x, _ in train])
    ty = np.concatenate([y for _, y in train])
    return make_dataset("cifar10", (tx, ty), read_batch(paths[-1]), 10)
