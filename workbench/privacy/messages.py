"""Captured messages: from a chunk's capture buffer to what each attacker received.

A chunk captures the outboxes of the victims at the attack rounds
(``workbench.rounds.Capture``). Here they become :class:`Received` messages,
one per (round, victim, attacker): a broadcast model once, with attacker
``neighbours`` (every neighbour got the same bytes); a per-edge model
(ZeroSum) once per neighbour ``peer j``, and once per colluding set ``set s``
(the W-weighted mean of what its members received). Records are saved as
msgpack (``privacy/messages_<round>.msgpack``, never pickle) so that
``workbench privacy RUN_DIR`` can attack them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import numpy as np

from workbench.comm.messages import PerEdge, plain
from workbench.errors import WorkbenchError
from workbench.rundir import disk_errors

FORMAT, VERSION = "workbench-messages", 1
MESSAGES_DIR = "privacy"


class Record(NamedTuple):
    """One chunk's captured messages, on the host."""

    rounds: np.ndarray  # (slots,) int 0-based round of each slot, -1 if unused
    sent: np.ndarray  # (slots, p) bool: the victim sent that round
    victims: np.ndarray  # (p,) int peer index of each captured column
    model: Any  # leaves (slots, p, ...) broadcast, or (slots, p, k - 1, ...) per edge
    per_edge: bool
    receivers: np.ndarray  # (slots, p, k - 1) int receiver of each edge row, -1 none
    weights: np.ndarray  # (slots, p, k - 1) W between victim and receiver (0: none)
    second: Any = None  # leaves (slots, p, ...): gossip step 1's message, if kept


class Received(NamedTuple):
    """The messages under attack, stacked: one per (round, victim, attacker)."""

    model: Any  # leaves (M, ...): the model the attacker received
    round: np.ndarray  # (M,) int 1-based round (as in metrics.csv)
    victim: np.ndarray  # (M,) int
    attacker: list[str]  # (M,) "neighbours" | "peer j" | "set s" | "marginalized"


def model_part(outbox, params_like) -> tuple[Any, bool]:
    """(the model in an outbox, whether it is per edge); a one-line error if none.

    The outbox must be the model itself (D-SGD, Muffliato, DP-SGD) or a
    ``PerEdge`` model (ZeroSum): the attacks evaluate what was sent as a model.
    """
    want = jax.tree.structure(params_like)
    if isinstance(outbox, PerEdge) and jax.tree.structure(outbox.value) == want:
        return outbox.value, True
    values = plain(outbox)
    if jax.tree.structure(values) == want:
        return values, False
    raise WorkbenchError(
        "privacy: this algorithm's messages are not its model (they hold "
        f"{jax.tree.structure(values)}); the attacks need an algorithm that "
        "sends its model (dsgd, multi_gossip, muffliato, zerosum, dpsgd, ...)"
    )


def record(captured, victims, params_like, table_idx, table_weight) -> Record:
    """The host :class:`Record` of a chunk's ``Captured`` buffer.

    Args:
      table_idx, table_weight: (n, k) the graph's in-neighbour table (static
        graphs; per-edge row c of peer a goes to ``table_idx[a, c + 1]``).
    """
    model, per_edge = model_part(captured.outbox, params_like)
    model = jax.tree.map(np.asarray, jax.device_get(model))
    rounds = np.asarray(captured.rounds)
    victims = np.asarray(victims)
    slots = rounds.shape[0]
    idx, w = np.asarray(table_idx), np.asarray(table_weight)
    real = (w[victims, 1:] != 0) & (idx[victims, 1:] != victims[:, None])
    receivers = np.where(real, idx[victims, 1:], -1)
    receivers = np.broadcast_to(receivers, (slots,) + receivers.shape).copy()
    weights = np.broadcast_to(np.where(real, w[victims, 1:], 0.0), receivers.shape)
    second = None
    if captured.second is not None:
        second, _ = model_part(captured.second, params_like)
        second = jax.tree.map(np.asarray, jax.device_get(second))
    return Record(
        rounds,
        np.asarray(captured.sent),
        victims,
        model,
        per_edge,
        receivers,
        weights.copy(),
        second,
    )


def marginalized(rec: Record, s: int, c: int):
    """The victim's own model from its gossip step-1 message (column c, slot s).

    An attacker that knows W and every step-0 message the victim averaged
    (all its in-neighbours are captured peers) inverts the average:
    theta_v = (m1_v - sum_{j != v} W_vj m0_j) / W_vv, W_vv = 1 - sum_j W_vj.
    With noise added only to what is sent (Muffliato's decentralizepy
    variant) this is the victim's noiseless model; else its step-0 message.
    """
    col = {int(v): i for i, v in enumerate(rec.victims)}
    to, w = rec.receivers[s, c], rec.weights[s, c]
    others = [(col[int(j)], wj) for j, wj in zip(to, w, strict=True) if j >= 0]
    self_w = 1.0 - sum(wj for _, wj in others)

    def invert(m1, m0):
        mixed = sum(wj * m0[s, i] for i, wj in others)
        return (m1[s, c] - mixed) / self_w

    return jax.tree.map(invert, rec.second, rec.model)


def received(rec: Record, colluding=(), marginal: bool = False) -> Received:
    """Every (round, victim, attacker) message of a record, stacked.

    ``marginal`` adds the ``marginalized`` attacker's reconstruction of each
    victim's own model (needs the record's step-1 messages).
    """
    parts, rounds, victims, attackers = [], [], [], []

    def add(tree, r, v, who):
        parts.append(tree)
        rounds.append(int(r) + 1)
        victims.append(int(v))
        attackers.append(who)

    for s, r in enumerate(rec.rounds):
        if r < 0:
            continue
        for c, v in enumerate(rec.victims):
            if not rec.sent[s, c]:
                continue
            msg = jax.tree.map(lambda x, s=s, c=c: x[s, c], rec.model)
            if marginal and rec.second is not None:
                add(marginalized(rec, s, c), r, v, "marginalized")
            if not rec.per_edge:
                add(msg, r, v, "neighbours")
                continue
            to = rec.receivers[s, c]
            for e in np.flatnonzero(to >= 0):
                add(jax.tree.map(lambda x, e=e: x[e], msg), r, v, f"peer {to[e]}")
            for i, group in enumerate(colluding):
                got = np.isin(to, group) & (to >= 0)
                if got.any():
                    w = rec.weights[s, c] * got
                    pooled = jax.tree.map(
                        lambda x, w=w: np.tensordot(w / w.sum(), x, axes=1), msg
                    )
                    add(pooled, r, v, f"set {i}")
    if not parts:
        return Received(None, np.zeros(0, int), np.zeros(0, int), [])
    model = jax.tree.map(lambda *xs: np.stack(xs), *parts)
    return Received(model, np.asarray(rounds), np.asarray(victims), attackers)


def save(run_dir: Path, rec: Record) -> Path:
    """Writes ``rec`` atomically as privacy/messages_<first round>.msgpack."""
    first = int(rec.rounds[rec.rounds >= 0].min()) + 1
    path = run_dir / MESSAGES_DIR / f"messages_{first:08d}.msgpack"
    state = {
        "format": FORMAT,
        "version": VERSION,
        "record": {
            **{k: v for k, v in rec._asdict().items() if v is not None},
            "per_edge": np.bool_(rec.per_edge),
        },
    }
    tmp = path.with_suffix(".tmp")
    with disk_errors(path):
        path.parent.mkdir(exist_ok=True)
        tmp.write_bytes(flax.serialization.msgpack_serialize(state))
        os.replace(tmp, path)
    return path


def load(path: Path) -> Record:
    """Reads one saved record; a one-line WorkbenchError if it is not one."""
    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())
        if state.get("format") != FORMAT:
            raise ValueError("not a workbench messages file")
        raw = state["record"]
        fields = {k: raw[k] for k in Record._fields if k != "second"}
        fields["second"] = raw.get("second")
        fields["per_edge"] = bool(fields["per_edge"])
        return Record(**fields)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WorkbenchError(
            f"{path} is unreadable ({e}); expected captured messages"
        ) from None


def load_all(run_dir: Path, after: int | None = None) -> list[Record]:
    """Every saved record of a run, in round order (up to round ``after``)."""
    records = [
        load(p) for p in sorted((run_dir / MESSAGES_DIR).glob("messages_*.msgpack"))
    ]
    if after is None:
        return records
    return [r for r in records if int(r.rounds[r.rounds >= 0].min()) + 1 <= after]
