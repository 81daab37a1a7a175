"""Generic datasets from an ``.npz`` file or a CSV table.

``npz``: arrays ``x_train, y_train, x_test, y_test`` (loaded with
``allow_pickle=False``); uint8 inputs are scaled by 1/255, other numeric inputs
cast to float32. Inputs must be finite (no NaN/inf, nothing beyond float32's
range) and have a row axis; labels must be integer class ids >= 0 (integral
floats such as ``3.0`` are accepted). A truncated or corrupt file, or one
that breaks these rules, is a one-line DataError.

``csv``: the first row is the header. If every data row has one field more
than the header, the first field is an unnamed row index (R's ``write.csv``,
e.g. UCI Occupancy) and is dropped. Columns named in ``drop_columns`` are
dropped (each must exist).

Column rule: the label column is ``label_column``; every other column is
classified by its cells, each one of

- a number: parses as a finite float32 (``23.1``, ``-4``, ``1e3``);
- missing: empty, a marker from ``MISSING`` (``NA``, ``n/a``, ``nan``, ``null``,
  ``?``, ...; any case) or a non-finite number (``inf``, ``-Infinity``);
- text: anything else (``2015-02-04 17:51:00``, ``id-17``, ``red``).

A column with more numbers than text cells is a *feature*; otherwise it is not
numeric (dates, ids, free text) and is left out, with a one-line warning that
names it. So a numeric column with a few gaps stays a numeric column with
missing values; it is never dropped for them.

Every cell of a feature that is not a number (missing, or a stray text cell),
and every label that is empty or a missing marker, is handled by ``missing``:
``"error"`` (default) raises a DataError naming the file, the line and the
column (``data.csv:17: column 'Temperature' has 'nan'; ...``); ``"drop_rows"``
drops those rows and warns once with how many were dropped. A ``test_path``
file must have the train file's feature columns, and follows the same rule.

Labels that are all integers keep their order; otherwise classes are the sorted
distinct strings (surrounding spaces ignored). Inputs are ``(features,)``.
"""

from __future__ import annotations

import csv
import lzma
import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from workbench.data.dataset import (
    DATASETS,
    Dataset,
    make_dataset,
    missing_files_error,
    resolve_path,
    split_test,
)
from workbench.errors import DataError, warn

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Cells read as missing values (compared after strip() and lower()).
MISSING = frozenset({"", "na", "n/a", "#n/a", "<na>", "nan", "-nan", "null", "?"})

_MISSING_HINT = "set data.options.missing: drop_rows to drop such rows"

# What reading an .npz can raise on a truncated or corrupt file: zipfile
# (BadZipFile for bad structure or CRC, NotImplementedError for an unknown
# compression, RuntimeError for an "encrypted" flag, EOFError, KeyError for a
# damaged member name), the decompressors (zlib.error, lzma.LZMAError, OSError
# for bz2), and numpy's .npy header parser (ValueError, SyntaxError,
# tokenize.TokenError, struct.error, MemoryError for an absurd shape). Members
# are read lazily, so accessing the arrays happens inside the same guard.
_NPZ_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    LookupError,
    RuntimeError,
    MemoryError,
    ArithmeticError,
    TypeError,
    SyntaxError,
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    tokenize.TokenError,
)


def _existing(name: str, data_dir: str, path: str) -> Path:
    full = resolve_path(data_dir, path)
    if not full.is_file():
        raise missing_files_error(name, full.parent, [full.name])
    return full


# ---------------------------------------------------------------- npz


@DATASETS.register("npz")
def npz(data_dir: str, seed: int, path: str, num_classes: int | None = None) -> Dataset:
    """Arrays from an ``.npz``; ``num_classes`` defaults to max label + 1."""
    del seed
    full = _existing("npz", data_dir, path)
    arrays = read_npz(full)
    xs = [_npz_inputs(full, k, arrays[k]) for k in ("x_train", "x_test")]
    ys = [
        _npz_labels(full, k, arrays[k], len(x))
        for k, x in zip(("y_train", "y_test"), xs, strict=True)
    ]
    if num_classes is None:
        num_classes = int(max(ys[0].max(), ys[1].max())) + 1
    return make_dataset("npz", (xs[0], ys[0]), (xs[1], ys[1]), num_classes)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four ``NPZ_KEYS`` arrays of an ``.npz``, or one DataError line."""
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(
                f"{path}: a single .npy array, not an .npz archive; expected "
                f"numpy.savez(path, {'=..., '.join(NPZ_KEYS)}=...)"
            )
        with f:
            missing = [k for k in NPZ_KEYS if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; has {f.files}")
            arrays = {k: f[k] for k in NPZ_KEYS}
    except _NPZ_READ_ERRORS as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise DataError(
            f"{path}: not a readable .npz of numeric arrays ({reason}); the file "
            "may be truncated or corrupt"
        ) from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member that is not .npy data
            raise DataError(f"{path}: '{key}' is not a numpy array (.npy) member")
    return arrays


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _npz_inputs(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    """float32 inputs (uint8 scaled by 1/255); rows on axis 0, all finite."""
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{path}: {key} has dtype {x.dtype}; expected numbers (bool, int, float)"
        )
    if x.ndim == 0 or len(x) == 0:
        raise DataError(
            f"{path}: {key} has shape {x.shape}; expected (rows >= 1, *input_shape)"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(
            f"{path}: {key} has {int(bad.sum())} non-finite values (NaN, inf or "
            f"beyond float32), first at index {_first_index(bad)}; expected finite "
            "numbers"
        )
    return x


def _npz_labels(path: Path, key: str, y: np.ndarray, rows: int) -> np.ndarray:
    """int64 class ids >= 0, one per input row (integral floats accepted)."""
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: {key} has dtype {y.dtype}; expected integer labels")
    if y.shape != (rows,):
        raise DataError(
            f"{path}: {key} has shape {y.shape}; expected ({rows},), one label per "
            "input row"
        )
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(y) & (y == np.round(y)))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{path}: {key}[{i}] is {y[i].item()!r}; expected integer class "
                f"ids ({int(bad.sum())} of {len(y)} labels are not integers)"
            )
    if y.min() < 0 or y.max() > np.iinfo(np.int32).max - 1:
        i = int(np.argmin(y) if y.min() < 0 else np.argmax(y))
        raise DataError(
            f"{path}: {key}[{i}] is {y[i].item()!r}; expected class ids in "
            "[0, 2**31 - 1)"
        )
    return y.astype(np.int64)


# ---------------------------------------------------------------- csv


class Table(NamedTuple):
    """A CSV file's columns.

    Attributes:
      path: the file, for messages.
      columns: ``{name: cell strings}``, in file order.
      lines: (rows,) file line number where each data row starts.
    """

    path: Path
    columns: dict[str, list[str]]
    lines: list[int]


def read_table(path: Path, delimiter: str) -> Table:
    """Reads a CSV (header row, R row names dropped), keeping line numbers."""
    rows, lines = [], []
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            start = 1
            for row in reader:
                if row:  # blank lines are skipped
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows")
    header, body, lines = [h.strip() for h in rows[0]], rows[1:], lines[1:]
    if all(len(r) == len(header) + 1 for r in body):
        body = [r[1:] for r in body]
    for line, row in zip(lines, body, strict=True):
        if len(row) != len(header):
            raise DataError(
                f"{path}:{line}: {len(row)} fields, header has {len(header)}"
            )
    columns = {name: [r[j] for r in body] for j, name in enumerate(header)}
    return Table(path, columns, lines)


def is_missing(cell: str) -> bool:
    """Empty, a ``MISSING`` marker, or a non-finite number."""
    text = cell.strip().lower()
    if text in MISSING:
        return True
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


class _Column(NamedTuple):
    values: np.ndarray  # (rows,) float32, NaN where the cell is not a number
    ok: np.ndarray  # (rows,) bool: the cell is a finite float32
    text: int  # cells that are neither numbers nor missing

    @property
    def numeric(self) -> bool:
        return int(self.ok.sum()) > self.text


def _parse_column(cells: list[str]) -> _Column:
    values, text = [], 0
    for cell in cells:
        try:
            values.append(float(cell))
        except ValueError:
            values.append(np.nan)
            text += cell.strip().lower() not in MISSING
    with np.errstate(over="ignore"):
        column = np.asarray(values, np.float64).astype(np.float32)
    ok = np.isfinite(column)
    return _Column(column, ok, text)


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


def _feature_columns(
    table: Table, label_column: str, drop: Sequence[str], keep: list[str] | None
) -> dict[str, _Column]:
    """The parsed feature columns, in file order.

    With ``keep`` (the train file's features), exactly those, all numeric.
    Otherwise every numeric column besides the label and ``drop``; the others
    are named in a warning.
    """
    path, columns = table.path, table.columns
    if label_column not in columns:
        raise DataError(
            f"{path}: no label column '{label_column}'; columns are {list(columns)}"
        )
    if keep is not None:
        parsed = {c: _parse_column(columns[c]) for c in keep if c in columns}
        bad = [c for c in keep if c not in parsed or not parsed[c].numeric]
        if bad:
            raise DataError(f"{path}: feature columns {bad} missing or not numeric")
        return parsed
    unknown = [c for c in drop if c not in columns]
    if unknown:
        raise DataError(
            f"{path}: drop_columns {unknown} not in the columns {list(columns)}"
        )
    names = [c for c in columns if c != label_column and c not in drop]
    parsed = {c: _parse_column(columns[c]) for c in names}
    text = [c for c in names if not parsed[c].numeric]
    if len(text) == len(names):
        raise DataError(f"{path}: no numeric feature columns besides '{label_column}'")
    if text:
        warn(
            f"{path}: ignoring non-numeric columns {text} (mostly text, not "
            "numbers); list them in data.options.drop_columns to silence this"
        )
    return {c: parsed[c] for c in names if parsed[c].numeric}


def _load_table(
    table: Table,
    label_column: str,
    missing: str,
    drop: Sequence[str] = (),
    keep: list[str] | None = None,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Features (rows, features) float32, label strings and feature names.

    Rows with a non-number feature or a missing label raise (``missing:
    error``) or are dropped with a warning (``missing: drop_rows``).
    """
    features = _feature_columns(table, label_column, drop, keep)
    labels = table.columns[label_column]
    label_ok = np.asarray([not is_missing(v) for v in labels], bool)
    checks = [
        (name, label_ok if name == label_column else features[name].ok)
        for name in table.columns
        if name == label_column or name in features
    ]
    bad = ~np.logical_and.reduce([ok for _, ok in checks])
    if bad.any():
        row = int(np.argmax(bad))
        column = next(name for name, ok in checks if not ok[row])
        cell = table.columns[column][row]
        where = f"{table.path}:{table.lines[row]}"
        what = (
            f"label column '{column}' has {cell!r}; expected a class label"
            if column == label_column
            else f"column '{column}' has {cell!r}; expected a finite number"
        )
        count = int(bad.sum())
        if missing == "error":
            rows = f"{count} rows" if count > 1 else "1 row"
            raise DataError(f"{where}: {what} ({rows} like this; {_MISSING_HINT})")
        if count == len(bad):
            raise DataError(
                f"{table.path}: missing: drop_rows would drop every row "
                f"(first at {where}: {what})"
            )
        warn(
            f"{table.path}: dropped {count} of {len(bad)} rows with a missing or "
            f"non-finite value (missing: drop_rows; first at line "
            f"{table.lines[row]}: {what})"
        )
    keep_rows = ~bad
    x = np.stack([col.values[keep_rows] for col in features.values()], axis=1)
    kept_labels = [v for v, k in zip(labels, keep_rows, strict=True) if k]
    return x, kept_labels, list(features)


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
    missing: Literal["error", "drop_rows"] = "error",
) -> Dataset:
    """A CSV table; the test set is ``test_path`` or a seeded ``test_fraction``.

    ``missing`` says what a missing or non-finite feature, or an empty label,
    does: ``error`` (one line naming file, line and column) or ``drop_rows``
    (those rows are dropped, with a warning giving the count).
    """
    full = _existing("csv", data_dir, path)
    x, labels, kept = _load_table(
        read_table(full, delimiter), label_column, missing, drop=drop_columns
    )
    if test_path is None:
        (y,), num_classes = encode_labels(labels)
        tx, ty, vx, vy = split_test(x, y, test_fraction, seed)
        return make_dataset("csv", (tx, ty), (vx, vy), num_classes)
    test_full = _existing("csv", data_dir, test_path)
    vx, test_labels, _ = _load_table(
        read_table(test_full, delimiter), label_column, missing, keep=kept
    )
    (ty, vy), num_classes = encode_labels(labels, test_labels)
    return make_dataset("csv", (x, ty), (vx, vy), num_classes)
