"""Cluster mode without processes: wire format, rejections, routes, fault weights."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest

from workbench.cluster.hosts import blocks, load_hosts, owner_of
from workbench.cluster.routing import drop_edges, route, surviving
from workbench.cluster.security import create_keys, load_keypair
from workbench.cluster.transport import Transport
from workbench.cluster.wire import Expect, WireError, decode, encode
from workbench.errors import WorkbenchError

EXPECT = Expect(
    rank=1,
    ranks=3,
    kinds={
        "data": ({"msg.w": ("float32", (-1, 3)), "msg.b": ("int32", (-1,))},),
        "go": ({}, {"state.w": ("float32", (2, 3))}),
    },
)


def _frames(**over):
    arrays = over.pop("arrays", None)
    if arrays is None:
        arrays = {
            "msg.w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "msg.b": np.array([7, 8], np.int32),
        }
    args = {"kind": "data", "round_": 4, "step": 0, "sender": 0, "receiver": 1}
    args.update(over)
    return [bytes(f) for f in encode(arrays=arrays, **args)]


def test_round_trip_keeps_every_field_and_byte():
    msg = decode(_frames(), EXPECT, authenticated=0)
    assert (msg.kind, msg.round, msg.step, msg.sender) == ("data", 4, 0, 0)
    np.testing.assert_array_equal(msg.arrays["msg.w"], np.arange(6.0).reshape(2, 3))
    assert msg.arrays["msg.w"].dtype == np.float32
    np.testing.assert_array_equal(msg.arrays["msg.b"], [7, 8])
    go = decode(
        _frames(kind="go", arrays={}, live=[0, 1]), EXPECT
    )  # a variant with no arrays
    assert go.live == (0, 1) and go.arrays == {}


def test_a_scalar_stays_a_scalar():
    """A coordinator's reply carries 0-d arrays (its cut, its flags)."""
    expect = Expect(1, 3, {"down": ({"msg.cut": ("float32", ())},)})
    frames = _frames(kind="down", arrays={"msg.cut": np.float32(0.5)})
    msg = decode(frames, expect, authenticated=0)
    assert msg.arrays["msg.cut"].shape == () and float(msg.arrays["msg.cut"]) == 0.5


def _header(frames) -> dict:
    return msgpack.unpackb(frames[0])


def _with_header(frames, **changes):
    h = _header(frames)
    h.update(changes)
    return [msgpack.packb(h)] + frames[1:]


REJECTIONS = {
    "truncated frame": lambda f: [f[0], f[1], f[2][:-1]],
    "missing buffer": lambda f: f[:2],
    "wrong dtype": lambda f: _with_header(
        f, arrays=[["msg.w", "float64", [2, 3], 48], _header(f)["arrays"][1]]
    ),
    "wrong shape": lambda f: _with_header(
        f, arrays=[["msg.w", "float32", [3, 2], 24], _header(f)["arrays"][1]]
    ),
    "wrong names": lambda f: _with_header(
        f, arrays=[["msg.v", "float32", [2, 3], 24], _header(f)["arrays"][1]]
    ),
    "byte count lies": lambda f: _with_header(
        f, arrays=[["msg.w", "float32", [2, 3], 99], _header(f)["arrays"][1]]
    ),
    "random bytes": lambda f: [os.urandom(64)],
    "empty": lambda f: [],
    "not a map": lambda f: [msgpack.packb([1, 2, 3])] + f[1:],
    "huge header": lambda f: [b"\x00" * (1 << 17)] + f[1:],
    "version": lambda f: _with_header(f, v=99),
    "unknown kind": lambda f: _with_header(f, kind="pickle"),
    "other receiver": lambda f: _with_header(f, receiver=2),
    "unknown sender": lambda f: _with_header(f, sender=7),
    "own rank as sender": lambda f: _with_header(f, sender=1),
    "negative round": lambda f: _with_header(f, round=-1),
    "string round": lambda f: _with_header(f, round="4"),
    "extra field": lambda f: _with_header(f, code="__import__('os')"),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_every_bad_message_is_one_line_wire_error(case):
    with pytest.raises(WireError) as e:
        decode(REJECTIONS[case](_frames()), EXPECT)
    assert "\n" not in str(e.value) and str(e.value)


def test_a_spoofed_sender_is_refused():
    with pytest.raises(WireError, match="authenticated as rank 2"):
        decode(_frames(), EXPECT, authenticated=2)


class _Frame:
    """Stands for a zmq.Frame in Transport._file."""

    def __init__(self, data: bytes):
        self.bytes, self.buffer = data, memoryview(data)


def _transport():
    tr = Transport.__new__(Transport)
    tr.hosts = type("H", (), {"secure": False})()
    tr.rank, tr.expect = 1, EXPECT
    tr.filed, tr.seen, tr.floor, tr.heard = {}, set(), 4, {}
    return tr


def _file(tr, frames):
    tr._file([_Frame(b"id")] + [_Frame(f) for f in frames])


def test_replayed_and_out_of_order_rounds_are_dropped(caplog):
    tr = _transport()
    _file(tr, _frames())  # round 4: the current one
    assert ("data", 4, 0, 0) in tr.filed
    _file(tr, _frames())  # the same message again
    _file(tr, _frames(round_=3))  # a past round
    _file(tr, _frames(round_=6))  # too far ahead
    _file(tr, _frames(round_=5))  # the next round: kept for later
    assert sorted(tr.filed) == [("data", 4, 0, 0), ("data", 5, 0, 0)]
    text = caplog.text
    assert "replayed 'data'" in text and text.count("replayed or out of order") == 2
    _file(tr, [os.urandom(40)])
    assert "dropped a message: header is not msgpack" in caplog.text
    tr.advance(5)  # round 4 is over: its leftovers go
    assert sorted(tr.filed) == [("data", 5, 0, 0)]
    fresh = _transport()
    fresh.floor = None  # a node rejoining mid-run: data may precede its 'go'
    _file(fresh, _frames(round_=314))
    assert ("data", 314, 0, 0) in fresh.filed


def _ring(n):
    idx = np.stack([np.arange(n), (np.arange(n) - 1) % n, (np.arange(n) + 1) % n], 1)
    weight = np.full((n, 3), 1 / 3)
    return idx, weight


def test_routes_send_each_row_only_where_a_neighbour_lives():
    n, ranks = 8, 3
    owner = owner_of(n, ranks)  # blocks 0-2, 3-5, 6-7
    assert [b.tolist() for b in blocks(n, ranks)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    idx, weight = _ring(n)
    r = route("average", idx, weight, np.arange(n), owner, 0, {0, 1, 2})
    # peer 2 -> peer 3 (rank 1); peer 0 -> peer 7 (rank 2); 5 -> 6; 3 -> 2; ...
    assert {k: v.tolist() for k, v in r.rows.items()} == {
        (0, 1): [2], (1, 0): [3], (0, 2): [0], (2, 0): [7],
        (1, 2): [5], (2, 1): [6],
    }  # fmt: skip
    assert r.own.tolist() == [0, 1, 2]
    dead = route("average", idx, weight, np.arange(n), owner, 0, {0, 1})
    assert set(dead.rows) == {(0, 1), (1, 0)}
    edge = route("edge", idx, weight, np.arange(n), owner, 1, {0, 1, 2})
    # message (i=3, column 1: sender 2) is row 3 * 3 + 1 of the (n * k) messages
    assert edge.rows[0, 1].tolist() == [3 * 3 + 1]
    server = route("server", idx, weight, np.array([1, 4, 6]), owner, 1, {0, 1, 2})
    assert {k: v.tolist() for k, v in server.rows.items()} == {(1, 0): [1], (2, 0): [2]}


def test_surviving_weights_are_metropolis_hastings_on_the_live_graph():
    idx, weight = _ring(6)
    alive = np.array([True, True, False, True, True, True])
    w = surviving(idx, weight, alive)
    # the ring without peer 2 is the path 3-4-5-0-1: end degrees 1, inner 2
    W = np.zeros((6, 6))
    for i in range(6):
        for c in range(3):
            W[i, idx[i, c]] += w[i, c]
    assert W[0, 1] == pytest.approx(1 / 3) and W[1, 0] == pytest.approx(1 / 3)
    assert W[3, 4] == pytest.approx(1 / 3) and W[1, 1] == pytest.approx(2 / 3)
    assert W[1, 2] == 0 and W[2, 2] == 1 and W[3, 2] == 0
    np.testing.assert_allclose(W.sum(0), 1)  # doubly stochastic: the mean holds
    np.testing.assert_allclose(W.sum(1), 1)
    np.testing.assert_allclose(W, W.T)


def test_a_missing_message_moves_its_weight_to_the_receiver():
    idx, weight = _ring(4)
    missing = np.zeros_like(weight, bool)
    missing[1, 2] = True
    w = drop_edges(weight, missing)
    np.testing.assert_allclose(w[1], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(w[0], weight[0])


def test_hosts_file_errors_are_one_line(tmp_path):
    path = tmp_path / "hosts.yaml"
    cases = {
        "nodes: []": "'nodes'",
        "nodes: [{host: a, port: 70000}]": "'nodes.0.port'",
        "nodes: [{host: a, port: 1}]\ntimeout: -1": "'timeout'",
        "nodes: [{host: a, port: 1, public_key: short}]": "public_key",
        "{": "not YAML",
    }
    for text, where in cases.items():
        path.write_text(text)
        with pytest.raises(WorkbenchError, match=where) as e:
            load_hosts(path)
        assert "\n" not in str(e.value)
    with pytest.raises(WorkbenchError, match="cannot read"):
        load_hosts(tmp_path / "absent.yaml")


def test_keys_round_trip(tmp_path):
    public = create_keys(tmp_path, 2)
    assert len(public) == 2 and len(set(public)) == 2
    got, secret = load_keypair(tmp_path / "node-1.key_secret")
    assert got.decode() == public[1] and len(secret) == 40
    with pytest.raises(WorkbenchError, match="no secret key"):
        load_keypair(tmp_path / "node-1.key")


def test_rank0_refuses_a_node_with_another_scenario_or_a_malformed_result(caplog):
    from types import SimpleNamespace

    from workbench.cluster.run import Coordinator, scenario_digest
    from workbench.cluster.wire import Message
    from workbench.scenario import load_scenario

    sc = load_scenario("scenarios/quickstart.yaml", ["rounds=10", "eval_every=5"])
    other = load_scenario(
        "scenarios/quickstart.yaml", ["rounds=10", "algorithm.lr=0.1"]
    )
    assert scenario_digest(sc).shape == (32,)
    filed = {}
    transport = SimpleNamespace(take=lambda *key: filed.pop(key, None))
    coord = Coordinator.__new__(Coordinator)
    coord.node = SimpleNamespace(transport=transport, blocks=blocks(16, 4))
    coord.sc, coord.digest = sc, scenario_digest(sc)
    for rank, scenario in ((1, sc), (2, other)):
        filed["ready", 0, 0, rank] = Message(
            "ready", 0, 0, rank, {"scenario": scenario_digest(scenario)}
        )
    assert coord._ready(1) and not coord._ready(2) and not coord._ready(3)
    assert "rank 2 runs another scenario" in caplog.text

    def done(rows: int, state: bool):
        arrays = {"sent": np.zeros(rows), "wire": np.zeros(4)}
        if state:
            arrays["state.params"] = np.zeros((rows, 3))
        return Message("done", 4, 0, 1, arrays)

    assert coord._well_formed(done(4, True), 1, 4)  # round 5 is evaluated
    assert coord._well_formed(done(4, False), 1, 3)
    assert not coord._well_formed(done(3, True), 1, 4)  # a row short
    assert not coord._well_formed(done(4, False), 1, 4)  # state missing
    assert not coord._well_formed(done(4, True), 1, 3)  # state not due


def test_a_busy_port_is_one_line():
    from workbench.cluster.hosts import Hosts
    from workbench.cluster.launch import free_ports

    (port,) = free_ports(1)
    hosts = Hosts.model_validate({"nodes": [{"host": "127.0.0.1", "port": port}]})
    first = Transport(hosts, 0, None, EXPECT._replace(rank=0, ranks=1))
    try:
        with pytest.raises(WorkbenchError, match=f"cannot listen on tcp://\\*:{port}"):
            Transport(hosts, 0, None, EXPECT._replace(rank=0, ranks=1))
    finally:
        first.close()
