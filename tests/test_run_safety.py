"""Nothing a user does loses results: run-directory safety, resume checks, messages.

Every case ends with one line and exit status 2 (or 0/130 where that is right),
no traceback, and no file of an existing run changed unless the run continued.
"""

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from rich.console import Console

import workbench.runner as runner
from tests.test_engine import TINY, rows, write_scenario
from workbench.checkpoint import latest_good, read_checkpoint, restore
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.progress import RunProgress

REPO = Path(__file__).resolve().parents[1]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (6 rounds, checkpoints at 2, 4, 6)."""
    tmp = tmp_path_factory.mktemp("finished")
    path = write_scenario(tmp)
    result = runner.run(str(path), [], out=str(tmp / "run"), progress=False)
    return result.run_dir


def interrupt_at(monkeypatch, at: int):
    """Runs stop as on Ctrl-C right after their checkpoint at round ``at``;
    returns the function that puts the runner back."""
    real_save = runner.save_checkpoint

    def killed(run_dir, round_, *args, **kwargs):
        saved = real_save(run_dir, round_, *args, **kwargs)
        if round_ == at:
            raise KeyboardInterrupt
        return saved

    monkeypatch.setattr(runner, "save_checkpoint", killed)
    return lambda: monkeypatch.setattr(runner, "save_checkpoint", real_save)


def cut_run(tmp_path, monkeypatch, at: int = 4, **changes) -> Path:
    """A tiny run killed right after its checkpoint at round ``at``."""
    path = write_scenario(tmp_path, **changes)
    restore = interrupt_at(monkeypatch, at)
    with pytest.raises(WorkbenchError, match="interrupted at round"):
        runner.run(str(path), [], out=str(tmp_path / "cut"), progress=False)
    restore()
    return tmp_path / "cut"


# ------------------------------------------------------------ 1. finished runs


def test_resume_of_a_finished_run_reports_it_and_changes_no_file(finished, capsys):
    before = snapshot(finished)
    assert main(["simulate", "--resume", str(finished), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((finished / "summary.json").read_text())
    assert f"{finished} is finished (6 rounds)" in out
    assert f"{summary['final_mean_test_accuracy']:.4f}" in out
    assert snapshot(finished) == before
    assert summary["final_mean_test_accuracy"] is not None


def test_resume_after_the_last_checkpoint_but_before_the_summary(finished, tmp_path):
    run_dir = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(finished), str(run_dir)], check=True)
    (run_dir / "summary.json").unlink()
    summary = runner.run(None, [], resume=str(run_dir), progress=False).summary
    last = rows(run_dir / "metrics.csv")[-1]
    assert [r["round"] for r in rows(run_dir / "metrics.csv")] == ["2", "4", "6"]
    assert summary["final_mean_test_accuracy"] == float(last["test_acc_mean"])
    assert summary["final_consensus_distance"] == float(last["consensus_distance"])
    assert summary["bytes_sent_total"] == float(last["bytes_sent_total"])


# ------------------------------------------------------------ 2. one run per dir

HOLDER = """
import sys, time
from pathlib import Path
from workbench.rundir import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def held(directory: Path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_second_run_on_a_held_directory_stops_naming_the_holder(tmp_path, capsys):
    path, out = write_scenario(tmp_path), tmp_path / "shared"
    out.mkdir()
    with held(out) as pid:
        code = main(["simulate", str(path), "--out", str(out), "--quiet"])
    err = one_line(capsys)
    assert code == 2
    assert f"in use by pid {pid}" in err and str(out) in err
    assert not (out / "metrics.csv").exists() and not (out / "scenario.yaml").exists()


def test_resume_of_a_running_run_stops_naming_the_holder(tmp_path, monkeypatch, capsys):
    cut = cut_run(tmp_path, monkeypatch)
    before = snapshot(cut)
    with held(cut) as pid:
        code = main(["simulate", "--resume", str(cut), "--quiet"])
    assert code == 2 and f"in use by pid {pid}" in one_line(capsys)
    after = snapshot(cut)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_lock_is_released_when_the_holder_dies(tmp_path, monkeypatch):
    cut = cut_run(tmp_path, monkeypatch)
    with held(cut):
        pass  # killed on exit: the kernel drops its flock
    summary = runner.run(None, [], resume=str(cut), progress=False).summary
    assert summary["rounds"] == 6


# ------------------------------------------------------- 3. someone else's folder


def test_out_with_foreign_files_is_refused_and_untouched(tmp_path, capsys):
    path, out = write_scenario(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "thesis numbers"}')
    assert main(["simulate", str(path), "--out", str(out), "--quiet"]) == 2
    err = one_line(capsys)
    assert "not empty (summary.json)" in err and "not a run directory" in err
    assert snapshot(out) == {"summary.json": b'{"my": "thesis numbers"}'}


def test_out_holding_a_run_points_to_resume(finished, tmp_path, capsys):
    path = write_scenario(tmp_path)
    before = snapshot(finished)
    assert main(["simulate", str(path), "--out", str(finished), "--quiet"]) == 2
    assert f"--resume {finished}" in one_line(capsys)
    assert snapshot(finished) == before


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    path, out = write_scenario(tmp_path), tmp_path / "afile"
    out.write_text("keep me")
    assert main(["simulate", str(path), "--out", str(out), "--quiet"]) == 2
    assert "is a file; expected a directory" in one_line(capsys)
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"peers": "four"}, "peers"),
        ({"data": {"name": "npz", "options": {"path": "missing.npz"}}}, "missing"),
    ],
)
def test_failed_validation_or_data_leaves_no_stray_folder(
    tmp_path, monkeypatch, capsys, changes, fragment
):
    monkeypatch.chdir(tmp_path)
    path = write_scenario(tmp_path, **changes)
    assert main(["simulate", str(path), "--quiet"]) == 2
    assert fragment in one_line(capsys)
    assert not (tmp_path / "runs").exists()
    assert main(["simulate", str(path), "--out", "new", "--quiet"]) == 2
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------ 4. resume checks its input


@pytest.mark.parametrize(
    "edit, keys",
    [
        (("lr: 0.05", "lr: 0.5"), "algorithm.lr"),
        (("seed: 1", "seed: 7"), "seed"),
        (("peers: 4", "peers: 8"), "peers"),
    ],
)
def test_resume_refuses_an_edited_scenario_naming_the_keys(
    tmp_path, monkeypatch, capsys, edit, keys
):
    cut = cut_run(tmp_path, monkeypatch)
    yaml_path = cut / "scenario.yaml"
    text = yaml_path.read_text()
    assert edit[0] in text
    yaml_path.write_text(text.replace(edit[0], edit[1]))
    before = snapshot(cut)
    assert main(["simulate", "--resume", str(cut), "--quiet"]) == 2
    err = one_line(capsys)
    assert "edited after the run started" in err and f"({keys} changed)" in err
    after = snapshot(cut)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-40] + bytes(40),  # payload bytes overwritten
        lambda b: b"",  # empty
    ],
)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, monkeypatch, capsys, damage, finished
):
    cut = cut_run(tmp_path, monkeypatch)
    latest = cut / "checkpoints" / "round_00000004.msgpack"
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == [
        "round_00000002.msgpack",
        "round_00000004.msgpack",
    ]
    latest.write_bytes(damage(latest.read_bytes()))
    assert main(["simulate", "--resume", str(cut), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "round_00000004.msgpack is unreadable" in err and "warning" in err
    assert len(err.strip().splitlines()) == 1
    # resumed from round 2: same numbers as the uninterrupted run
    full, got = rows(finished / "metrics.csv"), rows(cut / "metrics.csv")
    assert [r["round"] for r in got] == ["2", "4", "6"]
    for a, b in zip(full, got, strict=True):
        assert float(a["test_loss_mean"]) == pytest.approx(float(b["test_loss_mean"]))
    assert (cut / "checkpoints" / "round_00000004.msgpack.corrupt").is_file()


def test_every_checkpoint_corrupt_keeps_the_rows_and_says_so(
    tmp_path, monkeypatch, capsys
):
    cut = cut_run(tmp_path, monkeypatch)
    for ckpt in (cut / "checkpoints").glob("*.msgpack"):
        ckpt.write_bytes(b"garbage")
    assert main(["simulate", "--resume", str(cut), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no readable checkpoint" in err[-1] and "up to round 4" in err[-1]
    assert [r["round"] for r in rows(cut / "metrics.csv")] == ["2", "4"]


def test_checkpoint_records_the_scenario_and_its_digest(finished):
    import hashlib

    ckpt = latest_good(finished)
    assert ckpt.round == 6 and ckpt.scenario["peers"] == 4
    assert ckpt.scenario["algorithm"]["lr"] == 0.05
    raw = read_checkpoint(ckpt.path)
    assert raw.payload == ckpt.payload
    import msgpack

    record = msgpack.unpackb(ckpt.path.read_bytes())
    assert record["payload_sha256"] == hashlib.sha256(record["payload"]).hexdigest()
    # written field by field, the file is still the msgpack of its record
    assert ckpt.path.read_bytes() == msgpack.packb(record, use_bin_type=True)


def test_restore_checks_shapes_and_dtypes(finished):
    import flax.serialization

    ckpt = latest_good(finished)
    target = jax.tree.map(
        np.zeros_like, flax.serialization.msgpack_restore(ckpt.payload)
    )
    assert restore(ckpt, target)["sent"].shape == (4,)
    with pytest.raises(
        WorkbenchError, match=r"'sent'\] is float64\[4\]; expected float64\[5\]"
    ):
        restore(ckpt, {**target, "sent": np.zeros(5)})
    with pytest.raises(WorkbenchError, match=r"is float64\[4\]; expected float32\[4\]"):
        restore(ckpt, {**target, "sent": np.zeros(4, np.float32)})


def test_resume_with_no_checkpoint_and_no_rows_starts_over(tmp_path, monkeypatch):
    cut = cut_run(tmp_path, monkeypatch)
    for p in (cut / "checkpoints").iterdir():
        p.unlink()
    (cut / "metrics.csv").write_text(",".join(["round"]) + "\n")
    summary = runner.run(None, [], resume=str(cut), progress=False).summary
    assert summary["rounds"] == 6
    assert [r["round"] for r in rows(cut / "metrics.csv")] == ["2", "4", "6"]


# --------------------------------------------------------- 5. truthful messages


def test_divergence_in_the_first_chunk_says_there_is_no_checkpoint(tmp_path, capsys):
    path = write_scenario(tmp_path, algorithm={"name": "dsgd", "lr": 1e30})
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = one_line(capsys)
    assert "rounds 1-2" in err and "there is no checkpoint" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_run_directory_is_printed_when_the_run_starts(tmp_path, monkeypatch, capsys):
    path = write_scenario(tmp_path)
    seen = []
    real = runner.simulate

    def spy(*args, **kwargs):
        seen.append(capsys.readouterr().out)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "simulate", spy)
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert seen == [f"workbench: run directory {tmp_path / 'r'}\n"]


def test_progress_says_when_it_is_compiling(tmp_path, monkeypatch):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with RunProgress(10, 0, True, console) as bar:
        bar.compiling("a chunk of 2 rounds")
    assert "compiling a chunk of 2 rounds..." in buffer.getvalue()

    calls = []
    monkeypatch.setattr(RunProgress, "compiling", lambda self, what: calls.append(what))
    path = write_scenario(tmp_path)
    runner.run(str(path), [], out=str(tmp_path / "r"), progress=False)
    assert calls == ["the evaluation", "a chunk of 2 rounds"]


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path):
    path = write_scenario(tmp_path, rounds=1000, eval_every=2)
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "simulate", str(path)]
        + ["--out", str(out), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = out / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stdout.splitlines()[0] == f"workbench: run directory {out}"
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert f"continue with: workbench simulate --resume {out}" in stderr
    done = [int(r["round"]) for r in rows(out / "metrics.csv")]
    ckpt = latest_good(out)
    assert done[-1] == ckpt.round < 1000  # rows and checkpoint written together
    assert len(rows(out / "peers.csv")) == 4 * len(done)
    summary = runner.run(None, [], resume=str(out), progress=False).summary
    rounds = [int(r["round"]) for r in rows(out / "metrics.csv")]
    assert rounds == list(range(2, 1001, 2)) and summary["rounds"] == 1000


# ------------------------------------------------ 6. foreseeable failures


def test_full_disk_is_one_line_and_loses_no_row(tmp_path, monkeypatch, capsys):
    cut = cut_run(tmp_path, monkeypatch)
    (cut / "metrics.tmp").symlink_to("/dev/full")
    before = (cut / "metrics.csv").read_bytes()
    assert main(["simulate", "--resume", str(cut), "--quiet"]) == 2
    err = one_line(capsys)
    assert "No space left on device" in err and "free some space" in err
    assert (cut / "metrics.csv").read_bytes() == before


def test_unwritable_location_is_one_line(tmp_path, capsys):
    path, parent = write_scenario(tmp_path), tmp_path / "locked"
    parent.mkdir()
    subprocess.run(["chattr", "+i", str(parent)], check=True)
    try:
        code = main(["simulate", str(path), "--out", str(parent / "r"), "--quiet"])
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    assert code == 2
    err = one_line(capsys)
    assert f"cannot write {parent / 'r'}" in err and "--out" in err


def test_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    cut = cut_run(tmp_path, monkeypatch)
    before = snapshot(cut)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    code = main(["simulate", "--resume", str(cut), "--quiet"])
    monkeypatch.undo()
    assert code == 2
    err = one_line(capsys)
    assert f"cannot write {cut / 'metrics.csv'}: Read-only file system" in err
    assert "the file system is read-only" in err
    after = snapshot(cut)
    assert after["metrics.csv"] == before["metrics.csv"]


@pytest.mark.parametrize("seed", [2**32, -1])
def test_seed_outside_the_generator_range_is_one_line(tmp_path, capsys, seed):
    path = write_scenario(tmp_path, seed=seed)
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert one_line(capsys).startswith("workbench: error: seed: expected")


def test_out_of_memory_names_the_estimated_need(tmp_path, monkeypatch, capsys):
    path = write_scenario(tmp_path)

    def exhausted(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 bytes."
        )

    monkeypatch.setattr(runner, "aot", exhausted)
    assert main(["simulate", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = one_line(capsys)
    # MLP 64-16-10: 1210 float32 parameters = 4840 bytes; D-SGD with momentum keeps
    # params + momentum trace + a scalar loss + the optimizer's step size,
    # momentum and step count (optax.inject_hyperparams) = 9696 bytes per peer
    assert "out of memory" in err
    assert "4 peers x 4,840 parameter bytes x 2.00" in err and "= 37.9 KiB" in err
    assert "peers_per_chunk" in err


def test_tiny_scenario_is_what_these_tests_assume():
    assert TINY["peers"] == 4 and TINY["model"] == {"name": "mlp", "hidden": [16]}


def test_a_checkpoint_from_before_checksums_is_named_not_set_aside(
    tmp_path, monkeypatch, capsys
):
    import flax.serialization

    cut = cut_run(tmp_path, monkeypatch)
    for ckpt in (cut / "checkpoints").glob("*.msgpack"):  # the old, bare format
        ckpt.write_bytes(flax.serialization.to_bytes({"round": 4, "state": {}}))
    before = snapshot(cut)
    assert main(["simulate", "--resume", str(cut), "--quiet"]) == 2
    assert "before checkpoints carried a checksum" in one_line(capsys)
    after = snapshot(cut)
    assert {k: v for k, v in after.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_large_arrays_are_saved_in_chunks_and_restore_exactly(tmp_path, monkeypatch):
    import flax.serialization

    from workbench import checkpoint

    monkeypatch.setattr(checkpoint, "CHUNK_BYTES", 1024)
    tree = {"w": np.arange(1000, dtype=np.float32).reshape(10, 100), "b": np.ones(3)}
    path = checkpoint.save_checkpoint(tmp_path, 1, tree, {"a": 1})
    payload = read_checkpoint(path).payload
    assert payload.count(b"__msgpack_chunked_array__") == 1  # w (4000 bytes)
    zeros = jax.tree.map(np.zeros_like, tree)
    back = flax.serialization.from_bytes(zeros, payload)
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["b"], tree["b"])
    assert flax.serialization.MAX_CHUNK_SIZE == 2**30  # flax's own, put back


@pytest.mark.parametrize("size", [0, 255, 256, 65535, 65536])
def test_a_record_is_written_as_msgpack_packs_it(size):
    import msgpack

    from workbench.checkpoint import _write_map

    record = {
        "round": 3,
        "payload": bytes(range(256)) * (size // 256) + b"x" * (size % 256),
    }
    f = io.BytesIO()
    _write_map(f, record)
    assert f.getvalue() == msgpack.packb(record, use_bin_type=True)
