"""pyzmq transport: one listening ROUTER per node, one DEALER per other node.

``Transport.send`` puts arrays on the socket as buffers (no copy beyond the
device-to-host one). ``Transport.pump`` receives for a while, checks every
message (``wire.decode``) and files it under (kind, round, step, sender);
anything that fails a check, arrives for a round already past or too far
ahead, or repeats a filed message is logged on one line and dropped; the node
keeps running. Failed handshakes (no CurveZMQ, a key not in the hosts file,
random bytes) are logged from the socket monitor. A heartbeat thread with its
own socket tells rank 0 this node is alive, even while a jitted step runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from workbench.cluster import security
from workbench.cluster.hosts import Hosts
from workbench.cluster.wire import Expect, Message, WireError, decode, encode
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.cluster")

# kinds filed for the current round and the next one only; the others are
# control messages filed whatever their round
ROUND_KINDS = frozenset({"data", "up", "down", "done"})
HANDSHAKE_FAILED = {
    getattr(zmq, name)
    for name in (
        "EVENT_HANDSHAKE_FAILED_NO_DETAIL",
        "EVENT_HANDSHAKE_FAILED_PROTOCOL",
        "EVENT_HANDSHAKE_FAILED_AUTH",
    )
    if hasattr(zmq, name)
}


class Transport:
    """A node's sockets: receive on its port, send to any other rank."""

    def __init__(self, hosts: Hosts, rank: int, keypair, expect: Expect):
        self.hosts, self.rank, self.expect = hosts, rank, expect
        self.keypair = keypair
        self.context = zmq.Context()
        self.auth = None
        keys = [n.public_key for n in hosts.nodes]
        self.rank_of_key = {k: r for r, k in enumerate(keys)} if hosts.secure else {}
        if hosts.secure:
            self.auth = security.start_authenticator(self.context, keys)
        self.inbox = self.context.socket(zmq.ROUTER)
        self.inbox.linger = 0
        if hosts.secure:
            security.make_server(self.inbox, *keypair)
        self.monitor = self.inbox.get_monitor_socket()
        self.out: dict[int, zmq.Socket] = {}
        self.filed: dict[tuple, Message] = {}
        self.seen: set[tuple] = set()
        # messages of rounds before it are replays; None until the first round
        # (a node that rejoins mid-run gets data before it knows the round)
        self.floor: int | None = None
        self.sent_bytes = 0  # header and array bytes sent, all messages
        self.heard: dict[int, float] = {}  # rank -> monotonic time last heard
        # this process's incarnation: random, sent with its ready and heartbeats;
        # a restarted node has a new one, so what was meant for the process
        # before it (queued while it was down) is told apart
        self.nonce = np.frombuffer(os.urandom(8), np.uint8).copy()
        self.incarnation: dict[int, bytes] = {}  # rank -> its latest nonce
        self.stopping = threading.Event()
        self.beat = None
        address = hosts.address(rank, bind=True)
        try:
            self.inbox.bind(address)
        except zmq.ZMQError as e:
            self.close()
            raise WorkbenchError(
                f"rank {rank} cannot listen on {address}: {e.strerror} (is another "
                "node on this port? see the hosts file)"
            ) from None

    def _socket(self, rank: int) -> zmq.Socket:
        if rank not in self.out:
            sock = self.context.socket(zmq.DEALER)
            sock.linger = 1000
            sock.sndhwm = 0
            if self.hosts.secure:
                server_key = self.hosts.nodes[rank].public_key
                security.make_client(sock, *self.keypair, server_key)
            sock.connect(self.hosts.address(rank))
            self.out[rank] = sock
        return self.out[rank]

    def send(self, rank: int, kind: str, round_: int, step: int = 0,
             arrays: Mapping | None = None, live=None) -> int:  # fmt: skip
        """Sends one message; its size in bytes."""
        frames = encode(kind, round_, step, self.rank, rank, arrays or {}, live)
        self._socket(rank).send_multipart(frames, copy=False)
        size = sum(memoryview(f).nbytes for f in frames)
        self.sent_bytes += size
        return size

    def start_heartbeat(self, to: int = 0) -> None:
        """A thread sending a heartbeat to rank ``to`` every hosts.heartbeat s."""
        if to == self.rank:
            return
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        if self.hosts.secure:
            security.make_client(sock, *self.keypair, self.hosts.nodes[to].public_key)
        sock.connect(self.hosts.address(to))

        def beat():
            while not self.stopping.wait(self.hosts.heartbeat):
                beat = {"nonce": self.nonce}
                sock.send_multipart(encode("heartbeat", 0, 0, self.rank, to, beat))
            sock.close()

        self.beat = threading.Thread(target=beat, daemon=True)
        self.beat.start()

    # ------------------------------------------------------------ receiving

    def _authenticated(self, frame: zmq.Frame) -> int | None:
        if not self.hosts.secure:
            return None
        try:
            return self.rank_of_key.get(frame.get("User-Id"))
        except zmq.ZMQError:
            return None

    def _file(self, frames: list) -> None:
        if len(frames) < 2:
            log.warning("rank %d dropped a message: no header frame", self.rank)
            return
        try:
            msg = decode(
                [frames[1].bytes] + [f.buffer for f in frames[2:]],
                self.expect,
                self._authenticated(frames[1]),
            )
        except WireError as e:
            log.warning("rank %d dropped a message: %s", self.rank, e)
            return
        self.heard[msg.sender] = time.monotonic()
        if "nonce" in msg.arrays and msg.kind in ("ready", "heartbeat"):
            self.incarnation[msg.sender] = bytes(msg.arrays["nonce"])
        key = (msg.kind, msg.round, msg.step, msg.sender)
        if msg.kind in ROUND_KINDS:
            floor = msg.round if self.floor is None else self.floor
            if msg.round < floor or msg.round > floor + 1:
                log.warning(
                    "rank %d dropped a '%s' message from rank %d: round %d is "
                    "replayed or out of order (now at round %d)",
                    self.rank, msg.kind, msg.sender, msg.round, floor,
                )  # fmt: skip
                return
            if key in self.seen:
                log.warning(
                    "rank %d dropped a replayed '%s' message from rank %d (round %d)",
                    self.rank, msg.kind, msg.sender, msg.round,
                )  # fmt: skip
                return
            self.seen.add(key)
        if msg.kind != "heartbeat":
            self.filed[key] = msg

    def _monitor(self) -> None:
        event = recv_monitor_message(self.monitor)
        if event["event"] in HANDSHAKE_FAILED:
            log.warning(
                "rank %d refused a connection: handshake failed (not CurveZMQ with "
                "a key from the hosts file, or not zmq)",
                self.rank,
            )

    def pump(self, seconds: float) -> None:
        """Receives and files messages for up to ``seconds`` (at least one poll)."""
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        end = time.monotonic() + seconds
        while True:
            left = max(0.0, end - time.monotonic())
            ready = dict(poller.poll(int(left * 1000)))
            if self.monitor in ready:
                self._monitor()
            if self.inbox in ready:
                while self.inbox.poll(0):
                    self._file(self.inbox.recv_multipart(copy=False))
                return
            if time.monotonic() >= end:
                return

    def take(self, kind: str, round_: int, step: int, sender: int) -> Message | None:
        return self.filed.pop((kind, round_, step, sender), None)

    def wait(self, kind: str, round_: int, step: int, senders, timeout: float):
        """{sender: Message} of those that arrive within ``timeout`` seconds."""
        got: dict[int, Message] = {}
        want = set(senders)
        deadline = time.monotonic() + timeout
        while want:
            for s in list(want):
                msg = self.take(kind, round_, step, s)
                if msg is not None:
                    got[s] = msg
                    want.discard(s)
            if not want or time.monotonic() >= deadline:
                break
            self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
        return got

    def advance(self, round_: int) -> None:
        """Round ``round_`` starts: older round messages are now replays."""
        self.floor = round_
        self.seen = {k for k in self.seen if k[1] >= round_}
        self.filed = {
            k: m
            for k, m in self.filed.items()
            if k[0] not in ROUND_KINDS or k[1] >= round_
        }

    def close(self) -> None:
        self.stopping.set()
        if self.beat is not None:
            self.beat.join(timeout=2)
        for sock in self.out.values():
            sock.close()
        self.inbox.disable_monitor()
        self.monitor.close(0)
        self.inbox.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()
