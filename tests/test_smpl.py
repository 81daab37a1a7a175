"""SMPL sessions by hand: who starts, what each round sends, what each member keeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_contract import validation_split
from tests.test_equivalence import MLP, mlp_problem
from workbench.algorithms import ALGORITHMS
from workbench.algorithms.smpl import choose_sender
from workbench.errors import ScenarioError
from workbench.objective import make_loss
from workbench.optim import local_optimizer
from workbench.rounds import RoundSpec, init_state, make_chunk
from workbench.topology import build_topology

N = 6


def test_the_sender_is_the_best_or_a_uniform_member_the_same_for_everyone():
    ids = jnp.asarray([3, 7, 1], jnp.int32)
    real = jnp.ones(3, bool)
    accs = jnp.asarray([0.5, 0.9, 0.9])
    key = jax.random.key(0)
    assert int(choose_sender(ids, real, accs, key, 1.0)) == 1  # tie: lowest id
    counts = {1: 0, 3: 0, 7: 0}
    for s in range(600):
        k = jax.random.key(s)
        got = int(choose_sender(ids, real, accs, k, 0.0))
        perm = jnp.asarray([2, 0, 1])  # another member's column order
        assert int(choose_sender(ids[perm], real, accs[perm], k, 0.0)) == got
        counts[got] += 1
    assert min(counts.values()) > 150  # uniform over the three members
    # a padded column (not a member) is never chosen
    real = jnp.asarray([True, True, False])
    assert {int(choose_sender(ids, real, accs, jax.random.key(s), 0.0))
            for s in range(50)} == {3, 7}  # fmt: skip


def build(**keys):
    return ALGORITHMS.build(
        {"name": "smpl", "fraction": 1.0, **keys},
        "algorithm",
        loss_fn=make_loss(MLP().apply),
        optimizer=local_optimizer(lr=0.1),
        apply_fn=MLP().apply,
        validation=validation_split(N),
    )


def session(rounds, **keys):
    """([(state, traffic) after each round], initial models, round 0's table)
    from distinct initial models; one compiled round, called ``rounds`` times."""
    alg = build(**keys)
    _, params, data = mlp_problem(N)
    topo = build_topology({"name": "hyperedges", "uniform": 3}, N, 0)
    spec = RoundSpec(alg, topo.at, jax.vmap, N, 4)
    noise = jax.random.normal(jax.random.key(5), (N,))
    stacked = jax.tree.map(
        lambda p: p[None] + noise.reshape((N,) + (1,) * p.ndim) * 0.1, params
    )
    keys = jax.random.split(jax.random.key(1), N)
    state = init_state(spec, 5, stacked, keys, topo.data)
    first = jax.tree.map(np.asarray, state.params)
    chunk, out = make_chunk(spec, 5), []
    for t in range(rounds):
        copy = jax.tree.map(jnp.copy, state)  # the chunk donates its input
        state, traffic = chunk(
            copy, data, topo.data, jnp.ones(N), jnp.int32(t), length=1
        )
        out.append((state, jax.tree.map(lambda a: np.asarray(a)[0], traffic)))
    table = topo.at(topo.data, jnp.int32(0), None)
    return out, first, np.asarray(table.idx)


def cliques(idx):
    return {frozenset(row.tolist()) for row in idx}


def test_one_session_offer_start_train():
    model_bits = 32 * sum(x.size for x in jax.tree.leaves(mlp_problem(N)[1]))
    rounds, first, idx = session(3, keep_best=False)
    (s1, t1), (s2, t2), (s3, t3) = rounds
    assert len(cliques(idx)) == 2  # two cliques of 3
    sender, start = np.asarray(s2.sender), s2.start
    for clique in cliques(idx):
        members = sorted(clique)
        # offer: one sender per clique, one of its members
        assert len({int(sender[m]) for m in members}) == 1
        chosen = int(sender[members[0]])
        assert chosen in clique
        # start: every member holds the sender's model
        for m in members:
            for a, b in zip(
                jax.tree.leaves(start), jax.tree.leaves(first), strict=True
            ):
                np.testing.assert_array_equal(np.asarray(a)[m], b[chosen])
        # train: every member ends on start + the members' mean delta (the same)
        for m in members[1:]:
            for leaf in jax.tree.leaves(s3.params):
                np.testing.assert_allclose(
                    np.asarray(leaf)[m], np.asarray(leaf)[members[0]], rtol=1e-6
                )
    # bits: the offer is 32 to each of 2 others; the start only from senders;
    # the train round's delta (fraction 1: values and indices) to 2 others
    np.testing.assert_array_equal(t1.sent, 2 * 32)
    senders = set(sender.tolist())
    np.testing.assert_array_equal(
        t2.sent, [2 * model_bits if p in senders else 0 for p in range(N)]
    )
    assert (t3.sent > 2 * model_bits).all()  # values + indices
    moved = jax.tree.leaves(s3.params)[0] - jax.tree.leaves(s2.start)[0]
    assert float(jnp.abs(moved).max()) > 0


def test_keep_best_only_adopts_a_better_validated_model():
    kept, _, _ = session(9)
    free, _, _ = session(9, keep_best=False)
    bests = np.stack([np.asarray(s.best) for s, _ in kept])
    assert (np.diff(bests, axis=0) >= 0).all()  # never worse
    for (s, _), (before, _) in zip(kept[1:], kept[:-1], strict=True):
        same = np.asarray(s.best) == np.asarray(before.best)
        for a, b in zip(jax.tree.leaves(s.params), jax.tree.leaves(before.params),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(a)[same], np.asarray(b)[same])
    a = np.asarray(jax.tree.leaves(kept[-1][0].params)[0])
    b = np.asarray(jax.tree.leaves(free[-1][0].params)[0])
    assert not np.allclose(a, b)  # some result was refused


def test_smpl_needs_its_sessions():
    with pytest.raises(ScenarioError, match="topology.name: smpl runs"):
        ALGORITHMS.build(
            {"name": "smpl"}, "algorithm", loss_fn=make_loss(MLP().apply),
            optimizer=local_optimizer(lr=0.1), apply_fn=MLP().apply,
            validation=validation_split(N), graph={"name": "ring"},
        )  # fmt: skip


def test_smpl_cpu_beats_chance_from_its_scenario(tmp_path):
    from workbench.runner import run

    summary = run(
        "scenarios/smpl_cpu.yaml", ["rounds=12", "eval_every=6"],
        out=str(tmp_path / "s"), progress=False,
    ).summary  # fmt: skip
    assert summary["final_mean_test_accuracy"] > 0.2 and summary["bytes_sent_total"] > 0
