"""Runs survive faults: kill -9, a second training in the same folder, a full or read-only disk. Real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from app_session import open_app, texts
from conftest import UNDER_CI, make_jpeg

from core import config
from core.config import WriteError, atomic_write
from core.jobs import TrainingBusy, TrainingManager
from core.runs import INTERRUPTED, RUNNING, RunStore, TrainingInProgress, process_alive, this_process
from core.settings import TrainConfig

# Small enough to start training seconds after TensorFlow loads, long enough to be killed mid-run.
# Far longer than any test waits for it (500 epochs once ended on a fast CPU before the test stopped it): each test
# ends the run itself, once it has seen what it waits for.
LONG_RUN = ("--limit", "60", "--epochs", "100000", "--seed", "3")


def cli_env(runs: Path, data: Path) -> dict:
    return {
        **os.environ,
        "CVD_RUNS_DIR": str(runs),
        "CVD_DATA_DIR": str(data),
        "CVD_MODELS_DIR": str(data / "no-models"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def start_cli(env: dict, *args, log: Path) -> subprocess.Popen:
    with open(log, "w") as err:  # the child keeps its own handle
        return subprocess.Popen(
            [sys.executable, "-m", "core", *map(str, args)],
            cwd=config.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def wait_for(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 300):
    """Poll condition() until it returns something truthy; fail early if the process ends first."""
    deadline = time.time() + timeout
    while not (found := condition()):
        assert proc.poll() is None, f"the training ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {what} after {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    return found


def end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def one_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "run.json").is_file()] if runs.is_dir() else []
    return found[0] if len(found) == 1 else None


def holder_script(runs: Path) -> str:
    # Another process that claims the runs folder and records a run in progress, as a training does, then waits.
    return textwrap.dedent(
        f"""
        import sys
        from core.runs import RunStore
        store = RunStore({str(runs)!r})
        lock = store.claim_training()
        run = store.begin("seed", {{"preset": "seed"}})
        print(run.id, flush=True)
        sys.stdin.read()
        """
    )


@pytest.fixture
def other_process(tmp_path):
    """A real second process holding tmp_path/runs like a training does; yields (runs folder, its run id)."""
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-c", holder_script(runs)],
        cwd=config.ROOT,
        env={**os.environ, "PYTHONPATH": str(config.ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    run_id = proc.stdout.readline().strip()
    assert run_id, "the lock holder did not start"
    yield runs, run_id, proc
    end(proc)


def _run_json(root: Path, name: str, **meta) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"id": name, **meta}))
    return path


def test_a_running_run_is_interrupted_once_its_process_is_gone_or_its_pid_reused(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os, psutil; print(os.getpid(), psutil.Process().create_time())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone_pid, gone_started = gone.stdout.split()
    me = this_process()
    assert me["pid"] == os.getpid() and me["host"] == socket.gethostname()
    _run_json(tmp_path, "20260101-000000-seed-live", status=RUNNING, **me)
    _run_json(tmp_path, "20260102-000000-seed-dead", status=RUNNING, pid=int(gone_pid), host=me["host"],
              process_started=float(gone_started))  # fmt: skip
    # This process's pid, but a start time that is not ours: the pid was reused by another process.
    _run_json(tmp_path, "20260103-000000-seed-reus", status=RUNNING, **{**me, "process_started": 1.0})
    _run_json(tmp_path, "20260104-000000-seed-away", status=RUNNING, **{**me, "host": "another-host"})
    _run_json(tmp_path, "20260105-000000-seed-done", status="finished", **{**me, "pid": int(gone_pid)})
    store = RunStore(tmp_path)
    assert {r.id[-4:]: r.status for r in store.runs()} == {
        "live": RUNNING,
        "dead": INTERRUPTED,
        "reus": INTERRUPTED,
        "away": RUNNING,  # another host's processes cannot be checked from here
        "done": "finished",
    }
    assert [r.id[-4:] for r in store.in_progress()] == ["away", "live"]
    assert dict(zip(store.table().run.str[-4:], store.table().status, strict=True))["dead"] == INTERRUPTED
    assert process_alive(me["pid"], me["host"], me["process_started"])


def test_a_run_in_progress_is_not_offered_as_a_model_nor_deleted_and_an_interrupted_one_is_both(tmp_path):
    me = this_process()
    live = _run_json(tmp_path, "20260101-000000-seed-live", status=RUNNING, **me)
    dead = _run_json(tmp_path, "20260102-000000-seed-dead", status=RUNNING, **{**me, "process_started": 1.0})
    for run in (live, dead):
        (run / "model.keras").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # a stand-in file, never loaded here
    store = RunStore(tmp_path)
    assert [r.id for r in store.with_models()] == [dead.name]
    with pytest.raises(ValueError, match="still training"):
        store.delete(live.name)
    store.delete(dead.name)
    assert [r.id for r in store.runs()] == [live.name]


def test_the_training_lock_is_one_per_runs_folder_and_names_the_run_holding_it(other_process, tmp_path):
    runs, run_id, holder = other_process
    store = RunStore(runs)
    assert [r.id for r in store.in_progress()] == [run_id]
    with pytest.raises(
        TrainingInProgress, match=rf"run {run_id} is training in {re.escape(str(runs))} .*pid {holder.pid}"
    ):
        store.claim_training()
    RunStore(tmp_path / "other-runs").claim_training().release()  # another folder is free
    holder.stdin.close()  # the holder exits: its lock goes with it, and its run reads as interrupted
    holder.wait(30)
    store.claim_training().release()
    assert [r.status for r in store.runs()] == [INTERRUPTED]


def test_the_dashboard_refuses_to_start_while_another_process_trains_and_shows_that_run(
    other_process, small_zip, monkeypatch
):
    from ui.status import other_process_runs

    runs, run_id, _ = other_process
    with pytest.raises(TrainingBusy, match=f"Run {run_id} is training in .*Only one run trains at a time"):
        TrainingManager().start(small_zip, TrainConfig(epochs=1), runs_dir=runs)
    assert {p.name for p in runs.iterdir()} <= {run_id, ".training.lock"}  # the refused run made no folder
    assert other_process_runs() == ""  # the sidebar reads the app's runs folder: none training there
    monkeypatch.setattr(config, "RUNS_DIR", runs)
    assert f"**{run_id}** (pid " in other_process_runs()
    sidebar = texts(open_app().caption)
    assert f"In progress in another process: **{run_id}**" in sidebar, sidebar


def test_kill_9_after_the_first_checkpoint_leaves_an_interrupted_run_whose_model_works(small_zip, tmp_path):
    from core.predict import Predictor

    runs, log = tmp_path / "runs", tmp_path / "train.log"
    proc = start_cli(cli_env(runs, tmp_path / "data"), "train", small_zip, *LONG_RUN, log=log)
    try:
        run_dir = wait_for(lambda: one_run(runs), proc, log, "run folder")
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["status"] == RUNNING and meta["pid"] == proc.pid and meta["host"] == socket.gethostname()
        assert meta["config"]["epochs"] == int(LONG_RUN[LONG_RUN.index("--epochs") + 1]) and meta["started_at"]
        assert RunStore(runs).get(run_dir.name).status == RUNNING
        wait_for(lambda: (run_dir / "model.keras").is_file(), proc, log, "first checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        end(proc)
    store = RunStore(runs)
    run = store.get(run_dir.name)
    assert run.status == INTERRUPTED and store.in_progress() == []
    assert [r.id for r in store.with_models()] == [run.id]
    assert store.table().status.tolist() == [INTERRUPTED]
    prediction = Predictor(run.model_path).predict_bytes(make_jpeg(seed=4), "photo.jpg")
    assert prediction.error is None and 0.0 <= prediction.prob_dog <= 1.0
    store.claim_training().release()  # the next training tidies what a kill mid-save may leave
    assert not [p.name for p in run.path.iterdir() if ".tmp" in p.name]
    store.delete(run.id)
    assert store.runs() == []


def test_a_second_training_in_the_same_folder_is_refused_unless_allowed(small_zip, tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    env = cli_env(runs, data)
    first = start_cli(env, "train", small_zip, *LONG_RUN, log=tmp_path / "first.log")
    try:
        first_run = wait_for(lambda: one_run(runs), first, tmp_path / "first.log", "first run folder")
        refused = subprocess.run(
            [sys.executable, "-m", "core", "train", str(small_zip), "--limit", "40", "--epochs", "1"],
            cwd=config.ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"run {first_run.name} is training in {runs}" in refused.stderr
        assert "--allow-concurrent" in refused.stderr
        allowed = subprocess.run(
            [sys.executable, "-m", "core", "train", str(small_zip), "--limit", "40", "--epochs", "1",
             "--allow-concurrent"],
            cwd=config.ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        assert first.poll() is None  # the first was still training all along: both ran at once
        second_run = Path(allowed.stdout.strip().splitlines()[-1])
        statuses = {r.id: r.status for r in RunStore(runs).runs()}
        assert statuses == {first_run.name: RUNNING, second_run.name: "finished"}
        wait_for(lambda: (first_run / "model.keras").is_file(), first, tmp_path / "first.log", "first checkpoint")
        first.send_signal(signal.SIGINT)  # Ctrl-C: the run stops after its batch, and says so itself
        first.wait(120)
        assert first.returncode == 130
    finally:
        end(first)
    said = (tmp_path / "first.log").read_text()
    assert "stopping after this batch" in said and said.rstrip().endswith("interrupted")
    meta = json.loads((first_run / "run.json").read_text())
    assert meta["status"] == "stopped" and meta["metrics"]["best_epoch"] >= 1  # finished properly, best epoch kept


def _namespace_ready() -> bool:
    # An unprivileged user+mount namespace lets a test mount a real, small tmpfs: a disk that really fills up.
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


needs_namespace = pytest.mark.skipif(
    not UNDER_CI and not _namespace_ready(), reason="needs `unshare -rm` to mount a small tmpfs"
)


def run_on_small_disks(script: str, tmp_path: Path, disks: dict[str, str]) -> dict:
    """Run a Python script where each of disks (folder name -> tmpfs options) is a real tmpfs of that size;
    the script writes what it saw as JSON to its argv[1]."""
    mounts = []
    for name, options in disks.items():
        (tmp_path / name).mkdir()
        mounts.append(f"mount -t tmpfs -o {options} tmpfs {tmp_path / name}")
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    out = tmp_path / "seen.json"
    command = " && ".join([*mounts, f"{sys.executable} {tmp_path / 'script.py'} {out}"])
    env = {**os.environ, "PYTHONPATH": str(config.ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@needs_namespace
def test_a_full_disk_leaves_no_temp_file_keeps_the_old_model_and_says_disk_full(small_zip, tiny_model, tmp_path):
    seen = run_on_small_disks(
        f"""
        import json, os, shutil, subprocess, sys
        from pathlib import Path
        base, small_zip = Path({str(tmp_path)!r}), {str(small_zip)!r}
        env = {{**os.environ, "CVD_DATA_DIR": str(base / "data"), "CVD_MODELS_DIR": str(base / "models")}}
        def train(runs, *extra):
            proc = subprocess.run([sys.executable, "-m", "core", "train", small_zip, "--limit", "40", "--epochs", "1",
                                   *extra], env={{**env, "CVD_RUNS_DIR": str(runs)}}, capture_output=True, text=True)
            return {{"code": proc.returncode, "stderr": proc.stderr.strip().splitlines()[-1:],
                     "left": sorted(str(p.relative_to(runs.parent)) for p in runs.rglob("*"))}}
        seen = {{"checkpoint": train(base / "full-runs")}}
        old = shutil.copyfile({str(tiny_model)!r}, base / "full-out" / "default.keras").read_bytes()
        out = train(base / "runs", "--out", str(base / "full-out" / "default.keras"))
        out["old_model_kept"] = (base / "full-out" / "default.keras").read_bytes() == old
        out["left"] = sorted(p.name for p in (base / "full-out").iterdir())
        seen["out"] = out
        Path(sys.argv[1]).write_text(json.dumps(seen))
        """,
        tmp_path,
        # 4 MB: run.json fits, the 16 MB model does not; the --out disk has room for the old model and 4 MB more.
        {"full-runs": "size=4m", "full-out": f"size={tiny_model.stat().st_size // 1024 + 4096}k"},
    )
    checkpoint = seen["checkpoint"]
    assert checkpoint["code"] == 2, checkpoint
    model_file = tmp_path / "full-runs"
    assert checkpoint["stderr"][0].startswith(f"error: could not write {model_file}/"), checkpoint
    assert checkpoint["stderr"][0].endswith("/model.keras: disk full"), checkpoint
    # The run saved nothing, so it left nothing: no temp file keeps the disk full, no half-made run is listed.
    assert [p for p in checkpoint["left"] if not p.endswith(".training.lock")] == [], checkpoint
    out = seen["out"]
    assert out["code"] == 2 and out["old_model_kept"], out
    assert out["stderr"] == [f"error: could not write {tmp_path / 'full-out' / 'default.keras'}: disk full"], out
    assert out["left"] == ["default.keras"], out


@needs_namespace
def test_write_json_and_atomic_write_on_full_and_read_only_disks(tmp_path):
    seen = run_on_small_disks(
        f"""
        import json, sys
        from pathlib import Path
        from core.config import WriteError
        from core.runs import write_json
        base = Path({str(tmp_path)!r})
        (base / "full" / "run.json").write_text('{{"status": "finished"}}')
        seen = {{}}
        for name, target in (("full", base / "full" / "run.json"), ("ro", base / "ro" / "run.json")):
            try:
                write_json(target, {{"names": ["x" * 100] * 100_000}})  # 10 MB of JSON
            except WriteError as err:
                seen[name] = {{"error": str(err), "errno": err.errno}}
            seen[name]["left"] = sorted(p.name for p in target.parent.iterdir())
        seen["kept"] = json.loads((base / "full" / "run.json").read_text())
        Path(sys.argv[1]).write_text(json.dumps(seen))
        """,
        tmp_path,
        {"full": "size=1m", "ro": "size=1m,ro"},
    )
    assert seen["full"]["error"] == f"could not write {tmp_path / 'full' / 'run.json'}: disk full"
    assert seen["full"]["left"] == ["run.json"] and seen["kept"] == {"status": "finished"}
    assert seen["ro"]["error"] == f"could not write {tmp_path / 'ro' / 'run.json'}: read-only file system"
    assert seen["ro"]["left"] == []


def test_a_failed_write_removes_its_temp_file_whatever_the_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    with pytest.raises(WriteError, match=re.escape(f"could not write {tmp_path / 'missing' / 'x.bin'}: its folder")):
        atomic_write(tmp_path / "missing" / "x.bin", lambda tmp: tmp.write_bytes(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and target.read_bytes() == b"old"


def test_temp_files_of_dead_writers_are_tidied_and_live_ones_kept(tmp_path):
    from core.config import temp_sibling

    script = (
        "import sys; from core.config import temp_sibling; print(temp_sibling(__import__('pathlib').Path(sys.argv[1])))"
    )
    dead = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run-a" / "model.keras")],
        cwd=config.ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (tmp_path / "run-a").mkdir()
    Path(dead).write_bytes(b"half a model")
    live = temp_sibling(tmp_path / "run-a" / "history.csv")  # this process's: it may be writing it now
    live.write_text("epoch")
    assert RunStore(tmp_path).tidy() == [Path(dead)]
    assert sorted(p.name for p in (tmp_path / "run-a").iterdir()) == [live.name]


def test_a_runs_folder_that_cannot_be_made_is_a_clear_refusal_not_a_crash(tmp_path, small_zip):
    (tmp_path / "a-file").write_text("not a folder")
    runs = tmp_path / "a-file" / "runs"
    with pytest.raises(TrainingBusy, match=re.escape(f"Cannot train here: could not write {runs / '.training.lock'}")):
        TrainingManager().start(small_zip, TrainConfig(epochs=1), runs_dir=runs)
