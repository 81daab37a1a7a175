"""FEMNIST from LEAF's JSON files, keeping each writer as a natural group.

LEAF (Caldas et al. 2018) writes ``<data_dir>/femnist/train/*.json`` and
``test/*.json``, each ``{"users": [...], "num_samples": [...], "user_data":
{user: {"x": [[784 floats], ...], "y": [...]}}}``. Writers in the train files
become ``train_groups`` (index in order of first appearance, files sorted by
name), so partition ``natural`` gives each peer whole writers. The test set
pools every test writer. 62 classes (10 digits, 26 upper, 26 lower case).
Pixel values are kept as LEAF stores them (floats in [0, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from workbench.data.dataset import (
    DATASETS,
    Dataset,
    make_dataset,
    missing_files_error,
)
from workbench.errors import DataError

FEMNIST_CLASSES = 62
_PIXELS = 28 * 28


def _read_json(path: Path) -> dict:
    try:
        with path.open() as f:
            content = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable LEAF JSON ({e})") from None
    if not isinstance(content, dict) or not isinstance(content.get("user_data"), dict):
        raise DataError(f"{path}: expected a LEAF dict with 'users' and 'user_data'")
    return content


def _user_arrays(path: Path, user: str, record: dict) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.asarray(record["x"], np.float32).reshape(-1, _PIXELS)
        y = np.asarray(record["y"], np.int64).reshape(-1)
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{path}: user '{user}' needs 'x' (lists of {_PIXELS} floats) and 'y'"
        ) from None
    if len(x) != len(y):
        raise DataError(f"{path}: user '{user}' has {len(x)} inputs, {len(y)} labels")
    return x, y


def read_leaf_split(
    directory: Path, users: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads every ``*.json`` of one split.

    Args:
      directory: ``.../femnist/train`` or ``.../femnist/test``.
      users: writer name -> group index; new writers are added in place.

    Returns:
      x (m, 28, 28, 1) float32, y (m,) int64, groups (m,) int64.
    """
    xs, ys, gs = [], [], []
    for path in sorted(directory.glob("*.json")):
        content = _read_json(path)
        names = content.get("users", list(content["user_data"]))
        for user in names:
            if user not in content["user_data"]:
                raise DataError(f"{path}: user '{user}' listed but has no user_data")
            x, y = _user_arrays(path, user, content["user_data"][user])
            group = users.setdefault(user, len(users))
            xs.append(x)
            ys.append(y)
            gs.append(np.full(len(y), group))
    if not xs:
        raise DataError(f"{directory}: the LEAF files hold no samples")
    x = np.concatenate(xs).reshape(-1, 28, 28, 1)
    return x, np.concatenate(ys), np.concatenate(gs)


@DATASETS.register("femnist")
def femnist(data_dir: str, seed: int) -> Dataset:
    """FEMNIST (LEAF): 28x28 characters by writer, 62 classes, natural groups."""
    del seed
    root = Path(data_dir) / "femnist"
    for split in ("train", "test"):
        if not any((root / split).glob("*.json")):
            raise missing_files_error("femnist", root / split, ["*.json (LEAF)"])
    tx, ty, groups = read_leaf_split(root / "train", {})
    vx, vy, _ = read_leaf_split(root / "test", {})
    return make_dataset(
        "femnist", (tx, ty), (vx, vy), FEMNIST_CLASSES, train_groups=groups
    )
