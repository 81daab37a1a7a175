"""``workbench cluster node``: a node process's main loop, coordinator or worker.

Rank 0 coordinates (see node.py): it waits for every rank's ``ready``, then
for each round sends ``go`` to the live ranks, runs its own block, and
collects their ``done``; at evaluation rounds it writes the run directory's
rows and a checkpoint of the whole state, exactly as ``workbench simulate``
does. The other ranks answer ``go`` with a round and ``done``, until ``stop``.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from workbench.checkpoint import canonical, save_checkpoint
from workbench.cluster.hosts import Hosts, load_hosts
from workbench.cluster.node import Node, host_copy, named, state_rows, unnamed
from workbench.cluster.routing import ROUTES
from workbench.cluster.security import load_keypair, secret_key_path
from workbench.errors import WorkbenchError
from workbench.evaluation import columns, rows
from workbench.results import CsvLog, write_json
from workbench.rundir import RUN_MARKER, disk_errors, new_run_dir, run_lock
from workbench.runner import Timer, Totals, _payload, _summary, environment
from workbench.scenario import dump_scenario, load_scenario, scenario_to_dict

log = logging.getLogger("workbench.cluster")


def setup_logging(rank: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"workbench node {rank}: %(message)s"))
    root = logging.getLogger("workbench")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("workbench.zap").setLevel(logging.ERROR)


def _keypair(hosts: Hosts, hosts_dir: Path, rank: int, key: str | None):
    if not hosts.secure:
        log.warning(
            "the hosts file has no public keys: traffic is neither authenticated "
            "nor encrypted (use only on a trusted network)"
        )
        return None
    path = Path(key) if key else secret_key_path(rank, hosts_dir, hosts.secret_keys)
    public, secret = load_keypair(path)
    if public.decode() != hosts.nodes[rank].public_key:
        raise WorkbenchError(
            f"{path} is not rank {rank}'s key (its public key differs from the "
            "hosts file's)"
        )
    return public, secret


def warmup(node: Node) -> None:
    """Compiles the node's steps on round 0's inputs (nothing is kept or sent),
    so no round waits on a compilation."""
    st, t = node.steps, jnp.int32(0)
    arrays, table, view, _, _ = node.graph(0, range(node.ranks))
    state, outbox, peers = st.local(node.state, *node.data, t, view)
    if node.served:  # rank 0 serves the outboxes; every node takes its rows
        inbox = st.serve(outbox, arrays, table, peers, node.weights, t)[0]
        inbox = jax.tree.map(lambda a: a[node.block], inbox)
    else:
        msgs, _, _ = st.send(outbox, arrays, table, peers, node.weights, t)
        inbox = st.deliver(msgs, arrays, table, peers, node.weights, t)
    state = st.combine(state, inbox, view)
    if st.resend is not None and node.alg.rounds.gossip_steps > 1:
        outbox = st.resend(state, view)
        if node.served:
            st.serve(outbox, arrays, table, peers, node.weights, t)
    jax.block_until_ready(state)


def run_node(
    scenario_path: str,
    overrides: list[str],
    hosts_path: str,
    rank: int,
    *,
    key: str | None = None,
    out: str | None = None,
    data_dir: str | None = None,
) -> dict | None:
    """Runs node ``rank``; rank 0 returns the run's summary."""
    from workbench.data import resolve_data_dir
    from workbench.engine import build

    setup_logging(rank)
    hosts, hosts_dir = load_hosts(hosts_path)
    if not 0 <= rank < len(hosts.nodes):
        raise WorkbenchError(
            f"--rank {rank}: the hosts file has ranks 0..{len(hosts.nodes) - 1}"
        )
    keypair = _keypair(hosts, hosts_dir, rank, key)
    scenario = load_scenario(scenario_path, overrides)
    refuse_clock(scenario)
    sim = build(scenario, resolve_data_dir(data_dir))
    refuse_clock(scenario, sim.spec.clock is not None)
    refuse_exchange(scenario, sim.spec.algorithm.exchange)
    t0 = time.perf_counter()
    node = Node(sim, hosts, rank, keypair)
    try:
        warmup(node)
        compile_s = time.perf_counter() - t0
        if rank == 0:
            run_dir = _run_dir(scenario, out)
            with run_lock(run_dir):
                return Coordinator(node, run_dir, compile_s).run()
        Worker(node).run()
        return None
    finally:
        node.transport.close()


def refuse_clock(scenario, clocked: bool = False) -> None:
    """One line: a virtual clock simulates time; cluster nodes live in real time."""
    if scenario.clock is not None:
        raise WorkbenchError(
            "clock: simulates time, but cluster nodes run in real time (their "
            "timeouts and faults are real); drop the clock: section"
        )
    if clocked:
        raise WorkbenchError(
            f"algorithm '{scenario.algorithm['name']}' is asynchronous and runs on "
            "the simulator's virtual clock only (workbench simulate)"
        )


def refuse_exchange(scenario, kind: str) -> None:
    """One line for an exchange the nodes cannot route yet."""
    if kind not in ROUTES:
        raise WorkbenchError(
            f"algorithm '{scenario.algorithm['name']}' uses the '{kind}' exchange, "
            f"which cluster nodes do not route (they route {sorted(ROUTES)}); "
            "run it with workbench simulate"
        )


def _run_dir(scenario, out: str | None) -> Path:
    run_dir = Path(out) if out else new_run_dir("runs", scenario.name)
    if (run_dir / RUN_MARKER).exists():
        raise WorkbenchError(f"--out {run_dir} already holds a run; pick a new one")
    with disk_errors(run_dir / RUN_MARKER):
        run_dir.mkdir(parents=True, exist_ok=True)
        header = "".join(f"# {k}: {v}\n" for k, v in environment().items())
        (run_dir / RUN_MARKER).write_text(header + dump_scenario(scenario))
    return run_dir


def _is_eval_round(t: int, sc) -> bool:
    return (t + 1) % sc.eval_every == 0 or t + 1 == sc.rounds


def scenario_digest(scenario) -> np.ndarray:
    """(32,) uint8 sha256 of the resolved scenario: every node must run the same."""
    text = canonical(scenario_to_dict(scenario)).encode()
    return np.frombuffer(hashlib.sha256(text).digest(), np.uint8)


def _state_arrays(node: Node) -> dict:
    return {k: np.asarray(v) for k, v in named(node.state, "state").items()}


class Worker:
    def __init__(self, node: Node):
        self.node = node

    def _next(self, expected: int):
        """The next ``go`` or ``stop`` message, or an error.

        A ``go`` is taken when it names this process's incarnation (the nonce
        of its ``ready``) and is for round ``expected``, or for a later round
        carrying this block's state (a rejoin). Any other is stale: rank 0
        queued it for this rank's previous process, which died (even a round
        0 ``go`` still queued behind a handshake), and a restarted node that
        ran it would advance past the round it is rejoined at and drop that
        round's data as out of order.
        """
        tr = self.node.transport
        wait = self.node.hosts.startup_timeout  # rank 0 may be evaluating
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for key in sorted(k for k in tr.filed if k[0] in ("go", "stop")):
                msg = tr.filed.pop(key)
                if msg.kind == "stop":
                    return msg
                mine = bytes(msg.arrays["nonce"]) == bytes(tr.nonce)
                rejoin = len(msg.arrays) > 1 and msg.round >= expected
                if mine and (msg.round == expected or rejoin):
                    return msg
                log.warning(
                    "dropped a stale 'go' for round %d (now at %d)",
                    msg.round,
                    expected,
                )
            tr.pump(0.05)
        raise WorkbenchError(
            f"rank 0 (the coordinator) sent nothing for {wait:.0f} s; this node stops"
        )

    def run(self) -> None:
        node, tr = self.node, self.node.transport
        sc = node.sim.scenario
        tr.start_heartbeat(0)
        tr.send(0, "ready", 0, 0, {"scenario": scenario_digest(sc), "nonce": tr.nonce})
        expected = 0
        while True:
            msg = self._next(expected)
            if msg.kind == "stop":
                return
            t = msg.round
            block = {k: v for k, v in msg.arrays.items() if k != "nonce"}
            if block:  # a rejoin: rank 0's last checkpoint of this block
                node.state = unnamed(node.state, block, "state")
                node.state = jax.tree.map(jnp.asarray, node.state)
                log.info("rejoined at round %d from the last checkpoint", t)
            sent, _ = node.round(t, msg.live)
            arrays = {"sent": sent, "wire": node.wire()}
            if _is_eval_round(t, sc):
                arrays.update(_state_arrays(node))
            tr.send(0, "done", t, 0, arrays)
            expected = t + 1


class Coordinator:
    """Rank 0: rounds, membership, evaluation and the run directory."""

    def __init__(self, node: Node, run_dir: Path, compile_s: float):
        self.node, self.run_dir, self.compile_s = node, run_dir, compile_s
        sim = node.sim
        self.sc = sim.scenario
        self.full = host_copy(sim.state)  # last evaluated state of every peer
        self.sent = np.zeros(node.n)
        self.server = 0.0
        self.live = set(range(node.ranks))
        self.dead_at: dict[int, float] = {}  # rank -> monotonic time declared dead
        self.events: list[dict] = []
        self.wire: dict[int, np.ndarray] = {}
        self.digest = scenario_digest(self.sc)

    def _ready(self, r: int) -> bool:
        """Whether rank r said ``ready`` with this run's scenario."""
        msg = self.node.transport.take("ready", 0, 0, r)
        if msg is None:
            return False
        if not np.array_equal(msg.arrays["scenario"], self.digest):
            log.warning(
                "rank %d runs another scenario (its resolved scenario differs from "
                "rank 0's); start it with the same file and --set values",
                r,
            )
            return False
        return True

    def _await_ready(self) -> None:
        tr, hosts = self.node.transport, self.node.hosts
        waiting = set(range(1, self.node.ranks))
        deadline = time.monotonic() + hosts.startup_timeout
        while waiting and time.monotonic() < deadline:
            tr.pump(0.05)
            waiting = {r for r in waiting if not self._ready(r)}
        if waiting:
            raise WorkbenchError(
                f"rank(s) {sorted(waiting)} did not start within "
                f"{hosts.startup_timeout:.0f} s (hosts file startup_timeout)"
            )

    def _rejoiners(self) -> set[int]:
        tr = self.node.transport
        back = set()
        for r, since in self.dead_at.items():
            if self._ready(r) or tr.heard.get(r, 0.0) > since + self.node.hosts.timeout:
                back.add(r)
        for r in back:
            del self.dead_at[r]
        return back

    def _well_formed(self, msg, r: int, t: int) -> bool:
        """A ``done`` with a row per peer of rank r, and its state when due."""
        b = len(self.node.blocks[r])
        state = [k for k in msg.arrays if k.startswith("state")]
        rows_ok = all(v.shape[0] == b for k, v in msg.arrays.items() if k != "wire")
        return rows_ok and bool(state) == _is_eval_round(t, self.sc)

    def _declare_dead(self, ranks: set[int], t: int, why: str) -> None:
        for r in sorted(ranks):
            ids = self.node.blocks[r]
            log.warning(
                "node %d (peers %d-%d) declared dead at round %d: %s; the run goes "
                "on with ranks %s",
                r, ids[0], ids[-1], t, why, sorted(self.live - ranks),
            )  # fmt: skip
            self.dead_at[r] = time.monotonic()
            self.events.append({"round": t, "rank": r, "event": "dead", "why": why})
        self.live -= ranks

    def _collect(self, t: int) -> dict:
        """``done`` of round t from the live ranks; the silent ones are dead."""
        tr, timeout = self.node.transport, self.node.hosts.timeout
        waiting, got = set(self.live) - {0}, {}
        start = time.monotonic()
        while waiting:
            for r in list(waiting):
                msg = tr.take("done", t, 0, r)
                if msg is not None and not self._well_formed(msg, r, t):
                    self._declare_dead({r}, t + 1, "its result was malformed")
                    waiting.discard(r)
                elif msg is not None:
                    got[r] = msg
                    waiting.discard(r)
                elif self._ready(r):
                    self._declare_dead({r}, t + 1, "it restarted")
                    self.dead_at[r] = 0.0  # rejoins at once
                    waiting.discard(r)
            silent = {
                r for r in waiting
                if time.monotonic() - max(tr.heard.get(r, 0.0), start) > timeout
            }  # fmt: skip
            if silent:
                self._declare_dead(silent, t + 1, f"no message for {timeout:.1f} s")
                waiting -= silent
            if waiting:
                tr.pump(0.05)
        return got

    def run(self) -> dict:
        node, sc, tr = self.node, self.sc, self.node.transport
        sim = node.sim
        self._await_ready()
        shapes = jax.eval_shape(sim.evaluate, sim.state.params, sim.eval_data).values
        metric_cols, peer_cols = columns(shapes)
        metrics = CsvLog(self.run_dir / "metrics.csv", metric_cols)
        peers = CsvLog(self.run_dir / "peers.csv", peer_cols)
        scenario = scenario_to_dict(sc)
        t_start, evals, row = time.perf_counter(), 0.0, {}
        for t in range(sc.rounds):
            back = self._rejoiners()
            self.live |= back
            for r in sorted(self.live - {0}):
                arrays = {}
                if r in back:
                    arrays = self._block(r)
                    self.events.append({"round": t, "rank": r, "event": "rejoined"})
                    log.info("node %d rejoins at round %d", r, t)
                nonce = np.frombuffer(tr.incarnation[r], np.uint8)
                arrays = {"nonce": nonce, **arrays}  # in the order _expect names
                tr.send(r, "go", t, 0, arrays, live=sorted(self.live))
            sent, server = node.round(t, self.live)
            self.sent[node.block] += sent
            self.server += server
            got = self._collect(t)
            evaluate = _is_eval_round(t, sc)
            if evaluate:
                self.full = state_rows(node.state, node.block, self.full)
            for r, msg in got.items():
                self.sent[node.blocks[r]] += msg.arrays["sent"]
                self.wire[r] = np.array(msg.arrays["wire"])
                if evaluate:
                    block = unnamed(self.full, self._state_of(msg), "state")
                    self.full = state_rows(block, node.blocks[r], self.full)
            if evaluate:
                e0 = time.perf_counter()
                row = self._evaluate(t + 1, t_start, metrics, peers, scenario)
                evals += time.perf_counter() - e0
        for r in sorted(self.live - {0}):
            tr.send(r, "stop", sc.rounds)
        wall = time.perf_counter() - t_start
        return self._summary(row, wall, evals)

    def _state_of(self, msg) -> dict:
        return {k: v for k, v in msg.arrays.items() if k.startswith("state")}

    def _block(self, r: int) -> dict:
        ids = self.node.blocks[r]
        return {
            k: np.ascontiguousarray(v[ids])
            for k, v in named(self.full, "state").items()
        }

    def _evaluate(self, round_, t_start, metrics, peers, scenario) -> dict:
        sim = self.node.sim
        state = jax.tree.map(jnp.asarray, self.full)
        ev = jax.block_until_ready(sim.evaluate(state.params, sim.eval_data))
        wall = time.perf_counter() - t_start
        row, peer_rows = rows(
            jax.device_get(ev.values), round_, wall, self.sent, self.server,
            sim.spec.participants,
        )  # fmt: skip
        metrics.write([row])
        peers.write(peer_rows)
        if self.sc.output.checkpoint:
            totals = Totals(round_, self.sent.copy(), self.server, wall)
            save_checkpoint(self.run_dir, round_, _payload(state, totals), scenario,
                            keep=self.sc.output.keep_checkpoints)  # fmt: skip
        log.info("round %d: mean test accuracy %.4f", round_, row["test_acc_mean"])
        return row

    def _summary(self, row: dict, wall: float, evals: float) -> dict:
        node, sim = self.node, self.node.sim
        stats = node.stats
        wire = np.stack([node.wire()] + list(self.wire.values()))
        total_bytes, exchange_bytes = wire[:, 0].sum(), wire[:, 1].sum()
        exchange_s = float(wire[:, 2].mean())
        timer = Timer(self.compile_s, stats.round_seconds, evals, 1)
        spec = sim.spec  # every participant steps every round
        steps = spec.participants * spec.local_steps * sim.scenario.rounds
        summary = _summary(sim, row, timer, 0, wall, steps)
        summary["cluster"] = {
            "nodes": node.ranks,
            "peers_per_node": [len(b) for b in node.blocks],
            "secure": node.hosts.secure,
            # wall time per round, messages and evaluation included
            "seconds_per_round": wall / max(sim.scenario.rounds, 1),
            # rank 0's own rounds: its steps and exchanges, no evaluation
            "round_seconds_rank0": stats.round_seconds / max(sim.scenario.rounds, 1),
            "wire_bytes_total": float(total_bytes),  # every message, headers included
            "exchange_bytes_total": float(exchange_bytes),  # the exchanges' messages
            "exchange_seconds_per_node": exchange_s,
            # the exchanges' bytes (all nodes) over the time a node spends
            # exchanging (they exchange in parallel): waiting included
            "throughput_mb_per_s": exchange_bytes / 1e6 / max(exchange_s, 1e-9),
            "events": self.events,
            "live_at_end": sorted(self.live),
        }
        write_json(self.run_dir / "summary.json", summary)
        return summary
