"""The privacy stage end to end: capture, saved messages, privacy.csv, rerun.

Every figure in privacy.csv is recomputed here from the saved messages without
the attack code's tables (a plain forward pass, optax's cross-entropy and
scikit-learn's ROC AUC), and the stage's choices (victims, rounds, attackers,
colluding sets) are checked against what the scenario asked for.
"""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from workbench.cli import main
from workbench.data.embedded import flip_labels
from workbench.engine import build
from workbench.privacy.accounting import (
    gaussian_epsilon,
    gossip_matrices,
    privacy_report,
)
from workbench.privacy.lira import lira_offline, lira_online
from workbench.privacy.messages import Record, load_all, received
from workbench.privacy.metrics import attack_metrics
from workbench.privacy.run import AttackContext, members_of, nonmembers_of, tables_of
from workbench.scenario import load_scenario

TINY = {
    "name": "tiny_privacy",
    "seed": 3,
    "peers": 4,
    "rounds": 4,
    "eval_every": 2,
    "data": {"name": "digits", "batch_size": 8, "val_fraction": 0.0},
    "model": {"name": "mlp", "hidden": [16]},
    "topology": {"name": "ring"},
    "algorithm": {"name": "dsgd", "lr": 0.1, "momentum": 0.9, "local_steps": 2},
    "privacy": {
        "victims": "all",
        "every": 2,
        "attacks": ["threshold", "threshold_balanced", "linkability"],
    },
}


def write(tmp_path, **changes):
    sc = {**TINY, **changes}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


def simulate(tmp_path, **changes) -> tuple:
    out = tmp_path / "run"
    code = main(
        ["simulate", str(write(tmp_path, **changes)), "--out", str(out), "--quiet"]
    )
    assert code == 0
    return out, rows(out / "privacy.csv")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("privacy"))


def test_rows_cover_every_victim_round_and_attack(tiny_run):
    out, table = tiny_run
    for attack in ("threshold", "threshold_balanced"):
        got = {
            (r["round"], r["victim"], r["attacker"])
            for r in table
            if r["attack"] == attack
        }
        want = {(str(r), str(v), "neighbours") for r in (2, 4) for v in range(4)}
        if attack == "threshold":
            want |= {("2", "all", "all"), ("4", "all", "all")}
        assert got == want, attack
    summary = json.loads((out / "summary.json").read_text())["privacy"]
    assert summary["victims"] == [0, 1, 2, 3]
    assert summary["attacked_rounds"] == [2, 4]
    assert summary["messages_attacked"] == 8
    assert (out / "privacy_roc.png").stat().st_size > 0
    # the plotted ROC points: their area is the pooled AUC of the last round
    points = rows(out / "privacy_roc.csv")
    assert {p["attack"] for p in points} >= {"threshold"}
    for attack in {p["attack"] for p in points}:
        fpr = np.array([float(p["fpr"]) for p in points if p["attack"] == attack])
        tpr = np.array([float(p["tpr"]) for p in points if p["attack"] == attack])
        pooled = [r for r in table if r["attack"] == attack and r["round"] == "4"
                  and r["victim"] == "all" and not r.get("class")]  # fmt: skip
        assert np.trapezoid(tpr, fpr) == pytest.approx(float(pooled[0]["auc"]))


def _losses(sim, model, idx):
    """Cross-entropy of one message on pool examples idx, by a plain forward pass."""
    pool = sim.attacker.pool
    logits = sim.attacker.apply_fn(model, pool.x[idx])
    return np.asarray(
        optax.softmax_cross_entropy_with_integer_labels(logits, pool.y[idx])
    )


def test_threshold_figures_recomputed_from_saved_messages(tiny_run):
    out, table = tiny_run
    sim = build(load_scenario(out / "scenario.yaml"))
    pool = sim.attacker.pool
    msgs = received(load_all(out)[-1])  # the round-4 record
    assert sorted(set(msgs.round)) == [4]
    test = np.flatnonzero((pool.owner < 0) & pool.valid)
    ins, outs = [], []
    for i, v in enumerate(msgs.victim):
        model = jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), msgs.model)
        train = np.flatnonzero((pool.owner == v) & pool.valid)
        assert train.size == int(sim.data.size[v])  # every training example
        a, b = -_losses(sim, model, train), -_losses(sim, model, test)
        ins.append(a)
        outs.append(b)
        (r,) = [
            r
            for r in table
            if r["attack"] == "threshold"
            and r["round"] == "4"
            and r["victim"] == str(v)
        ]
        labels = np.r_[np.ones(a.size), np.zeros(b.size)]
        auc = roc_auc_score(labels, np.r_[a, b])
        assert float(r["auc"]) == pytest.approx(auc, abs=1e-6)
        assert int(r["members"]) == a.size and int(r["nonmembers"]) == b.size
    (pooled,) = [
        r
        for r in table
        if r["attack"] == "threshold" and r["round"] == "4" and r["victim"] == "all"
    ]
    a, b = np.concatenate(ins), np.concatenate(outs)
    auc = roc_auc_score(np.r_[np.ones(a.size), np.zeros(b.size)], np.r_[a, b])
    assert float(pooled["auc"]) == pytest.approx(auc, abs=1e-6)
    assert int(pooled["members"]) == a.size


def test_linkability_ranks_sources_by_mean_training_loss(tiny_run):
    out, table = tiny_run
    sim = build(load_scenario(out / "scenario.yaml"))
    pool = sim.attacker.pool
    msgs = received(load_all(out)[0])
    ranks = []
    for i, v in enumerate(msgs.victim):
        model = jax.tree.map(lambda x, i=i: jnp.asarray(x[i]), msgs.model)
        mean = [
            _losses(sim, model, np.flatnonzero((pool.owner == p) & pool.valid)).mean()
            for p in range(4)
        ]
        ranks.append(1 + int(np.sum(np.asarray(mean) < mean[v])))
    (pooled,) = [
        r
        for r in table
        if r["attack"] == "linkability" and r["round"] == "2" and r["victim"] == "all"
    ]
    assert float(pooled["top1"]) == pytest.approx(np.mean(np.asarray(ranks) == 1))
    assert float(pooled["mean_rank"]) == pytest.approx(np.mean(ranks))
    assert float(pooled["top5"]) == 1.0  # 4 peers: the source is always in the top 5


def test_privacy_command_reproduces_and_adds_attacks(tiny_run, tmp_path, capsys):
    out, table = tiny_run
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(out, run)
    assert main(["privacy", str(run)]) == 0
    assert rows(run / "privacy.csv") == table
    points = rows(run / "privacy_roc.csv")
    assert points == rows(out / "privacy_roc.csv")
    # another attack adds its rows; the scenario's attacks keep theirs
    assert main(["privacy", str(run), "--attack", "threshold_class"]) == 0
    again = rows(run / "privacy.csv")
    assert [r for r in again if r["attack"] != "threshold_class"] == table
    kept = rows(run / "privacy_roc.csv")  # and their ROC points
    assert [p for p in kept if p["attack"] != "threshold_class"] == points
    per_class = [r for r in again if r["attack"] == "threshold_class"]
    assert {(r["round"], r["class"]) for r in per_class} == {
        (str(r), str(c)) for r in (2, 4) for c in range(10)
    }
    capsys.readouterr()


def first_record_context(tiny_run):
    """(attacker, messages, tables, AttackContext) of the tiny run's round 2."""
    out, _ = tiny_run
    att = build(load_scenario(out / "scenario.yaml")).attacker
    msgs = att.messages(load_all(out)[:1])
    tables = tables_of(att.apply_fn, jax.tree.map(np.asarray, msgs.model), att.pool)
    ctx = AttackContext(
        msgs,
        att.pool,
        tables,
        att.num_peers,
        att.num_classes,
        att.seed,
        att.apply_fn,
        att.init_fn,
        att.train,
        {},
        att.runs,
        att.receive,
    )
    return att, msgs, tables, ctx


def test_lira_rows_are_the_statistic_on_the_runs_shadows(tiny_run):
    """The attack's per-message AUC is lira_online on its own shadows' phi."""
    from workbench.privacy import reference_attacks as ra

    att, msgs, tables, ctx = first_record_context(tiny_run)
    result = ra.lira(ctx, shadows=4, steps=5)
    sh = ctx.cache[("shadows", 4, 5)]
    assert sh.in_mask[:, att.pool.valid].sum(0).tolist() == [2] * att.pool.valid.sum()
    fixed = {"fixed_variance": True}
    for variant, stat, kw in (
        ("lira", lira_online, {}),
        ("lira_offline", lira_offline, {}),
        ("lira", lira_online, fixed),  # one variance pooled over the real examples
    ):
        if variant == "lira" and not kw:
            res = result
        else:
            off = {"variant": "offline"} if variant == "lira_offline" else {}
            res = ra.lira(ctx, shadows=4, steps=5, **off, **kw)
        valid = att.pool.valid
        i = 1
        s = np.full(valid.size, np.nan)
        s[valid] = stat(
            jnp.asarray(tables.phi[i][valid]),
            jnp.asarray(sh.phi[:, valid]),
            jnp.asarray(sh.in_mask[:, valid]),
            **kw,
        )
        want = attack_metrics(s[members_of(ctx, i)], s[nonmembers_of(ctx)])
        (r,) = [r for r in res.rows if r["victim"] == int(msgs.victim[i])]
        assert r["attack"] == variant
        assert r["auc"] == pytest.approx(want["auc"], abs=1e-9)
    # RMIA by hand: the fraction of test examples z that x dominates
    z, i = nonmembers_of(ctx), 2
    inside, members = sh.in_mask, members_of(ctx, i)
    p_t = tables.p_true[i].astype(np.float64)
    out_p = np.where(inside, 0.0, sh.p_true).astype(np.float64)
    mean_out = out_p.sum(0) / (~inside).sum(0)
    for variant, marginal in (
        ("online", sh.p_true.astype(np.float64).mean(0)),
        ("offline", 0.65 * mean_out + 0.35),  # a = 0.3
    ):
        ratio = p_t / marginal
        score = (ratio[:, None] > ratio[None, z]).mean(1)
        want = attack_metrics(score[members], score[z])
        res = ra.rmia(ctx, variant=variant, shadows=4, steps=5)
        (r,) = [r for r in res.rows if r["victim"] == int(msgs.victim[i])]
        assert r["auc"] == pytest.approx(want["auc"], abs=2e-3), variant
    # default steps: the passes over its data a peer had made by then
    half = att.pool.valid.sum() / 2
    per_peer = (att.pool.valid & (att.pool.owner >= 0)).sum() / 4
    assert ra.shadow_steps(ctx, 2, None) == int(np.ceil(2 * 2 * half / per_peer))


def test_capture_keeps_only_the_requested_victims_and_rounds(tmp_path):
    privacy = {"victims": [1, 3], "at": [1, 3], "attacks": ["threshold"]}
    out, table = simulate(tmp_path, privacy=privacy)
    records = load_all(out)
    got = {
        (int(r) + 1, int(v))
        for rec in records
        for r in rec.rounds
        if r >= 0
        for v in rec.victims
    }
    assert got == {(1, 1), (1, 3), (3, 1), (3, 3)}
    assert {(r["round"], r["victim"]) for r in table} == {
        (r, v) for r in ("1", "3") for v in ("1", "3", "all")
    }


def test_per_edge_attackers_are_the_neighbours_and_sets_pool_by_weight():
    """ZeroSum sends one message per edge: each receiver is its own attacker;
    a colluding set sees the W-weighted mean of what its members got."""
    rng = np.random.default_rng(0)
    model = {"w": rng.normal(size=(1, 2, 2, 3))}  # (slots, victims, k - 1, ...)
    rec = Record(
        rounds=np.asarray([4]),
        sent=np.asarray([[True, True]]),
        victims=np.asarray([0, 2]),
        model=model,
        per_edge=True,
        receivers=np.asarray([[[1, 3], [1, 3]]]),
        weights=np.asarray([[[0.25, 0.5], [0.2, 0.6]]]),
    )
    got = received(rec, colluding=[(1, 3), (3,)])
    assert got.attacker == ["peer 1", "peer 3", "set 0", "set 1"] * 2
    assert got.round.tolist() == [5] * 8
    assert got.victim.tolist() == [0] * 4 + [2] * 4
    w = model["w"][0]
    np.testing.assert_allclose(got.model["w"][0], w[0, 0])
    np.testing.assert_allclose(
        got.model["w"][2], (0.25 * w[0, 0] + 0.5 * w[0, 1]) / 0.75
    )
    np.testing.assert_allclose(got.model["w"][3], w[0, 1])
    np.testing.assert_allclose(got.model["w"][6], (0.2 * w[1, 0] + 0.6 * w[1, 1]) / 0.8)


@pytest.mark.parametrize(
    ("privacy", "fragment"),
    [
        ({"victims": [9]}, "privacy.victims: peer 9 does not exist (peers: 4)"),
        ({"at": [9]}, "privacy.at: round 9 is past the last round (4)"),
        ({"attacks": ["threshhold"]}, "did you mean 'threshold'"),
        ({"attacks": [{"name": "lira", "shadows": 3}]}, "privacy.attacks[0].shadows"),
        ({"every": 2, "at": [1]}, "either 'every' or 'at'"),
        ({"delta": 2}, "privacy.delta"),
        ({"colluding": [[0, 7]]}, "privacy.colluding[0]: expected peers in 0..3"),
    ],
)
def test_bad_privacy_sections_are_one_line(tmp_path, capsys, privacy, fragment):
    code = main(
        [
            "simulate",
            str(write(tmp_path, privacy=privacy)),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and "\n" not in err, err


def test_non_model_messages_are_refused_in_one_line(tmp_path, capsys):
    alg = {"name": "gradient_tracking", "lr": 0.05}
    path = write(tmp_path, algorithm=alg)
    code = main(["simulate", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "messages are not its model" in err


def test_accounting_files_match_the_accountants(tmp_path):
    dp = {
        "name": "dpsgd",
        "clip": 1.0,
        "noise_multiplier": 1.5,
        "local_steps": 2,
        "lr": 0.1,
    }
    out, _ = simulate(tmp_path / "dp", algorithm=dp)
    report = json.loads((out / "privacy_accounting.json").read_text())
    sim = build(load_scenario(out / "scenario.yaml"))
    rate = 8 / int(np.min(sim.data.size))
    assert report["sampling_rate"] == pytest.approx(rate)
    assert report["steps"] == 4 * 2
    assert report["epsilon"] == pytest.approx(gaussian_epsilon(1.5, 8, 1e-5, rate))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["accounting"] == report

    muff = {
        "name": "muffliato",
        "sigma": 2.0,
        "gossip_steps": 3,
        "lr": 0.1,
        "acceleration": "chebyshev",
    }
    # the others from the built simulation (the runner writes what this returns)
    from workbench.privacy.guarantees import accounting

    privacy = {**TINY["privacy"], "delta": 1e-6, "sensitivity": 0.5}
    sc = load_scenario(write(tmp_path / "muff", algorithm=muff, privacy=privacy))
    sim = build(sc)
    report = accounting(sim)
    omegas = sim.spec.algorithm.privacy["omegas"]
    assert omegas[0] == 1.0 and len(omegas) == 3 and omegas[1] != 1.0
    W = sim.topology.W
    want = privacy_report(W, 2.0, 3, 4, 1e-6, 0.5, omegas=omegas)
    for key in ("edges", "non_edges", "local_epsilon", "delta", "sensitivity"):
        assert report[key] == pytest.approx(want[key]), key
    # the constant-omega recursion differs from plain gossip
    plain = gossip_matrices(W, 3)[-1]
    assert not np.allclose(gossip_matrices(W, 3, omegas=omegas)[-1], plain)

    zs = {"name": "zerosum", "sigma": 0.1, "lr": 0.1}
    report = accounting(build(load_scenario(write(tmp_path / "zs", algorithm=zs))))
    assert report["epsilon"] is None and report["sigma"] == 0.1
    dsgd = load_scenario(write(tmp_path / "none"))
    assert accounting(build(dsgd)) is None


def test_label_noise_flips_exactly_that_fraction_to_other_classes():
    y = np.random.default_rng(0).integers(0, 10, size=1000)
    for frac in (0.0, 0.2, 0.55):
        flipped = flip_labels(y, frac, 10, seed=4)
        changed = flipped != y
        assert changed.sum() == round(frac * y.size)
        assert flipped.min() >= 0 and flipped.max() <= 9
    np.testing.assert_array_equal(
        flip_labels(y, 0.2, 10, 4), flip_labels(y, 0.2, 10, 4)
    )


def _fake_run(path, algorithm, accuracy, auc):
    path.mkdir(parents=True)
    (path / "scenario.yaml").write_text(yaml.safe_dump({"algorithm": algorithm}))
    (path / "summary.json").write_text(
        json.dumps({"final_mean_test_accuracy": accuracy})
    )
    fields = ["round", "victim", "attacker", "attack", "class", "auc"]
    with open(path / "privacy.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerow(
            {
                "round": 2,
                "victim": "all",
                "attacker": "all",
                "attack": "threshold",
                "class": "",
                "auc": 0.99,
            }
        )  # an earlier round: not read
        w.writerow(
            {
                "round": 4,
                "victim": 0,
                "attacker": "neighbours",
                "attack": "threshold",
                "class": "",
                "auc": 0.98,
            }
        )  # one message
        w.writerow(
            {
                "round": 4,
                "victim": "all",
                "attacker": "all",
                "attack": "threshold",
                "class": 3,
                "auc": 0.97,
            }
        )  # one class
        w.writerow(
            {
                "round": 4,
                "victim": "all",
                "attacker": "all",
                "attack": "threshold",
                "class": "",
                "auc": auc,
            }
        )


def test_privacy_utility_table_is_mean_and_std_over_seeds(tmp_path, capsys):
    from paper_figures.privacy_utility import main as figure

    zs = {"name": "zerosum", "sigma": 0.1}
    _fake_run(tmp_path / "a", zs, 0.6, 0.7)
    _fake_run(tmp_path / "b", zs, 0.8, 0.5)
    _fake_run(tmp_path / "c", {"name": "dsgd"}, 0.9, 0.8)
    runs = [str(tmp_path / r) for r in "abc"]
    assert figure([*runs, "-o", str(tmp_path / "f.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith(
        "| zerosum sigma=0.1 | 2 | 0.700 ± 0.100 | 0.600 ± 0.100 |"
    )
    assert lines[3].startswith("| dsgd | 1 | 0.900 ± 0.000 | 0.800 ± 0.000 |")
    assert (tmp_path / "f.png").stat().st_size > 0


@pytest.mark.parametrize("variant", ["decentralizepy", "paper"])
def test_marginalized_attacker_recovers_the_victims_own_model(tmp_path, variant):
    """Knowing W and the step-0 messages, the attacker inverts the victim's
    step-1 message: with noise only on what is sent (decentralizepy) that is
    the noiseless model the victim kept; else its own noisy step-0 message."""
    from workbench.privacy.messages import marginalized

    alg = {
        "name": "muffliato",
        "sigma": 0.5,
        "gossip_steps": 3,
        "lr": 0.1,
        "variant": variant,
    }
    privacy = {"victims": "all", "at": [2], "marginalized": True}
    sc = load_scenario(write(tmp_path, algorithm=alg, privacy=privacy, rounds=2))
    sim = build(sc)
    state, _, captured = sim.chunk(
        sim.state, sim.data, sim.topology.data, sim.weights, jnp.int32(0), length=2
    )
    rec = sim.attacker.record(captured)
    assert rec.second is not None and rec.rounds.tolist() == [1]
    for c, v in enumerate(rec.victims):
        got = marginalized(rec, 0, c)
        sent = jax.tree.map(lambda x, c=c: x[0, c], rec.model)
        if variant == "decentralizepy":  # the noise of round 2's first message
            want = jax.tree.map(lambda m, z, v=v: m - z[v], sent, state.noise)
            far = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), got, sent)
            assert max(jax.tree.leaves(far)) > 0.1  # not the noisy message
        else:
            want = sent
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got, want
        )
    got = received(rec, marginal=True)
    assert got.attacker == ["marginalized", "neighbours"] * 4


def test_marginalized_needs_multi_step_gossip_and_every_victim(tmp_path, capsys):
    for changes, fragment in [
        ({"privacy": {"marginalized": True}}, "'dsgd' sends one averaged message"),
        (
            {
                "privacy": {"marginalized": True, "victims": [0]},
                "algorithm": {
                    "name": "muffliato",
                    "sigma": 0.1,
                    "gossip_steps": 2,
                    "lr": 0.1,
                },
            },
            "use victims: all",
        ),
        (
            {
                "privacy": {"marginalized": True},
                "algorithm": {
                    "name": "muffliato",
                    "sigma": 0.1,
                    "gossip_steps": 2,
                    "lr": 0.1,
                },
                "topology": {"name": "random_matching"},
            },
            "changes every round",
        ),
    ]:
        code = main(
            [
                "simulate",
                str(write(tmp_path, **changes)),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and fragment in err and "\n" not in err, err


RUNS = {"name": "lira", "shadow": "runs", "shadows": 4}


def test_shadow_runs_replay_the_real_run_and_rerun_identically(tmp_path):
    """A shadow run given the real data, state and seed sends the real (noisy,
    per-edge) messages; the runs advanced chunk by chunk in the run equal a
    replay from round 0; colluding sets have shadow counterparts; and each
    shadow run has a seed of its own (never the target's: it would share the
    defense's noise)."""
    from workbench.privacy import shadow_runs

    seeds = np.asarray(shadow_runs.shadow_seeds(3, 8))
    assert 3 not in seeds and len(set(seeds.tolist())) == 8
    alg = {"name": "zerosum", "sigma": 0.1, "lr": 0.1}
    privacy = {
        **TINY["privacy"],
        "colluding": [[1, 3]],
        "attacks": [{**RUNS, "name": "rmia", "shadows": 2}],
    }
    out, table = simulate(tmp_path, algorithm=alg, privacy=privacy)
    pooled = {r["attacker"] for r in table if r["victim"] == "all"}
    assert pooled == {"all", "set 0"}
    assert {r["attacker"] for r in table if r["victim"] == "0"} == {
        "peer 1",
        "peer 3",
        "set 0",
    }
    sim = build(load_scenario(out / "scenario.yaml"))
    setup = sim.attacker.runs
    one = jax.tree.map(lambda x: x[None], sim.state)
    data = jax.tree.map(lambda x: jnp.asarray(x)[None], setup.data)
    seeds = jnp.asarray([sim.scenario.seed], jnp.int32)  # the run's own seed
    _, bufs = shadow_runs.advance(setup, one, data, seeds, 0, 4)
    saved = load_all(out)
    for buf, rec in zip(bufs, saved, strict=True):
        got = sim.attacker.record(jax.tree.map(lambda a: a[0], buf))
        np.testing.assert_array_equal(got.rounds, rec.rounds)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
            got.model,
            rec.model,
        )
    run = tmp_path / "again"
    import shutil

    shutil.copytree(out, run)
    assert main(["privacy", str(run)]) == 0
    assert rows(run / "privacy.csv") == table
    assert {r["attack"] for r in table} == {"rmia_runs"}


def test_shadow_run_candidates_are_in_exactly_half_the_runs(tiny_run):
    from workbench.privacy import reference_attacks as ra
    from workbench.privacy import shadow_runs

    att, msgs, tables, ctx = first_record_context(tiny_run)
    cands = shadow_runs.candidates(ctx)
    runs = shadow_runs.shadow_messages(ctx, 2, att.receive)
    for p in range(4):
        both = np.concatenate([cands.members[p], cands.outsiders[p]])
        assert runs.in_mask[:, both, p].sum(0).tolist() == [1] * both.size
        assert runs.in_mask[:, :, p].sum() == both.size  # nothing else
        assert np.all(att.pool.owner[cands.outsiders[p]] < 0)  # test examples
    # the attack's row is lira_online on the message's candidates
    result = ra.lira(ctx, shadow="runs", shadows=2)
    i = 3
    target, stats, inside, mem, outs = shadow_runs.message_view(ctx, runs, i, "phi")
    s = np.asarray(
        lira_online(jnp.asarray(target), jnp.asarray(stats), jnp.asarray(inside))
    )
    want = attack_metrics(s[mem], s[outs])
    (r,) = [r for r in result.rows if r["victim"] == int(msgs.victim[i])]
    assert r["auc"] == pytest.approx(want["auc"], abs=1e-9)
    assert r["nonmembers"] == r["members"] == mem.size


def test_marginalized_messages_are_pooled_apart(tmp_path):
    alg = {
        "name": "muffliato",
        "sigma": 0.3,
        "gossip_steps": 2,
        "lr": 0.1,
        "variant": "decentralizepy",
    }
    privacy = {
        "victims": "all",
        "at": [4],
        "marginalized": True,
        "attacks": ["threshold", "linkability"],
    }
    out, table = simulate(tmp_path, algorithm=alg, privacy=privacy)
    for attack in ("threshold", "linkability"):
        pooled = {
            r["attacker"]
            for r in table
            if r["attack"] == attack and r["victim"] == "all"
        }
        assert pooled == {"all", "marginalized"}, attack
    thr = [r for r in table if r["attack"] == "threshold"]
    for kind, label in (("all", "neighbours"), ("marginalized", "marginalized")):
        (p,) = [r for r in thr if r["victim"] == "all" and r["attacker"] == kind]
        single = [r for r in thr if r["attacker"] == label and r["victim"] != "all"]
        assert len(single) == 4
        assert int(p["members"]) == sum(int(r["members"]) for r in single)
