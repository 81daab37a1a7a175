"""Cluster mode end to end: node processes on loopback against the simulator."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
import zmq

from workbench.checkpoint import latest_good
from workbench.cluster.hosts import load_hosts
from workbench.cluster.launch import (
    free_ports,
    launch_local,
    node_command,
    start_node,
    write_hosts,
)
from workbench.cluster.wire import encode
from workbench.results import read_csv
from workbench.runner import run

QUICK = "scenarios/quickstart.yaml"


def _state(run_dir: Path):
    ckpt = latest_good(run_dir)
    import flax.serialization

    return flax.serialization.msgpack_restore(ckpt.payload)


def _same_run(sim_dir: Path, cl_dir: Path) -> None:
    """Same final state (to 1e-5), bits sent, and metrics and peer rows."""
    a, b = _state(sim_dir), _state(cl_dir)
    assert int(a["round"]) == int(b["round"])
    for x, y in zip(
        jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"]), strict=True
    ):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b["sent"], a["sent"])
    assert float(b["server_sent"]) == float(a["server_sent"])
    for name in ("metrics.csv", "peers.csv"):
        ra, rb = read_csv(sim_dir / name), read_csv(cl_dir / name)
        assert len(ra) == len(rb) > 0
        for x, y in zip(ra, rb, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                if k != "wall_time":
                    assert float(y[k]) == pytest.approx(float(x[k]), rel=1e-5, abs=1e-6)


CASES = {
    # the quickstart (average exchange, ring) on 4 nodes
    "quickstart": (QUICK, ["rounds=6", "eval_every=3"], 4),
    # gradient tracking: two messages per round (gossip steps), a dirichlet split
    "tracking": (
        "scenarios/gt_vs_dsgd.yaml",
        ["rounds=4", "eval_every=2", "peers=8"],
        2,
    ),
    # ZeroSum: per-edge noisy messages (the edge exchange), each to its receiver
    "zerosum": (
        QUICK,
        ["rounds=4", "eval_every=2", "peers=8", "algorithm.name=zerosum"],
        2,
    ),
    # FedAvg, half the clients sampled per round: the server exchange on rank 0
    "fedavg": (
        QUICK,
        [
            "rounds=4",
            "eval_every=2",
            "peers=8",
            "algorithm.name=fedavg",
            "algorithm.client_fraction=0.5",
            "algorithm.local_steps=2",
        ],
        2,
    ),  # fmt: skip
    # dyn-fed's dynamic averaging: rank 0 decides whose drift it takes; only
    # those pay (the coordinator exchange)
    "dynamic_averaging": (
        "scenarios/dynfed_cpu.yaml",
        ["rounds=4", "eval_every=2", "peers=8", "algorithm.threshold=0.05"],
        2,
    ),
    # HiPS: parties of workers on different nodes, a 2-bit party-to-global
    # link (the hierarchy exchange, two per round)
    "hierarchical": (
        "scenarios/hips_cpu.yaml",
        ["rounds=4", "eval_every=2", "peers=6"],
        2,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cluster_local_equals_simulate(case, tmp_path):
    scenario, overrides, nodes = CASES[case]
    sim = run(scenario, overrides, out=str(tmp_path / "sim"), progress=False)
    cl = launch_local(scenario, overrides, nodes, out=str(tmp_path / "cl"))
    _same_run(sim.run_dir, cl)
    summary = json.loads((cl / "summary.json").read_text())
    assert summary["cluster"]["nodes"] == nodes and summary["cluster"]["secure"]
    assert summary["cluster"]["events"] == []
    c = summary["cluster"]
    if case == "quickstart":
        # ring of 16 on 4 nodes: 8 models cross nodes per round (two at each of
        # the 4 block boundaries), 6 rounds; an MLP 64-64-10 is 4810 float32
        payload = 6 * 8 * 4810 * 4
        headers = c["exchange_bytes_total"] - payload
        assert 0 < headers < 6 * 8 * 400  # a header per message, a few hundred bytes
        assert c["wire_bytes_total"] > c["exchange_bytes_total"]
    assert summary["final_mean_test_accuracy"] == pytest.approx(
        sim.summary["final_mean_test_accuracy"], abs=1e-6
    )


def _wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _garbage(port: int, server_key: str) -> None:
    """Random bytes, an unknown CurveZMQ key, and a plaintext zmq peer."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(os.urandom(512))
    ctx = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        intruder = ctx.socket(zmq.DEALER)
        intruder.linger = 0
        intruder.curve_publickey, intruder.curve_secretkey = public, secret
        intruder.curve_serverkey = server_key.encode()
        intruder.connect(f"tcp://127.0.0.1:{port}")
        intruder.send_multipart(encode("data", 0, 0, 0, 1, {}))
        plain = ctx.socket(zmq.DEALER)
        plain.linger = 0
        plain.connect(f"tcp://127.0.0.1:{port}")
        plain.send_multipart([msgpack.packb({"v": 1}), os.urandom(32)])
        time.sleep(0.5)
    finally:
        ctx.destroy(linger=0)


def test_a_killed_node_is_dropped_and_rejoins_and_garbage_never_crashes(tmp_path):
    # the kill lands within the first rounds; the restarted node rejoined ~300
    # rounds later here (its process starts while the others train)
    overrides = ["rounds=700", "eval_every=50"]
    cdir = tmp_path / "run" / "cluster"
    hosts = write_hosts(cdir, 4, timeout=3.0, heartbeat=0.2)
    out = tmp_path / "run"
    logs = [cdir / f"node-{r}.log" for r in range(4)]
    cmd = lambda r: node_command(QUICK, hosts, r, overrides, out if r == 0 else None)  # noqa: E731
    procs = [start_node(cmd(r), logs[r]) for r in range(4)]
    try:
        _wait_for(lambda: (out / "metrics.csv").is_file(), 120, "the first round")
        procs[2].send_signal(signal.SIGKILL)
        config = load_hosts(hosts)[0]
        _garbage(config.nodes[1].port, config.nodes[1].public_key)
        procs[2].wait()
        procs[2] = start_node(cmd(2), logs[2])  # restarted: rejoins
        assert procs[0].wait(timeout=240) == 0, logs[0].read_text()[-2000:]
        for p in procs[1:]:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    log0, log1 = logs[0].read_text(), logs[1].read_text()
    assert "node 2 (peers 8-11) declared dead at round" in log0
    assert "node 2 rejoins at round" in log0
    log2 = logs[2].read_text()
    back = re.search(r"rejoined at round (\d+)", log2)
    assert back is not None, log2
    # the data its neighbours sent for the rejoin round before its 'go' was
    # kept (a later round may time out on a loaded machine: not asserted)
    assert f"in round {back.group(1)} within" not in log2, log2[-2000:]
    assert "refused a connection" in log1  # the handshakes that failed
    # rank 1's peer 7 waited for peer 8's model in the round rank 2 died in
    assert "Traceback" not in log0 + log1
    summary = json.loads((out / "summary.json").read_text())
    events = [(e["rank"], e["event"]) for e in summary["cluster"]["events"]]
    assert events == [(2, "dead"), (2, "rejoined")]
    assert summary["cluster"]["live_at_end"] == [0, 1, 2, 3]
    rows = read_csv(out / "metrics.csv")
    assert int(rows[-1]["round"]) == 700 and float(rows[-1]["test_acc_mean"]) > 0.9


def _alone_on_rank0(overrides):
    """Rank 0 of two runs round 0 while rank 1 never sends anything; the
    kernel of rank 0's messages (n, 64, 4) and its peers' kernels after it."""
    from workbench.cluster.hosts import Hosts
    from workbench.cluster.node import Node
    from workbench.engine import build
    from workbench.scenario import load_scenario

    sc = load_scenario(QUICK, ["peers=4", "model.hidden=[4]"] + overrides)
    ports = free_ports(2)
    hosts = Hosts.model_validate(
        {"nodes": [{"host": "127.0.0.1", "port": p} for p in ports], "timeout": 0.3}
    )
    node = Node(build(sc), hosts, 0, None)  # peers 0, 1; rank 1 holds 2, 3
    try:
        st, t = node.steps, jnp.int32(0)
        arrays, table, view, idx, weight = node.graph(0, {0, 1})
        _, outbox, _ = st.local(node.state, *node.data, t, view)
        node.round(0, {0, 1})
    finally:
        node.transport.close()
    sent = np.asarray(outbox["Dense_0"]["kernel"])  # rows 0, 1 are rank 0's
    return node, sent, np.asarray(node.state.params["Dense_0"]["kernel"])


def test_a_message_that_misses_the_timeout_is_a_failed_link(caplog):
    """Rank 1 never sends: rank 0's peers mix without its models, the weight
    of each missing model moved to the receiver's own (link-failure semantics)."""
    _, x, got = _alone_on_rank0([])
    assert "no 'data' message from rank(s) [1] in round 0" in caplog.text
    # ring of 4, W = 1/3 on self and both neighbours: peer 0 misses peer 3's
    # model, peer 1 misses peer 2's; each keeps 2/3 on itself
    want = np.stack([2 / 3 * x[0] + 1 / 3 * x[1], 1 / 3 * x[0] + 2 / 3 * x[1]])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_an_update_that_misses_the_timeout_leaves_the_server_mean(caplog):
    """FedAvg: rank 1's clients never upload; rank 0 averages the updates it
    has, weighted by data size, and its clients take that mean."""
    unequal = "data.partition={name: unbalanced, sigma: 1.0}"
    node, x, got = _alone_on_rank0(["algorithm.name=fedavg", unequal])
    assert "no 'up' message from rank(s) [1] in round 0" in caplog.text
    w = np.asarray(node.weights)[:2]  # data sizes of peers 0 and 1
    assert w.min() > 0 and w[0] != w[1]  # the test tells the weighting apart
    mean = (w[0] * x[0] + w[1] * x[1]) / w.sum()
    np.testing.assert_allclose(got, np.stack([mean, mean]), rtol=1e-5, atol=1e-6)


def test_a_reply_with_rows_for_another_block_stops_the_node_in_one_line():
    """Rank 1 of a hierarchy run (peers 2, 3) gets rank 0's reply with three
    rows: it stops with one line, not a shape error."""
    from workbench.cluster.hosts import Hosts
    from workbench.cluster.node import Node, named
    from workbench.cluster.wire import Message
    from workbench.engine import build
    from workbench.errors import WorkbenchError
    from workbench.scenario import load_scenario

    sc = load_scenario("scenarios/hips_cpu.yaml", ["peers=4", "model.hidden=[4]"])
    hosts = Hosts.model_validate(
        {"nodes": [{"host": "127.0.0.1", "port": p} for p in free_ports(2)]}
    )
    node = Node(build(sc), hosts, 1, None)
    try:
        like = jax.tree.map(lambda a: np.zeros((3,) + a.shape, a.dtype), node.down_like)
        bad = {**named(like, "msg"), "sent": np.zeros(3)}
        node.transport.wait = lambda *a: {0: Message("down", 0, 0, 0, bad, None)}
        node.transport.send = lambda *a, **k: 0
        with pytest.raises(
            WorkbenchError, match=r"rows for \[3\] peers, this node holds 2"
        ):
            node.round(0, {0, 1})
    finally:
        node.transport.close()


def test_a_go_for_an_earlier_incarnation_is_stale_even_for_round_0():
    """A restarted node finds rank 0's round-0 'go' for its dead process
    (queued behind a handshake that never finished) before its rejoin: it
    drops it and takes the rejoin, which names its own incarnation."""
    from types import SimpleNamespace

    from workbench.cluster.run import Worker
    from workbench.cluster.wire import Message

    mine, old = np.arange(8, dtype=np.uint8), np.zeros(8, np.uint8)
    filed = {
        ("go", 0, 0, 0): Message("go", 0, 0, 0, {"nonce": old}),
        ("go", 551, 0, 0): Message("go", 551, 0, 0, {"nonce": mine, "state.w": old}),
    }
    tr = SimpleNamespace(filed=filed, nonce=mine, pump=lambda s: None)
    node = SimpleNamespace(transport=tr, hosts=SimpleNamespace(startup_timeout=1.0))
    assert Worker(node)._next(0).round == 551
    filed[("go", 0, 0, 0)] = Message("go", 0, 0, 0, {"nonce": mine})
    assert Worker(node)._next(0).round == 0  # its own round 0: a fresh run
