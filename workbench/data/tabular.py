"""Generic datasets from an ``.npz`` file or a CSV table.

``npz``: arrays ``x_train, y_train, x_test, y_test`` (loaded with
``allow_pickle=False``); uint8 inputs are scaled by 1/255, others cast to
float32.

``csv``: the first row is the header. Column rule: the label column is
``label_column``; every other column is a feature when all its values parse as
finite numbers, and is dropped otherwise (dates, ids, free text), as are the columns
in ``drop_columns``. If every data row has one field more than the header, the
first field is an unnamed row index (R's ``write.csv``, e.g. UCI Occupancy) and
is dropped. Labels that are all integers keep their order; otherwise classes
are the sorted distinct strings. Inputs are ``(features,)``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from workbench.data.dataset import (
    DATASETS,
    Dataset,
    make_dataset,
    missing_files_error,
    resolve_path,
    split_test,
)
from workbench.errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _existing(name: str, data_dir: str, path: str) -> Path:
    full = resolve_path(data_dir, path)
    if not full.is_file():
        raise missing_files_error(name, full.parent, [full.name])
    return full


@DATASETS.register("npz")
def npz(data_dir: str, seed: int, path: str, num_classes: int | None = None) -> Dataset:
    """Arrays from an ``.npz``; ``num_classes`` defaults to max label + 1."""
    del seed
    full = _existing("npz", data_dir, path)
    try:
        with np.load(full, allow_pickle=False) as f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{full}: missing arrays {missing}; has {f.files}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except (OSError, ValueError) as e:
        raise DataError(
            f"{full}: not a readable .npz of numeric arrays ({e})"
        ) from None
    xs = [_to_unit(arrays[k]) for k in ("x_train", "x_test")]
    if num_classes is None:
        num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    return make_dataset(
        "npz", (xs[0], arrays["y_train"]), (xs[1], arrays["y_test"]), num_classes
    )


def _to_unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x


def read_table(path: Path, delimiter: str) -> dict[str, list[str]]:
    """Reads a CSV into ``{column: values}`` (header row, R row names dropped)."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=delimiter) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if all(len(r) == len(header) + 1 for r in body):
        body = [r[1:] for r in body]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: {len(row)} fields, header has {len(header)}"
            )
    return {name: [r[j] for r in body] for j, name in enumerate(header)}


def _numeric(values: list[str]) -> np.ndarray | None:
    """The column as float32 if every value is a finite number, else None."""
    try:
        column = np.asarray([float(v) for v in values], np.float32)
    except ValueError:
        return None
    return column if np.isfinite(column).all() else None


def encode_labels(*splits: list[str]) -> tuple[list[np.ndarray], int]:
    """Maps label strings to class ids shared by all splits.

    Returns:
      one int array per split and the number of classes.
    """
    values = [v.strip() for split in splits for v in split]
    try:
        keys = np.asarray([int(v) for v in values])
    except ValueError:
        keys = np.asarray(values)
    classes, ids = np.unique(keys, return_inverse=True)
    cuts = np.cumsum([len(s) for s in splits])[:-1]
    return np.split(ids, cuts), len(classes)


def _features(
    table: dict[str, list[str]],
    path: Path,
    label_column: str,
    drop: set[str],
    keep: list[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Feature matrix (rows, features) and the kept column names.

    With ``keep`` (the train file's columns), those columns must all be numeric.
    """
    if label_column not in table:
        raise DataError(
            f"{path}: no label column '{label_column}'; columns are {list(table)}"
        )
    names = (
        keep
        if keep is not None
        else [c for c in table if c != label_column and c not in drop]
    )
    cols = {c: _numeric(table[c]) if c in table else None for c in names}
    if keep is not None and any(v is None for v in cols.values()):
        bad = [c for c, v in cols.items() if v is None]
        raise DataError(f"{path}: feature columns {bad} missing or not numeric")
    kept = [c for c in names if cols[c] is not None]
    if not kept:
        raise DataError(f"{path}: no numeric feature columns besides '{label_column}'")
    return np.stack([cols[c] for c in kept], axis=1), kept


@DATASETS.register("csv")
def csv_table(
    data_dir: str,
    seed: int,
    path: str,
    label_column: str = "label",
    test_fraction: float = 0.2,
    test_path: str | None = None,
    drop_columns: tuple[str, ...] = (),
    delimiter: str = ",",
) -> Dataset:
    """A CSV table; the test set is ``test_path`` or a seeded ``test_fraction``."""
    full = _existing("csv", data_dir, path)
    table = read_table(full, delimiter)
    x, kept = _features(table, full, label_column, set(drop_columns))
    if test_path is None:
        (y,), num_classes = encode_labels(table[label_column])
        tx, ty, vx, vy = split_test(x, y, test_fraction, seed)
        return make_dataset("csv", (tx, ty), (vx, vy), num_classes)
    test_full = _existing("csv", data_dir, test_path)
    test_table = read_table(test_full, delimiter)
    vx, _ = _features(test_table, test_full, label_column, set(), keep=kept)
    (ty, vy), num_classes = encode_labels(table[label_column], test_table[label_column])
    return make_dataset("csv", (x, ty), (vx, vy), num_classes)
