"""``workbench cluster local``: K node processes on loopback, one run directory.

Writes ``RUN_DIR/cluster/`` (keys, ``hosts.yaml`` with free loopback ports,
one log per node), starts ``workbench cluster node`` for each rank and waits.
Rank 0 writes the run directory in the usual layout. The same hosts file
format drives real deployments (see cluster/README.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from workbench.cluster.run import refuse_clock
from workbench.cluster.security import create_keys
from workbench.errors import WorkbenchError
from workbench.rundir import check_out_dir, disk_errors, new_run_dir
from workbench.scenario import load_scenario


def free_ports(count: int) -> list[int]:
    """Ports the OS has just handed out as free on loopback."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_hosts(directory: Path, nodes: int, *, timeout: float = 10.0,
                heartbeat: float = 1.0, secure: bool = True) -> Path:  # fmt: skip
    """A loopback hosts file (and keys, if ``secure``) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = create_keys(directory / "keys", nodes) if secure else [None] * nodes
    entries = []
    for port, key in zip(free_ports(nodes), keys, strict=True):
        entry = {"host": "127.0.0.1", "port": port}
        if key is not None:
            entry["public_key"] = key
        entries.append(entry)
    hosts = {"nodes": entries, "timeout": timeout, "heartbeat": heartbeat}
    if secure:
        hosts["secret_keys"] = "keys"
    path = directory / "hosts.yaml"
    path.write_text(yaml.safe_dump(hosts, sort_keys=False))
    return path


def node_command(scenario: str, hosts: Path, rank: int, overrides=(), out=None,
                 data_dir=None) -> list[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "workbench.cli", "cluster", "node", scenario,
           "--hosts", str(hosts), "--rank", str(rank)]  # fmt: skip
    for o in overrides:
        cmd += ["--set", o]
    if out is not None:
        cmd += ["--out", str(out)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def start_node(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def launch_local(scenario: str, overrides: list[str], nodes: int, *,
                 out: str | None = None, data_dir: str | None = None,
                 timeout: float = 10.0, heartbeat: float = 1.0,
                 secure: bool = True) -> Path:  # fmt: skip
    """Runs the scenario on ``nodes`` loopback node processes; the run directory."""
    sc = load_scenario(scenario, overrides)  # a bad scenario fails here, once
    refuse_clock(sc)
    if nodes < 1:
        raise WorkbenchError(f"--nodes {nodes}: give at least 1")
    if nodes > sc.peers:
        raise WorkbenchError(
            f"--nodes {nodes} for {sc.peers} peers: every node needs a peer"
        )
    if out:
        check_out_dir(Path(out))
    run_dir = Path(out) if out else new_run_dir("runs", sc.name)
    cdir = run_dir / "cluster"
    with disk_errors(cdir):
        hosts = write_hosts(cdir, nodes, timeout=timeout, heartbeat=heartbeat,
                            secure=secure)  # fmt: skip
    procs = [
        start_node(
            node_command(
                scenario, hosts, r, overrides, run_dir if r == 0 else None, data_dir
            ),  # fmt: skip
            cdir / f"node-{r}.log",
        )
        for r in range(nodes)
    ]
    try:
        rc = procs[0].wait()
        deadline = time.monotonic() + 3 * timeout
        for p in procs[1:]:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        rc = rc if "rc" in locals() else 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if rc != 0:
        log = (cdir / "node-0.log").read_text(errors="replace").strip().splitlines()
        last = log[-1] if log else "no output"
        raise WorkbenchError(f"rank 0 failed (status {rc}): {last}; logs in {cdir}")
    return run_dir
