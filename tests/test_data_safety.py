"""Data is never silently altered: missing CSV values, corrupt .npz files, strict
``data`` types, batches larger than a peer's data and download failures each
give one clear error or warning line."""

from __future__ import annotations

import gzip
import importlib
import io
import socket
import struct
import urllib.error
from http.client import IncompleteRead
from pathlib import Path

import numpy as np
import pytest

from tests.test_data import write_mnist
from workbench.data import DATASETS, DataConfig, FileSource, fetch, load_federated
from workbench.errors import DataError, ScenarioError
from workbench.scenario import load_scenario, parse_scenario

fetch_module = importlib.import_module("workbench.data.fetch")
HINT = "set data.options.missing: drop_rows to drop such rows"


def load_csv(tmp_path: Path, text: str, **options):
    (tmp_path / "d.csv").write_text(text)
    options = {"path": "d.csv", "label_column": "y", **options}
    return DATASETS["csv"](data_dir=str(tmp_path), seed=0, **options)


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- csv

# Line 1 header, line 3 blank (skipped), data rows on lines 2, 4, 5, 6, 7.
TABLE = """\
Temperature,Light,y
21.5,400,1

22.0,{cell},0
23.0,10,1
24.0,20,0
25.0,30,{label}
"""


@pytest.mark.parametrize("cell", ["nan", "", "inf", "NA", "?", "-Infinity", " "])
def test_csv_missing_feature_names_file_line_and_column(tmp_path, cell):
    text = TABLE.format(cell=cell, label="0").replace("25.0,", "nan,")
    with pytest.raises(DataError) as info:
        load_csv(tmp_path, text)
    path = tmp_path / "d.csv"
    assert one_line(info) == (
        f"{path}:4: column 'Light' has {cell!r}; expected a finite number "
        f"(2 rows like this; {HINT})"
    )


@pytest.mark.parametrize("label", ["", "nan", "NaN", "NA"])
def test_csv_missing_label_is_an_error_not_a_class(tmp_path, label):
    text = TABLE.format(cell="30", label=label)
    with pytest.raises(DataError) as info:
        load_csv(tmp_path, text)
    assert one_line(info) == (
        f"{tmp_path / 'd.csv'}:7: label column 'y' has {label!r}; expected a "
        f"class label (1 row like this; {HINT})"
    )


def test_csv_drop_rows_drops_and_counts(tmp_path, capsys):
    train = TABLE.format(cell="nan", label="")
    (tmp_path / "t.csv").write_text("Light,Temperature,y\n1,2,0\n,3,1\n5,6,1\n")
    ds = load_csv(tmp_path, train, test_path="t.csv", missing="drop_rows")
    np.testing.assert_allclose(ds.train_x, [[21.5, 400], [23.0, 10], [24.0, 20]])
    np.testing.assert_array_equal(ds.train_y, [1, 1, 0])
    np.testing.assert_allclose(ds.test_x, [[2, 1], [6, 5]])  # train column order
    np.testing.assert_array_equal(ds.test_y, [0, 1])
    assert ds.num_classes == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"workbench: warning: {tmp_path / 'd.csv'}: dropped 2 of 5 rows with a "
        "missing or non-finite value (missing: drop_rows; first at line 4: column "
        "'Light' has 'nan'; expected a finite number)",
        f"workbench: warning: {tmp_path / 't.csv'}: dropped 1 of 3 rows with a "
        "missing or non-finite value (missing: drop_rows; first at line 3: column "
        "'Light' has ''; expected a finite number)",
    ]


def test_csv_drop_rows_keeps_labels_and_split(tmp_path):
    rows = "".join(f"{i},{'nan' if i % 3 == 0 else i * 10},{i % 2}\n" for i in range(9))
    ds = load_csv(tmp_path, "a,b,y\n" + rows, missing="drop_rows", test_fraction=0.5)
    x = np.concatenate([ds.train_x, ds.test_x])
    y = np.concatenate([ds.train_y, ds.test_y])
    order = np.argsort(x[:, 0])
    np.testing.assert_allclose(x[order], [[i, 10 * i] for i in (1, 2, 4, 5, 7, 8)])
    np.testing.assert_array_equal(y[order], [1, 0, 0, 1, 1, 0])
    with pytest.raises(DataError, match="would drop every row"):
        load_csv(tmp_path, "a,b,y\n1,nan,0\nnan,2,1\n", missing="drop_rows")


def test_csv_text_columns_dropped_with_warning_numeric_gaps_kept(tmp_path, capsys):
    text = (
        "date,id,note,x,y\n"
        "2015-02-04,a1,,1.5,0\n"
        "2015-02-05,a2,ok,2.5,1\n"
        "2015-02-06,a3,7,NA,0\n"
        "2015-02-07,a4,bad,4.5,1\n"
    )
    with pytest.raises(DataError) as info:  # x is numeric with a gap, not text
        load_csv(tmp_path, text)
    assert one_line(info).startswith(f"{tmp_path / 'd.csv'}:4: column 'x' has 'NA'")
    capsys.readouterr()
    ds = load_csv(tmp_path, text, missing="drop_rows", test_fraction=0.25)
    assert ds.train_x.shape[1] == 1  # date, id and note (2 of 3 text) ignored
    kept = np.sort(np.concatenate([ds.train_x[:, 0], ds.test_x[:, 0]]))
    np.testing.assert_allclose(kept, [1.5, 2.5, 4.5])
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning == (
        f"workbench: warning: {tmp_path / 'd.csv'}: ignoring non-numeric columns "
        "['date', 'id', 'note'] (mostly text, not numbers); list them in "
        "data.options.drop_columns to silence this"
    )


def test_csv_stray_text_in_numeric_column_is_named(tmp_path):
    text = "x,y\n1,0\n2,1\nunknown,0\n4,1\n"
    with pytest.raises(DataError) as info:
        load_csv(tmp_path, text)
    assert one_line(info) == (
        f"{tmp_path / 'd.csv'}:4: column 'x' has 'unknown'; expected a finite "
        f"number (1 row like this; {HINT})"
    )


def test_csv_overflow_and_unknown_drop_column(tmp_path):
    with pytest.raises(DataError, match=r"d.csv:3: column 'x' has '1e39'"):
        load_csv(tmp_path, "x,y\n1,0\n1e39,1\n3,0\n")
    with pytest.raises(DataError, match=r"drop_columns \['z'\] not in the columns"):
        load_csv(tmp_path, "x,y\n1,0\n2,1\n", drop_columns=("z",))


def test_csv_missing_option_is_validated():
    with pytest.raises(ScenarioError) as info:
        DataConfig(name="csv", options={"path": "d.csv", "missing": "drop"})
    assert info.value.path == "data.options.missing"
    options = {"path": "d.csv", "missing": "drop_rows"}
    assert DataConfig(name="csv", options=options).options["missing"] == "drop_rows"


# ---------------------------------------------------------------- npz

ARRAYS = {
    "x_train": np.arange(24, dtype=np.float32).reshape(6, 4),
    "y_train": np.array([0, 1, 2, 0, 1, 2]),
    "x_test": np.ones((2, 4), np.float32),
    "y_test": np.array([1, 2]),
}


def valid_npz(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **{**ARRAYS, **arrays})
    return buffer.getvalue()


def load_npz(tmp_path: Path, raw: bytes):
    (tmp_path / "d.npz").write_bytes(raw)
    return DATASETS["npz"](data_dir=str(tmp_path), seed=0, path="d.npz")


def npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, ARRAYS["x_train"])
    return buffer.getvalue()


def flip_payload(raw: bytes) -> bytes:
    """Changes one byte of x_train's data (zip CRC no longer matches)."""
    at = raw.index(ARRAYS["x_train"].tobytes()) + 5
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


CORRUPT = {
    "first half": lambda: valid_npz()[: len(valid_npz()) // 2],
    "first half compressed": lambda: valid_npz(True)[: len(valid_npz(True)) // 2],
    "all but the last byte": lambda: valid_npz()[:-1],
    "random bytes": lambda: np.random.default_rng(0).bytes(700),
    "empty file": lambda: b"",
    "payload byte flipped": lambda: flip_payload(valid_npz()),
    "a bare .npy": npy_bytes,
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_npz_corrupt_file_is_one_data_error(tmp_path, case):
    with pytest.raises(DataError) as info:
        load_npz(tmp_path, CORRUPT[case]())
    message = one_line(info)
    assert message.startswith(f"{tmp_path / 'd.npz'}: ")
    assert ("not an .npz archive" if case == "a bare .npy" else "corrupt") in message


def test_npz_every_truncation_is_a_data_error(tmp_path):
    """Each prefix of a small valid file fails with DataError, never another type."""
    for compressed in (False, True):
        raw = valid_npz(compressed)
        for cut in range(0, len(raw), 7):
            with pytest.raises(DataError):
                load_npz(tmp_path, raw[:cut])


def test_npz_non_finite_inputs(tmp_path):
    x = ARRAYS["x_train"].copy()
    x[1, 2], x[4, 0] = np.nan, np.inf
    with pytest.raises(DataError) as info:
        load_npz(tmp_path, valid_npz(x_train=x))
    assert one_line(info) == (
        f"{tmp_path / 'd.npz'}: x_train has 2 non-finite values (NaN, inf or beyond "
        "float32), first at index (1, 2); expected finite numbers"
    )
    big = np.ones((2, 4)) * [1.0, 1e300, 1.0, 1.0]  # float64 beyond float32
    with pytest.raises(DataError, match=r"x_test has 2 non-finite .* \(0, 1\)"):
        load_npz(tmp_path, valid_npz(x_test=big))


def test_npz_labels_must_be_integer_class_ids(tmp_path):
    y = np.array([0.0, 1.5, 2.0, 0.0, 1.0, 2.0])
    with pytest.raises(DataError) as info:
        load_npz(tmp_path, valid_npz(y_train=y))
    assert one_line(info) == (
        f"{tmp_path / 'd.npz'}: y_train[1] is 1.5; expected integer class ids "
        "(1 of 6 labels are not integers)"
    )
    with pytest.raises(DataError, match=r"y_test\[0\] is .*nan"):
        load_npz(tmp_path, valid_npz(y_test=np.array([np.nan, 1.0])))
    with pytest.raises(DataError, match="y_test has dtype <U1; expected integer"):
        load_npz(tmp_path, valid_npz(y_test=np.array(["a", "b"])))
    with pytest.raises(DataError, match=r"y_train has shape \(5,\); expected \(6,\)"):
        load_npz(tmp_path, valid_npz(y_train=np.arange(5)))
    ds = load_npz(tmp_path, valid_npz(y_train=y.round()))  # integral floats are fine
    np.testing.assert_array_equal(ds.train_y, [0, 2, 2, 0, 1, 2])
    assert ds.num_classes == 3


def test_npz_inputs_must_be_numeric_rows(tmp_path):
    with pytest.raises(DataError, match="x_train has dtype <U1; expected numbers"):
        load_npz(tmp_path, valid_npz(x_train=np.array([["a"]] * 6)))
    with pytest.raises(DataError, match=r"x_test has shape \(0, 4\)"):
        load_npz(tmp_path, valid_npz(x_test=np.zeros((0, 4)), y_test=np.zeros(0)))


# ---------------------------------------------------------------- data config

BASE = {
    "peers": 2,
    "rounds": 1,
    "model": {"name": "mlp"},
    "topology": {"name": "ring"},
    "algorithm": {"name": "dsgd", "lr": 0.1},
}


@pytest.mark.parametrize(
    "key,value",
    [("batch_size", "32"), ("batch_size", 32.0), ("normalize", 1)]
    + [("val_fraction", "0.1"), ("val_fraction", float("nan"))]
    + [("max_train_per_peer", True), ("name", 3)],
)
def test_data_section_types_are_strict(key, value):
    with pytest.raises(ScenarioError) as info:
        parse_scenario({**BASE, "data": {key: value}})
    assert info.value.path == f"data.{key}" and "\n" not in str(info.value)


def test_data_section_strict_from_file_and_int_for_float(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "peers: 2\nrounds: 1\nmodel: {name: mlp}\ntopology: {name: ring}\n"
        "algorithm: {name: dsgd, lr: 0.1}\ndata: {batch_size: '32'}\n"
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == "data.batch_size: expected a valid integer, got '32'"
    scenario = load_scenario(path, ["data.batch_size=8", "data.val_fraction=0"])
    assert scenario.data.batch_size == 8 and scenario.data.val_fraction == 0.0
    assert isinstance(scenario.data.val_fraction, float)


# ---------------------------------------------------------------- batch size


@pytest.fixture
def npz_dir(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.normal(size=(40, 3)).astype(np.float32),
        y_train=np.arange(40) % 4,
        x_test=rng.normal(size=(4, 3)).astype(np.float32),
        y_test=np.arange(4),
    )
    return str(tmp_path)


def npz_cfg(**kw) -> DataConfig:
    return DataConfig(name="npz", options={"path": "d.npz"}, val_fraction=0.0, **kw)


def test_batch_larger_than_smallest_peer_warns(npz_dir, capsys):
    spec = {"name": "unbalanced", "sigma": 1.0}
    fd = load_federated(npz_cfg(partition=spec, batch_size=10), 4, 0, npz_dir)
    sizes = fd.train.size.tolist()
    small = [i for i, m in enumerate(sizes) if m < 10]
    peer = min(small, key=lambda i: sizes[i])
    assert sum(sizes) == 40 and min(sizes) < 10 <= max(sizes)
    assert capsys.readouterr().err == (
        "workbench: warning: data.batch_size 10 is larger than the smallest peer's "
        f"training set ({sizes[peer]} examples, peer {peer}; {len(small)} of 4 "
        "peers have fewer than 10); their batches repeat examples\n"
    )
    load_federated(npz_cfg(batch_size=10), 4, 0, npz_dir)  # 10 each: no warning
    assert capsys.readouterr().err == ""
    load_federated(npz_cfg(batch_size=11, max_train_per_peer=5), 4, 0, npz_dir)
    assert "data.batch_size 11 is larger than the smallest peer's training set (5 " in (
        capsys.readouterr().err
    )


# ---------------------------------------------------------------- fetch


class FakeUrlopen:
    """Records the timeout and fails as told: at connect, or mid-stream."""

    def __init__(self, error: Exception, on_read: bool = False):
        self.error, self.on_read, self.timeouts = error, on_read, []

    def __call__(self, url, timeout=None):
        self.timeouts.append(timeout)
        if not self.on_read:
            raise self.error
        error = self.error

        class Response(io.RawIOBase):
            def readinto(self, buffer):
                raise error

        return Response()


def fail_fetch(monkeypatch, tmp_path, fake, **kw) -> str:
    monkeypatch.setattr(fetch_module.urllib.request, "urlopen", fake)
    source = FileSource("https://example.invalid/x.gz", "mnist/x.gz")
    with pytest.raises(DataError) as info:
        fetch("mnist", str(tmp_path), urls=[source], **kw)
    assert not (tmp_path / "mnist" / "x.gz.part").exists()
    assert not (tmp_path / "mnist" / "x.gz").exists()
    return one_line(info)


def expected_fetch_error(tmp_path, reason: str) -> str:
    return (
        f"could not download https://example.invalid/x.gz: {reason}; download it "
        f"by hand to {tmp_path / 'mnist' / 'x.gz'} and run `workbench data fetch "
        "mnist` again (it checks the file and does not download it twice)"
    )


@pytest.mark.parametrize(
    "error,on_read",
    [
        (TimeoutError("timed out"), False),
        (urllib.error.URLError(TimeoutError("timed out")), False),
        (TimeoutError("The read operation timed out"), True),
    ],
)
def test_fetch_timeout_names_url_and_manual_path(monkeypatch, tmp_path, error, on_read):
    fake = FakeUrlopen(error, on_read)
    message = fail_fetch(monkeypatch, tmp_path, fake)
    assert fake.timeouts == [60.0]
    assert message == expected_fetch_error(tmp_path, "no response for 60 s (timed out)")
    monkeypatch.setattr(fetch_module, "TIMEOUT_S", 5.0)
    fail_fetch(monkeypatch, tmp_path, fake)
    fail_fetch(monkeypatch, tmp_path, fake, timeout=0.5)
    assert fake.timeouts == [60.0, 5.0, 0.5]


@pytest.mark.parametrize(
    "error,on_read,reason",
    [
        (
            urllib.error.URLError(socket.gaierror(-2, "Name unknown")),
            False,
            "[Errno -2] Name unknown",
        ),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            True,
            "[Errno 104] Connection reset by peer",
        ),
        (
            IncompleteRead(b"abc", 10),
            True,
            "IncompleteRead(3 bytes read, 10 more expected)",
        ),
    ],
)
def test_fetch_network_failure_is_one_line(
    monkeypatch, tmp_path, error, on_read, reason
):
    message = fail_fetch(monkeypatch, tmp_path, FakeUrlopen(error, on_read))
    assert message == expected_fetch_error(tmp_path, reason)


def test_corrupt_gzip_idx_is_one_data_error(tmp_path):
    write_mnist(tmp_path / "mnist", gz=True)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    images = np.zeros((5, 28, 28), np.uint8)  # compressible: a real deflate stream
    idx = struct.pack(">BBBBIII", 0, 0, 8, 3, 5, 28, 28) + images.tobytes()
    raw = bytearray(gzip.compress(idx, mtime=0))
    raw[10] ^= 0xFF  # first byte of the deflate stream: zlib.error, not OSError
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as info:
        DATASETS["mnist"](data_dir=str(tmp_path), seed=0)
    assert one_line(info).startswith(f"{path}: cannot read (Error -3 while")
