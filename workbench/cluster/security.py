"""CurveZMQ: key files, and sockets that only talk to the hosts file's keys.

``workbench cluster keys DIR --nodes K`` writes ``node-<r>.key`` (public) and
``node-<r>.key_secret`` for each rank with pyzmq's certificate tools and prints
the public keys for the hosts file. A node's listening socket is a CurveZMQ
server whose ZAP handler accepts exactly the public keys of the hosts file;
every other connection is refused and logged on one line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.cluster")


def create_keys(directory: str | Path, num_nodes: int) -> list[str]:
    """Key pairs for ranks 0..num_nodes-1 in ``directory``; their public keys."""
    if not zmq.has("curve"):
        raise WorkbenchError("this libzmq has no CurveZMQ support; reinstall pyzmq")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    for rank in range(num_nodes):
        public, _ = zmq.auth.create_certificates(directory, f"node-{rank}")
        keys.append(zmq.auth.load_certificate(public)[0].decode())
    return keys


def secret_key_path(rank: int, hosts_dir: Path, directory: str | None) -> Path:
    if directory is None:
        raise WorkbenchError(
            "the hosts file has public keys but no secret_keys directory: "
            "add secret_keys or pass --key node-<rank>.key_secret"
        )
    return hosts_dir / directory / f"node-{rank}.key_secret"


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, or a one-line error."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"cannot read secret key {path}: {e}") from None
    if secret is None:
        raise WorkbenchError(f"{path} holds no secret key (use node-<rank>.key_secret)")
    return public, secret


class Allowed:
    """ZAP credentials provider: the hosts file's public keys, by rank."""

    def __init__(self, keys: list[str]):
        self.rank_of = {k: r for r, k in enumerate(keys)}

    def callback(self, domain: str, key: bytes) -> bool:
        del domain
        ok = key.decode(errors="replace") in self.rank_of
        if not ok:
            log.warning("refused a connection: its public key is not in the hosts file")
        return ok


def start_authenticator(context: zmq.Context, keys: list[str]) -> ThreadAuthenticator:
    auth = ThreadAuthenticator(context, log=logging.getLogger("workbench.zap"))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=Allowed(keys))
    return auth


def make_server(sock: zmq.Socket, public: bytes, secret: bytes) -> None:
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True


def make_client(sock: zmq.Socket, public: bytes, secret: bytes, server: str) -> None:
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = server.encode()
