"""MNIST and Fashion-MNIST from IDX files (raw or gzip), parsed with numpy.

IDX layout (big-endian): two zero bytes, a type code, the number of dimensions
d, then d uint32 sizes, then the array. Images are uint8 (N, 28, 28) and labels
uint8 (N,); files live in ``<data_dir>/mnist/`` or ``<data_dir>/fashion_mnist/``
as ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-...``,
each optionally ``.gz``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from workbench.data.dataset import DATASETS, Dataset, make_dataset, require_files
from workbench.errors import DataError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an IDX file into an array (native byte order).

    Raises:
      DataError: bad magic, unknown type code or a size that does not match
        the header.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{source}: not an IDX file (bad magic {raw[:4].hex()})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{source}: IDX header says {shape} ({expected} bytes), "
            f"file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file, gunzipping when its name ends in ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: BadGzipFile is OSError
        raise DataError(f"{path}: cannot read ({e})") from None
    return parse_idx(raw, str(path))


def _split(images: np.ndarray, labels: np.ndarray, paths: list[Path]):
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(
            f"{paths[0]}: expected uint8 images (N, 28, 28), got "
            f"{images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{paths[1]}: expected {images.shape[0]} labels, got shape {labels.shape}"
        )
    return (images.astype(np.float32) / 255.0)[..., None], labels


def load_idx_dataset(name: str, data_dir: str) -> Dataset:
    """Loads an MNIST-layout dataset from ``<data_dir>/<name>/``."""
    paths = require_files(name, Path(data_dir) / name, IDX_FILES, gz=True)
    arrays = [read_idx(p) for p in paths]
    train = _split(arrays[0], arrays[1], paths[:2])
    test = _split(arrays[2], arrays[3], paths[2:])
    return make_dataset(name, train, test, 10)


@DATASETS.register("mnist")
def mnist(data_dir: str, seed: int) -> Dataset:
    """MNIST handwritten digits: 60000/10000 images (28, 28, 1), 10 classes."""
    del seed
    return load_idx_dataset("mnist", data_dir)


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: str, seed: int) -> Dataset:
    """Fashion-MNIST: 60000/10000 images (28, 28, 1), 10 classes."""
    del seed
    return load_idx_dataset("fashion_mnist", data_dir)
