"""``strategy: auto``: the cost model, and timing (candidates, when tuning pays,
the pick, the run)."""

import json

import jax
import pytest

from tests.test_engine import TINY, rows, write_scenario
from tests.test_run_safety import cut_run
from workbench import execution, planner, runner, tuning
from workbench.execution import (
    ACTIVATION_RATIO,
    ACTIVATION_TRAFFIC,
    StepCost,
    default_strategy,
    peer_step_cost,
)
from workbench.models import build_model, init_params
from workbench.objective import make_loss
from workbench.planner import (
    DEVICE_SHARE,
    GIB,
    device_memory,
    memory_budget,
    resident_bytes,
)
from workbench.tuning import Trial, Tuning, pick, tuning_candidates, worth_tuning

VMAP, MAP1, MAP4 = ("vmap", None), ("map", 1), ("map", 4)


def programs(summary) -> int:
    """Chunk programs a run compiled or loaded from the persistent cache."""
    return summary["compilations"] + summary["cached_compilations"]


def test_candidates_by_peer_count():
    assert tuning_candidates(1) == [VMAP]
    assert tuning_candidates(4) == [VMAP, MAP1]
    assert tuning_candidates(16) == [VMAP, MAP4, MAP1, ("unroll", 4)]
    assert tuning_candidates(256) == [
        VMAP,
        ("map", 64),
        ("map", 16),
        MAP4,
        MAP1,
        ("unroll", 64),
    ]


def test_tuning_pays_only_when_compiles_are_a_tenth_of_the_training_left():
    # 3 trials x 2 s of compile = 6 s against 10% of 1 s x chunks left
    assert worth_tuning(3, 2.0, 1.0, 60)
    assert not worth_tuning(3, 2.0, 1.0, 59)
    assert not worth_tuning(3, 0.0, 1.0, 3)  # no chunk left for the winner
    assert worth_tuning(3, 0.0, 1.0, 4)
    assert not worth_tuning(0, 0.0, 1.0, 100)


def trial(strategy, seconds, nbytes, skipped=None):
    return Trial(strategy, seconds, 1.0, nbytes, skipped)


def test_pick_is_the_fastest_and_within_5_percent_the_smallest():
    assert pick([trial(VMAP, 1.0, 9), trial(MAP4, 0.5, 9)]).strategy == MAP4
    close = [trial(VMAP, 1.0, 900), trial(MAP4, 1.04, 100), trial(MAP1, 1.06, 50)]
    assert pick(close).strategy == MAP4
    skipped = [trial(VMAP, 1.0, 9), trial(MAP1, None, 1, "over the memory budget")]
    assert pick(skipped).strategy == VMAP


def test_tuning_runs_each_candidate_once_then_the_pick():
    t = Tuning(VMAP, "default", open=True)
    assert t.next_strategy() == VMAP and not t.done
    t.first_chunk(trial(VMAP, 1.0, 9), [VMAP, MAP4, MAP1], 1.0, 100)
    assert t.next_strategy() == MAP4
    t.record(trial(MAP4, 0.4, 5))
    assert t.next_strategy() == MAP1 and not t.done
    t.record(trial(MAP1, 0.6, 3))
    assert t.done and t.strategy == MAP4 and t.chosen_by == "timing"
    again = Tuning.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.strategy == MAP4 and again.trials == t.trials and again.done
    assert again.to_dict() == {**t.to_dict(), "resumed": True}


def test_tuning_that_does_not_pay_keeps_the_default():
    t = Tuning(VMAP, "default", open=True)
    t.first_chunk(trial(VMAP, 1.0, 9), [VMAP, MAP1], 1.0, 5)  # compile 1 s > 0.5 s
    assert t.done and t.next_strategy() == VMAP and t.chosen_by == "default"


def test_default_budget_is_90_percent_of_the_device_less_what_is_held(monkeypatch):
    total = device_memory()
    assert 2**30 < total < 2**50
    assert 2**20 < resident_bytes() < total
    monkeypatch.setattr(planner, "resident_bytes", lambda: 3 * 2**30)
    budget = memory_budget(None)
    assert budget.bytes == int(DEVICE_SHARE * total) - 3 * 2**30
    assert (
        not budget.explicit and "less the 3.0 GiB this process holds" in budget.source
    )
    assert memory_budget(1.5).bytes == int(1.5 * GIB)
    assert memory_budget(1.5).source == "execution.memory_budget = 1.5 GiB"


LONG = {**TINY, "peers": 8, "rounds": 14}  # 7 chunks of 2 rounds


def test_a_tuned_run_times_every_candidate_and_keeps_the_fastest(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "COMPILE_SHARE", 1e9)  # tuning always pays
    path = write_scenario(tmp_path, **LONG)
    out = tmp_path / "tuned"
    summary = runner.run(str(path), [], out=str(out), progress=False).summary
    execution = summary["execution"]
    trials = execution["trials"]
    tried = [(t["strategy"], t["peers_per_chunk"]) for t in trials]
    assert tried == tuning_candidates(8) == [VMAP, MAP4, MAP1, ("unroll", 2)]
    assert all(t["seconds_per_round"] > 0 and t["compile_seconds"] > 0 for t in trials)
    assert all(t["estimate_bytes"] > 0 for t in trials)
    # the trials are 4 of the run's 7 chunks of 2 rounds: part of its training time
    trial_seconds = sum(2 * t["seconds_per_round"] for t in trials)
    assert trial_seconds < summary["train_seconds"]
    best = pick(
        [
            trial(s, t["seconds_per_round"], t["estimate_bytes"])
            for s, t in zip(tried, trials, strict=True)
        ]
    )
    assert (execution["strategy"], execution["peers_per_chunk"]) == best.strategy
    assert execution["chosen_by"] == "timing"
    assert json.loads((out / "execution.json").read_text()) == execution
    assert programs(summary) == 4  # evaluation and vmap, then 3 chunks
    assert [int(r["round"]) for r in rows(out / "metrics.csv")] == list(range(2, 15, 2))

    monkeypatch.setattr(tuning, "COMPILE_SHARE", 0.1)
    pinned = write_scenario(tmp_path, **LONG, execution={"strategy": "vmap"})
    plain = runner.run(str(pinned), [], out=str(tmp_path / "vmap"), progress=False)
    assert plain.summary["execution"] == {
        "strategy": "vmap",
        "peers_per_chunk": None,
        "chosen_by": "scenario",
        "trials": [],
    }
    for a, b in zip(
        rows(out / "metrics.csv"), rows(tmp_path / "vmap" / "metrics.csv"), strict=True
    ):
        for key in ("test_acc_mean", "test_loss_mean", "consensus_distance"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-7)


def test_a_short_run_does_not_tune(tmp_path):
    path = write_scenario(tmp_path, **LONG)
    summary = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    execution = summary["execution"]
    assert execution["chosen_by"] == "default" and execution["strategy"] == "vmap"
    (only,) = execution["trials"]
    assert only["strategy"] == "vmap" and only["seconds_per_round"] > 0
    assert programs(summary) == 1
    budget = summary["memory"]["budget_bytes"]  # less what the process held then
    held = DEVICE_SHARE * device_memory() - budget
    assert 0 < held <= summary["memory"]["peak_rss_bytes"]


def test_a_resumed_run_keeps_the_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "COMPILE_SHARE", 1e9)
    monkeypatch.setattr(tuning, "pick", lambda trials: trials[1])  # map x1
    out = cut_run(tmp_path, monkeypatch, 12, **{**LONG, "peers": 4})  # vmap, map x1
    saved = json.loads((out / "execution.json").read_text())
    assert (saved["strategy"], saved["peers_per_chunk"]) == MAP1
    summary = runner.run(None, [], resume=str(out), progress=False).summary
    assert summary["execution"] == {**saved, "resumed": True}
    assert programs(summary) == 1  # the evaluation and map x1 only


def test_no_tuning_without_a_chunk_left_for_the_winner(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "COMPILE_SHARE", 1e9)  # compile cost no object
    # 4 chunks: after the default's, 3 are left for 3 trials and none for a winner
    path = write_scenario(tmp_path, **{**LONG, "rounds": 8})
    summary = runner.run(str(path), [], out=str(tmp_path / "r"), progress=False).summary
    assert summary["execution"]["chosen_by"] == "default"
    assert len(summary["execution"]["trials"]) == 1
    assert programs(summary) == 1


def test_cost_model_runs_activation_heavy_steps_peer_by_peer_on_a_cpu():
    at = ACTIVATION_TRAFFIC
    heavy = StepCost(traffic=at, params=at // ACTIVATION_RATIO)
    assert default_strategy("cpu", 16, heavy) == MAP1
    assert default_strategy("gpu", 16, heavy) == VMAP  # an accelerator: vmap
    assert default_strategy("cpu", 1, heavy) == VMAP
    assert default_strategy("cpu", 16, None) == VMAP
    little = StepCost(traffic=at - 1, params=1)  # fits the caches
    weights = heavy._replace(params=heavy.params + 1)  # mostly weight traffic
    assert default_strategy("cpu", 16, little) == VMAP
    assert default_strategy("cpu", 16, weights) == VMAP


def _step_cost(model: dict, shape, classes: int) -> StepCost:
    net = build_model(model, classes, shape)
    params = init_params(net, shape, jax.random.key(0))
    loss = make_loss(lambda p, x: net.apply({"params": p}, x))
    return peer_step_cost(loss, params, shape, 32)


def test_step_cost_tells_the_femnist_cnn_from_an_mlp():
    cnn = _step_cost({"name": "cnn"}, (28, 28, 1), 62)
    mlp = _step_cost({"name": "mlp", "hidden": [2048, 2048]}, (28, 28, 1), 10)
    assert cnn.params == 4 * 1_690_046  # the FEMNIST CNN's parameters, float32
    assert mlp.params == 4 * (785 * 2048 + 2049 * 2048 + 2049 * 10)
    assert cnn.activation_heavy and not mlp.activation_heavy
    # XLA's traffic of the CNN's gradient: at least its patches (32 examples x
    # 14 x 14 positions x 5 x 5 x 32 inputs, float32) written and read
    assert cnn.traffic > 2 * 32 * 14 * 14 * 800 * 4


def test_a_cost_model_choice_is_kept_without_trials(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "COMPILE_SHARE", 1e9)  # timing would pay
    monkeypatch.setattr(execution, "ACTIVATION_TRAFFIC", 0)  # every step heavy
    monkeypatch.setattr(execution, "ACTIVATION_RATIO", 0)
    path = write_scenario(tmp_path, **LONG)
    out = tmp_path / "heavy"
    summary = runner.run(str(path), [], out=str(out), progress=False).summary
    assert summary["execution"] == {
        "strategy": "map",
        "peers_per_chunk": 1,
        "chosen_by": "cost model",
        "trials": [],
    }
    pinned = write_scenario(tmp_path, **LONG, execution={"strategy": "vmap"})
    runner.run(str(pinned), [], out=str(tmp_path / "vmap"), progress=False)
    for a, b in zip(
        rows(out / "metrics.csv"), rows(tmp_path / "vmap" / "metrics.csv"), strict=True
    ):
        for key in ("test_acc_mean", "test_loss_mean", "consensus_distance"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-7)
