"""The hosts file: where each node listens, its public key, and the timeouts.

```yaml
nodes:                       # rank r is the r-th entry; rank 0 coordinates
  - {host: 10.0.0.1, port: 5600, public_key: "Z85 key from workbench cluster keys"}
  - {host: 10.0.0.2, port: 5600, public_key: "..."}
secret_keys: keys            # directory with node-<rank>.key_secret (relative
                             # to this file); or pass --key to the node
timeout: 10.0                # seconds of silence before a node is declared dead
heartbeat: 1.0               # seconds between a node's heartbeats
startup_timeout: 300.0       # seconds rank 0 waits for every node to start
```

Without public keys traffic is neither authenticated nor encrypted (only for
a trusted network; the node says so on one line). Peers are split over the
nodes in contiguous blocks (``blocks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import yaml
from pydantic import Field

from workbench.errors import WorkbenchError
from workbench.scenario.frozen import FrozenModel


class Node(FrozenModel):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    public_key: str | None = Field(None, min_length=40, max_length=40)


class Hosts(FrozenModel):
    nodes: list[Node] = Field(min_length=1)
    secret_keys: str | None = None
    timeout: float = Field(10.0, gt=0)
    heartbeat: float = Field(1.0, gt=0)
    startup_timeout: float = Field(300.0, gt=0)

    @property
    def secure(self) -> bool:
        return self.nodes[0].public_key is not None

    def address(self, rank: int, bind: bool = False) -> str:
        node = self.nodes[rank]
        return f"tcp://{'*' if bind else node.host}:{node.port}"


def load_hosts(path: str | Path) -> tuple[Hosts, Path]:
    """The hosts file at ``path`` (and its directory), or a one-line error."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise WorkbenchError(f"cannot read hosts file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise WorkbenchError(
            f"hosts file {path} is not YAML{where}: {problem}"
        ) from None
    try:
        hosts = Hosts.model_validate(raw)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise WorkbenchError(f"hosts file {path}: '{where}': {err['msg']}") from None
    keyed = {n.public_key is not None for n in hosts.nodes}
    if len(keyed) > 1:
        raise WorkbenchError(
            f"hosts file {path}: give every node a public_key, or none (insecure)"
        )
    return hosts, path.parent


def blocks(num_peers: int, num_nodes: int) -> list[np.ndarray]:
    """Peer ids owned by each rank: contiguous, sizes differing by at most one."""
    if num_nodes > num_peers:
        raise WorkbenchError(
            f"{num_nodes} nodes for {num_peers} peers: every node needs a peer; "
            "use at most as many nodes as peers"
        )
    return np.array_split(np.arange(num_peers, dtype=np.int32), num_nodes)


def owner_of(num_peers: int, num_nodes: int) -> np.ndarray:
    """(n,) the rank that owns each peer."""
    out = np.empty(num_peers, np.int32)
    for rank, ids in enumerate(blocks(num_peers, num_nodes)):
        out[ids] = rank
    return out
