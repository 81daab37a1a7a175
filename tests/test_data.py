"""Tests of workbench.data: loaders on tiny real-format files, partitioners,
load_federated and checksum-verified fetching (file:// URLs, no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pydantic
import pytest

from workbench.data import (
    DATASETS,
    PARTITIONERS,
    SOURCES,
    DataConfig,
    FileSource,
    fetch,
    load_federated,
    resolve_data_dir,
)
from workbench.data.cifar import ArrayUnpickler, load_pickle
from workbench.data.idx import IDX_FILES, parse_idx
from workbench.errors import DataError, ScenarioError

# ---------------------------------------------------------------- file writers


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """Writes a uint8 array in IDX format (big-endian header)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root: Path, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 5, np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / name, array, gz)
    return arrays


def cifar_batch(rng, n: int) -> dict:
    """A dict with the layout of the official python batches."""
    return {
        b"batch_label": b"training batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar(data_dir: Path, rows: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    directory = data_dir / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = [cifar_batch(rng, rows) for _ in names]
    for name, batch in zip(names, batches, strict=True):
        with (directory / name).open("wb") as f:
            pickle.dump(batch, f, protocol=4)
    return batches


def leaf_file(path: Path, users: dict[str, tuple[list, list]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    path.write_text(json.dumps(content))


def pixels(value: float, count: int) -> list[list[float]]:
    return [[value + i / 1000.0] * 784 for i in range(count)]


# ---------------------------------------------------------------- loaders


def test_digits_shapes_range_and_split():
    ds = DATASETS["digits"](data_dir="", seed=3)
    assert ds.train_x.shape == (1438, 8, 8, 1) and ds.test_x.shape == (359, 8, 8, 1)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert ds.num_classes == 10
    import sklearn.datasets

    full = sklearn.datasets.load_digits()
    both = np.concatenate([ds.train_y, ds.test_y])
    np.testing.assert_array_equal(np.bincount(both), np.bincount(full.target))
    total = ds.train_x.sum(dtype=np.float64) + ds.test_x.sum(dtype=np.float64)
    assert total == pytest.approx(full.images.sum() / 16.0)
    again = DATASETS["digits"](data_dir="", seed=3)
    np.testing.assert_array_equal(again.test_y, ds.test_y)


def test_synthetic_users_sizes_and_heterogeneity():
    kw = dict(data_dir="", seed=1, num_users=30)
    non = DATASETS["synthetic"](alpha=1.0, beta=1.0, **kw)
    iid = DATASETS["synthetic"](alpha=0.0, beta=0.0, iid=True, **kw)
    assert non.train_x.shape[1:] == (60,) and non.num_classes == 10
    sizes = np.bincount(non.train_groups, minlength=30)
    assert sizes.min() >= 45  # int(0.9 * (lognormal + 50))

    def spread(ds):  # std over users of their mean first feature
        return np.std([ds.train_x[ds.train_groups == k, 0].mean() for k in range(30)])

    def label_tv(ds):  # mean TV distance of user label histograms to global
        glob = np.bincount(ds.train_y, minlength=10) / len(ds.train_y)
        tvs = []
        for k in range(30):
            h = np.bincount(ds.train_y[ds.train_groups == k], minlength=10)
            tvs.append(0.5 * np.abs(h / h.sum() - glob).sum())
        return np.mean(tvs)

    assert spread(non) > 0.8 and spread(iid) < 0.4
    assert label_tv(non) > label_tv(iid) + 0.2
    again = DATASETS["synthetic"](alpha=1.0, beta=1.0, **kw)
    np.testing.assert_array_equal(again.train_x, non.train_x)


def test_cifar10_roundtrip_nhwc(tmp_path):
    batches = write_cifar(tmp_path)
    ds = DATASETS["cifar10"](data_dir=str(tmp_path), seed=0)
    assert ds.train_x.shape == (10, 32, 32, 3) and ds.test_x.shape == (2, 32, 32, 3)
    assert ds.train_x.dtype == np.float32 and ds.test_y.dtype == np.int32
    labels = sum((b[b"labels"] for b in batches[:5]), [])
    np.testing.assert_array_equal(ds.train_y, labels)
    np.testing.assert_array_equal(ds.test_y, batches[5][b"labels"])
    data = batches[1][b"data"][1]  # train row 3; pixel (i, j) of channel c
    for i, j, c in [(0, 0, 0), (5, 7, 1), (31, 30, 2)]:
        assert ds.train_x[3, i, j, c] == np.float32(data[c * 1024 + i * 32 + j] / 255)


def test_unpickler_rejects_code_and_allows_old_numpy_name(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle global .*system"):
        load_pickle(path)
    assert not marker.exists()
    unpickler = ArrayUnpickler(io.BytesIO(b""))
    legacy = unpickler.find_class("numpy.core.multiarray", "_reconstruct")
    assert legacy is unpickler.find_class("numpy._core.multiarray", "_reconstruct")
    with pytest.raises(DataError):
        unpickler.find_class("builtins", "eval")


def test_cifar_rejects_wrong_layout(tmp_path):
    write_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"uint8 \(N, 3072\)"):
        DATASETS["cifar10"](data_dir=str(tmp_path), seed=0)


@pytest.mark.parametrize("name,gz", [("mnist", False), ("fashion_mnist", True)])
def test_idx_roundtrip_raw_and_gz(tmp_path, name, gz):
    arrays = write_mnist(tmp_path / name, gz)
    ds = DATASETS[name](data_dir=str(tmp_path), seed=0)
    assert ds.train_x.shape == (5, 28, 28, 1) and ds.test_x.shape == (3, 28, 28, 1)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    np.testing.assert_array_equal(
        np.rint(ds.train_x[..., 0] * 255), arrays["train-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(ds.test_y, arrays["t10k-labels-idx1-ubyte"])


def test_parse_idx_validates_header():
    good = (
        struct.pack(">BBBBII", 0, 0, 0x0C, 2, 2, 3)
        + np.arange(6, dtype=">i4").tobytes()
    )
    np.testing.assert_array_equal(parse_idx(good), np.arange(6).reshape(2, 3))
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(DataError, match=r"says \(2, 3\)"):
        parse_idx(good[:-1])


def test_femnist_groups_and_pooled_test(tmp_path):
    root = tmp_path / "femnist"
    leaf_file(root / "train" / "a.json", {"w0": (pixels(0.1, 2), [3, 61])})
    leaf_file(
        root / "train" / "b.json",
        {"w1": (pixels(0.2, 3), [0, 1, 2]), "w2": (pixels(0.3, 1), [7])},
    )
    leaf_file(
        root / "test" / "a.json",
        {"w0": (pixels(0.5, 1), [5]), "w1": (pixels(0.6, 1), [6])},
    )
    ds = DATASETS["femnist"](data_dir=str(tmp_path), seed=0)
    assert ds.train_x.shape == (6, 28, 28, 1) and ds.num_classes == 62
    np.testing.assert_array_equal(ds.train_groups, [0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(ds.train_y, [3, 61, 0, 1, 2, 7])
    np.testing.assert_array_equal(ds.test_y, [5, 6])
    assert ds.train_x[3, 27, 27, 0] == np.float32(0.201)
    rng = np.random.default_rng(0)
    args = dict(labels=ds.train_y, num_peers=2, rng=rng, groups=ds.train_groups)
    parts = PARTITIONERS["natural"](**args)
    assert [p.tolist() for p in parts] == [[0, 1, 5], [2, 3, 4]]
    with pytest.raises(ScenarioError, match="3 groups .* 4 peers"):
        PARTITIONERS["natural"](**{**args, "num_peers": 4})


def test_npz_scaling_and_classes(tmp_path):
    x = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=[0, 4], x_test=x[:1], y_test=[2])
    ds = DATASETS["npz"](data_dir=str(tmp_path), seed=0, path="d.npz")
    np.testing.assert_allclose(ds.train_x, x / 255.0, rtol=1e-6)
    assert ds.num_classes == 5 and ds.train_y.dtype == np.int32
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=[0, 1])
    with pytest.raises(DataError, match="missing arrays"):
        DATASETS["npz"](data_dir=str(tmp_path), seed=0, path="bad.npz")


OCCUPANCY = """\
"date","Temperature","Light","Occupancy"
"1","2015-02-04 17:51:00",23.18,426,1
"2","2015-02-04 17:51:59",23.15,429.5,1
"3","2015-02-04 17:53:00",23.15,0,0
"4","2015-02-04 17:54:00",23.1,0,0
"5","2015-02-04 17:55:00",22.9,10,0
"""


def test_csv_occupancy_rules(tmp_path):
    (tmp_path / "occ.csv").write_text(OCCUPANCY)
    (tmp_path / "occ_test.csv").write_text(OCCUPANCY.replace("23.18", "20.5"))
    ds = DATASETS["csv"](
        data_dir=str(tmp_path),
        seed=0,
        path="occ.csv",
        label_column="Occupancy",
        test_path="occ_test.csv",
    )
    # row names and the date column are dropped; Temperature, Light kept.
    assert ds.train_x.shape == (5, 2) and ds.num_classes == 2
    np.testing.assert_allclose(ds.train_x[1], [23.15, 429.5], rtol=1e-6)
    np.testing.assert_array_equal(ds.train_y, [1, 1, 0, 0, 0])
    assert ds.test_x[0, 0] == np.float32(20.5)
    split = DATASETS["csv"](
        data_dir=str(tmp_path),
        seed=0,
        path="occ.csv",
        label_column="Occupancy",
        test_fraction=0.4,
        drop_columns=("Light",),
    )
    assert split.train_x.shape == (3, 1) and split.test_x.shape == (2, 1)
    got = sorted(np.concatenate([split.train_x[:, 0], split.test_x[:, 0]]))
    np.testing.assert_allclose(got, [22.9, 23.1, 23.15, 23.15, 23.18], rtol=1e-6)
    with pytest.raises(DataError, match="no label column 'label'"):
        DATASETS["csv"](data_dir=str(tmp_path), seed=0, path="occ.csv")


def test_csv_string_labels_sorted(tmp_path):
    (tmp_path / "t.csv").write_text("a,kind\n1,cat\n2,dog\n3,ant\n4,cat\n5,dog\n")
    ds = DATASETS["csv"](
        data_dir=str(tmp_path), seed=0, path="t.csv", label_column="kind"
    )
    assert ds.num_classes == 3
    pairs = sorted(
        zip(
            np.concatenate([ds.train_x[:, 0], ds.test_x[:, 0]]),
            np.concatenate([ds.train_y, ds.test_y]),
            strict=True,
        )
    )
    assert [int(c) for _, c in pairs] == [1, 2, 0, 1, 2]  # ant=0, cat=1, dog=2


@pytest.mark.parametrize(
    "name,expected,fetchable",
    [
        ("cifar10", ["data_batch_1", "test_batch", "cifar-10-batches-py"], True),
        ("mnist", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"], True),
        ("femnist", ["*.json", "femnist/train"], False),
    ],
)
def test_missing_files_message(tmp_path, name, expected, fetchable):
    with pytest.raises(DataError) as info:
        DATASETS[name](data_dir=str(tmp_path), seed=0)
    message = str(info.value)
    assert "\n" not in message and f"dataset '{name}'" in message
    assert str(tmp_path) in message
    for part in expected:
        assert part in message
    assert (f"workbench data fetch {name}" in message) == fetchable


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "cli")) == str(tmp_path / "cli")
    assert resolve_data_dir(None) == str(tmp_path / "env")
    monkeypatch.delenv("WORKBENCH_DATA")
    assert Path(resolve_data_dir(None)).parts[-2:] == ("workbench", "data")


# ---------------------------------------------------------------- partitioners

LABELS = np.repeat(np.arange(10), 100)  # 1000 samples, 10 balanced classes
GROUPS = np.arange(1000) % 37


def run_partition(spec, labels=LABELS, num_peers=10, seed=0, groups=GROUPS):
    return PARTITIONERS.build(
        spec,
        "data.partition",
        labels=labels,
        num_peers=num_peers,
        rng=np.random.default_rng(seed),
        groups=groups,
    )


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partition_disjoint_cover_and_seeded(name):
    parts = run_partition({"name": name})
    assert len(parts) == 10 and min(len(p) for p in parts) >= 1
    flat = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(flat), np.arange(1000))
    again = run_partition({"name": name})
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_contiguous_splits_like_the_dyn_fed_seed():
    # sorted by label, equal cuts: peer i holds exactly class i
    parts = run_partition({"name": "contiguous"})
    for i, p in enumerate(parts):
        np.testing.assert_array_equal(LABELS[p], i)
    # 0.1 N pair swaps move at most 2 x 100 samples out of place
    mixed = run_partition({"name": "contiguous", "swaps": 0.1})
    moved = sum(int(np.sum(LABELS[p] != i)) for i, p in enumerate(mixed))
    assert 0 < moved <= 200
    # random cut points: unbalanced sizes, each at least min_size, all used
    sizes = [len(p) for p in run_partition(
        {"name": "contiguous", "order": "random", "cuts": "random", "min_size": 20}
    )]  # fmt: skip
    assert sum(sizes) == 1000 and min(sizes) >= 20 and max(sizes) > 2 * min(sizes)


def test_random_sizes_are_uniform_compositions():
    from workbench.data.partition import random_sizes

    rng = np.random.default_rng(0)
    draws = np.array([random_sizes(6, 3, 1, rng) for _ in range(3000)])
    assert (draws.sum(1) == 6).all() and draws.min() >= 1
    # the 10 compositions of 6 into 3 positive parts, each ~1/10 of the draws
    counts = np.unique(draws, axis=0, return_counts=True)[1]
    assert len(counts) == 10 and counts.min() > 220 and counts.max() < 380


def label_skew(parts, labels=LABELS, classes=10) -> float:
    """Mean total-variation distance of peers' label histograms to uniform."""
    tvs = [
        0.5 * np.abs(np.bincount(labels[p], minlength=classes) / len(p) - 0.1).sum()
        for p in parts
    ]
    return float(np.mean(tvs))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.repeat(np.arange(10), 1000)

    def skew(spec):
        return label_skew(run_partition(spec, labels, groups=None), labels)

    small = skew({"name": "dirichlet", "alpha": 0.05})
    large = skew({"name": "dirichlet", "alpha": 100.0})
    assert small > 0.5 and large < 0.1 and skew({"name": "iid"}) < 0.1
    parts = run_partition({"name": "dirichlet", "alpha": 0.5, "min_size": 40})
    assert min(len(p) for p in parts) >= 40


@pytest.mark.parametrize(
    "spec,key",
    [
        ({"name": "dirichlet", "alpha": 0.0}, "data.partition.alpha"),
        ({"name": "dirichlet", "min_size": 101}, "data.partition.min_size"),
        ({"name": "shards", "shards_per_peer": 101}, "data.partition.shards_per_peer"),
        ({"name": "unbalanced", "sigma": -1.0}, "data.partition.sigma"),
        ({"name": "dirichlet", "alpah": 1.0}, "data.partition.alpah"),
    ],
)
def test_partition_rejects_impossible_parameters(spec, key):
    with pytest.raises(ScenarioError) as info:
        run_partition(spec)
    assert info.value.path == key


def test_shards_give_exactly_k_classes():
    labels = np.repeat(np.arange(10), 20)
    parts = run_partition({"name": "shards", "shards_per_peer": 2}, labels, 5)
    assert [len(np.unique(labels[p])) for p in parts] == [2] * 5
    assert [len(p) for p in parts] == [40] * 5


def test_unbalanced_sizes():
    labels = np.zeros(5000, np.int64)

    def cv(sigma):
        sizes = [
            len(p)
            for p in run_partition(
                {"name": "unbalanced", "sigma": sigma}, labels, 50, groups=None
            )
        ]
        return np.std(sizes) / np.mean(sizes)

    assert cv(0.0) < 0.01 and cv(0.5) < 1.0 and cv(2.0) > 1.5


def test_iid_sizes_and_natural_needs_groups():
    sizes = [len(p) for p in run_partition({"name": "iid"}, num_peers=7)]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ScenarioError, match="natural groups"):
        run_partition({"name": "natural"}, groups=None)


# ---------------------------------------------------------------- load_federated


@pytest.fixture
def indexed_npz(tmp_path):
    """40 train rows (2, 2, 3) whose label is the row index; 5 test rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 2, 3)).astype(np.float32) * [1.0, 5.0, 0.1] + [0, 3, -2]
    test = rng.normal(size=(5, 2, 2, 3)).astype(np.float32)
    np.savez(
        tmp_path / "idx.npz",
        x_train=x.astype(np.float32),
        y_train=np.arange(40),
        x_test=test,
        y_test=np.arange(5),
    )
    return tmp_path, x.astype(np.float32), test


def npz_config(**kw) -> DataConfig:
    return DataConfig(name="npz", options={"path": "idx.npz"}, **kw)


def valid(arrays, i):
    return arrays.x[i, : arrays.size[i]], arrays.y[i, : arrays.size[i]]


def test_load_federated_split_normalise_and_pad(indexed_npz):
    data_dir, x, test = indexed_npz
    fd = load_federated(npz_config(val_fraction=0.25), 4, 0, str(data_dir))
    assert fd.train.x.shape == (4, 8, 2, 2, 3) and fd.input_shape == (2, 2, 3)
    np.testing.assert_array_equal(fd.train.size, [8] * 4)
    np.testing.assert_array_equal(fd.val.size, [2] * 4)
    assert fd.num_classes == 40 and fd.test_x.shape == (5, 2, 2, 3)
    train_ids = np.concatenate([valid(fd.train, i)[1] for i in range(4)])
    val_ids = np.concatenate([valid(fd.val, i)[1] for i in range(4)])
    np.testing.assert_array_equal(np.sort(np.r_[train_ids, val_ids]), np.arange(40))
    raw = x[train_ids].reshape(-1, 3)
    mean, std = raw.mean(0), raw.std(0)
    for arrays in (fd.train, fd.val):
        for i in range(4):
            got, ids = valid(arrays, i)
            np.testing.assert_allclose(got, (x[ids] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(fd.test_x, (test - mean) / std, atol=1e-5)
    normed = np.concatenate([valid(fd.train, i)[0] for i in range(4)])
    np.testing.assert_allclose(normed.reshape(-1, 3).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(normed.reshape(-1, 3).std(0), 1.0, atol=1e-5)


def test_load_federated_padding_caps_and_raw(indexed_npz):
    data_dir, x, _ = indexed_npz
    cfg = npz_config(
        partition={"name": "unbalanced", "sigma": 1.5},
        val_fraction=0.0,
        normalize=False,
    )
    fd = load_federated(cfg, 5, 1, str(data_dir))
    assert fd.train.size.sum() == 40 and fd.train.x.shape[1] == fd.train.size.max()
    assert fd.val.x.shape[:2] == (5, 1) and fd.val.size.tolist() == [0] * 5
    for i in range(5):
        got, ids = valid(fd.train, i)
        np.testing.assert_array_equal(got, x[ids])
        assert not fd.train.x[i, fd.train.size[i] :].any()
        assert not fd.train.y[i, fd.train.size[i] :].any()
    capped = load_federated(
        npz_config(val_fraction=0.25, max_train_per_peer=3), 4, 0, str(data_dir)
    )
    assert capped.train.size.tolist() == [3] * 4 and capped.val.size.tolist() == [1] * 4


def test_load_federated_is_seeded(indexed_npz):
    data_dir = str(indexed_npz[0])
    cfg = npz_config(partition={"name": "dirichlet", "alpha": 0.3})
    a, b = load_federated(cfg, 4, 7, data_dir), load_federated(cfg, 4, 7, data_dir)
    c = load_federated(cfg, 4, 8, data_dir)
    for u, v in zip(a.train + a.val, b.train + b.val, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.train.y, c.train.y)
    with pytest.raises(ScenarioError, match="cannot give 41 peers"):
        load_federated(npz_config(), 41, 0, data_dir)


def test_load_federated_digits_default():
    fd = load_federated(DataConfig(), 4, 0, None)
    assert fd.train.x.shape[0] == 4 and fd.input_shape == (8, 8, 1)
    assert fd.train.size.sum() + fd.val.size.sum() == 1438
    assert fd.num_classes == 10 and fd.test_y.shape == (359,)


def test_data_config_validation():
    cfg = DataConfig()
    assert (cfg.name, cfg.partition, cfg.batch_size) == ("digits", {"name": "iid"}, 32)
    with pytest.raises(pydantic.ValidationError):
        cfg.batch_size = 4
    with pytest.raises(pydantic.ValidationError):
        DataConfig(val_fraction=1.0)
    with pytest.raises(pydantic.ValidationError):
        DataConfig(batchsize=4)
    with pytest.raises(ScenarioError) as info:
        DataConfig(partition={"name": "dirichlet", "alfa": 0.1})
    assert info.value.path == "data.partition.alfa" and "alpha" in str(info.value)
    with pytest.raises(ScenarioError) as info:
        DataConfig(name="cifar", options={})
    assert info.value.path == "data.name"
    with pytest.raises(ScenarioError) as info:
        DataConfig(name="npz")
    assert info.value.path == "data.options.path"


# ---------------------------------------------------------------- fetch


def sources_for(src: Path, filename: str, **digest) -> list[FileSource]:
    return [FileSource(src.as_uri(), filename, **digest)]


def test_fetch_verifies_checksums(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"some idx bytes" * 100)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    good = sources_for(src, "mnist/x.gz", md5=md5, sha256=sha)
    (path,) = fetch("mnist", str(data_dir), urls=good)
    assert path == data_dir / "mnist" / "x.gz"
    assert path.read_bytes() == src.read_bytes()
    src.unlink()  # present and verified: no second download
    assert fetch("mnist", str(data_dir), urls=good) == [path]
    src.write_bytes(b"tampered")
    bad = sources_for(src, "mnist/y.gz", md5=md5)
    with pytest.raises(DataError, match="checksum mismatch .* removed"):
        fetch("mnist", str(data_dir), urls=bad)
    assert not (data_dir / "mnist" / "y.gz").exists()
    with pytest.raises(DataError, match="no download known"):
        fetch("femnist", str(data_dir))


def test_fetch_extracts_cifar_tarball_for_the_loader(tmp_path):
    staging = tmp_path / "staging"
    batches = write_cifar(staging)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    fetch("cifar10", str(data_dir), urls=sources_for(archive, archive.name, sha256=sha))
    ds = DATASETS["cifar10"](data_dir=str(data_dir), seed=0)
    np.testing.assert_array_equal(ds.test_y, batches[5][b"labels"])


def test_fetch_refuses_unsafe_tar_members(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="could not extract"):
        fetch("cifar10", str(tmp_path / "data"), urls=sources_for(archive, "e.tar.gz"))
    assert not (tmp_path / "escaped.txt").exists()


def test_sources_match_loader_layout():
    for name in ("mnist", "fashion_mnist"):
        names = [s.filename for s in SOURCES[name]]
        assert names == [f"{name}/{f}.gz" for f in IDX_FILES]
    for sources in SOURCES.values():
        for s in sources:
            assert s.url.startswith(("https://", "http://"))
            assert len(s.md5 or "") == 32 and int(s.md5, 16) >= 0


def test_class_subsets_give_three_peers_eight_classes_each():
    labels = np.repeat(np.arange(10), 30)
    parts = run_partition({"name": "class_subsets", "classes": 8}, labels, 3)
    held = [sorted(np.unique(labels[p]).tolist()) for p in parts]
    assert held == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 3, 4, 5, 6, 7, 8, 9],
        [0, 1, 2, 3, 6, 7, 8, 9],
    ]
    # class 0 is held by all three (10 each), class 1 by two (15 each)
    counts = [np.bincount(labels[p], minlength=10) for p in parts]
    assert [c[0] for c in counts] == [10, 10, 10]
    assert [c[1] for c in counts] == [15, 0, 15]
    assert sum(len(p) for p in parts) == 300
    with pytest.raises(ScenarioError, match="must be in 1..10"):
        run_partition({"name": "class_subsets", "classes": 11}, labels, 3)
