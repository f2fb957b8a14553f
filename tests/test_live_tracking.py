"""Live MLflow logging by ``gbm train`` (real jobs, a real SQLite store): the run is RUNNING with loss points
while the job trains, FINISHED with the job's wall time after, KILLED when interrupted and continued by the
resumed job without duplicated or lost points; eight jobs at once lose nothing; the mirror adopts it."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gbm.runs import RunDir
from helpers import noise_dataset

GBM = str(Path(sys.executable).parent / "gbm")


def tiny_gbm_train_config(root: Path, *, steps: int, checkpoint_every: int, log_every: int) -> Path:
    """A tiny GBM training config on synthetic 8x8 images (batch 8), written under ``root``."""
    data = noise_dataset(root / "data.npz")
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": str(data)}, "sde": {"name": "gbm"}, "model": {"size": "tiny"},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": checkpoint_every, "log_every": log_every}}))
    return path


@pytest.fixture(scope="module")
def train_config(tmp_path_factory) -> Path:
    """A tiny GBM training config on synthetic 8x8 images."""
    return tiny_gbm_train_config(tmp_path_factory.mktemp("config"), steps=40, checkpoint_every=20, log_every=5)


def store(results: Path) -> str:
    return f"sqlite:///{results / 'mlflow.db'}"


def start_training(config: Path, results: Path, *overrides: str, seed: int = 0) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store(results), MLFLOW_EXPERIMENT_NAME="live", OMP_NUM_THREADS="1")
    run_dir = results / "mnist" / "gbm" / f"seed{seed}" / "run"
    command = [GBM, "train", str(config), "--out", str(run_dir), "--device", "cpu", "--no-progress",
               "--set", f"seed={seed}", *[f"--set={o}" for o in overrides]]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def client(results: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store(results))


def live_run_id(results: Path, seed: int = 0) -> str | None:
    link = results / "mnist" / "gbm" / f"seed{seed}" / "run" / "mlflow_run.json"
    return json.loads(link.read_text())["run_id"] if link.is_file() else None


def loss_csv(results: Path, seed: int = 0) -> list[tuple[int, float]]:
    with open(results / "mnist" / "gbm" / f"seed{seed}" / "run" / "loss.csv") as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def wait_for(condition, job: subprocess.Popen, what: str, timeout: float = 240.0):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert job.poll() is None, f"the job ended before {what}: {job.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def loss_points_while_running(results: Path, job: subprocess.Popen, at_least: int = 1):
    """(run, history) as soon as the job's run is RUNNING with ``at_least`` loss points."""
    def seen():
        run_id = live_run_id(results)
        if run_id is None:
            return None
        try:
            run = client(results).get_run(run_id)
            history = client(results).get_metric_history(run_id, "train_loss")
        except Exception:  # noqa: BLE001 - the store is being created by the job
            return None
        return (run, history) if run.info.status == "RUNNING" and len(history) >= at_least else None
    return wait_for(seen, job, "loss points of a RUNNING run")


@pytest.mark.slow
def test_training_run_is_running_with_loss_points_then_finished_with_the_job_wall_time(train_config, tmp_path):
    results = tmp_path / "results"
    launched = time.time()
    job = start_training(train_config, results, "train.steps=400")
    run, history = loss_points_while_running(results, job)
    assert job.poll() is None  # seen while the job was still training
    assert run.info.start_time / 1000 == pytest.approx(launched, abs=1.0)
    _, stderr = job.communicate(timeout=600)
    ended = time.time()
    assert job.returncode == 0, stderr[-2000:]
    assert "MLflow logging stopped" not in stderr, stderr[-2000:]

    run = client(results).get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(ended - launched, abs=1.0)
    assert run.data.metrics["job_wall_time_s"] == pytest.approx(ended - launched, abs=1.0)
    curve = [(m.step, m.value) for m in client(results).get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(curve) == loss_csv(results)
    assert {"learning_rate", "images_per_s"} <= set(run.data.metrics)
    assert run.data.params["train.steps"] == "400" and run.data.tags["gbm.key"] == "mnist/gbm/seed0"
    experiment = client(results).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def stop_between_checkpoints(job: subprocess.Popen, run: RunDir, margin: int, timeout: float = 240.0) -> int:
    """Stop ``job`` (SIGSTOP) at a moment when ``loss.csv`` holds at least ``margin`` steps beyond its latest
    checkpoint; return that checkpoint's step. A kill then lands between checkpoints, never on one."""
    deadline = time.time() + timeout
    while True:
        assert job.poll() is None, f"the job ended before it was stopped: {job.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for a moment between checkpoints"
        os.kill(job.pid, signal.SIGSTOP)
        checkpoints = run.list_checkpoints()
        rows = run.loss.read_text().splitlines()[1:] if run.loss.is_file() else []
        logged = [int(row.split(",")[0]) for row in rows if row.count(",") == 1]  # a half-written row has none
        if checkpoints and logged and logged[-1] >= checkpoints[-1][0] + margin:
            return checkpoints[-1][0]
        os.kill(job.pid, signal.SIGCONT)
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_training_run_is_marked_killed_and_the_resumed_job_continues_it_without_duplicates(
        train_config, tmp_path):
    results = tmp_path / "results"
    steps = 600
    job = start_training(train_config, results, f"train.steps={steps}", "train.checkpoint_every=100")
    run_dir = results / "mnist" / "gbm" / "seed0" / "run"
    run, _ = loss_points_while_running(results, job)
    checkpoint = stop_between_checkpoints(job, RunDir(run_dir), margin=10)
    job.send_signal(signal.SIGTERM)
    os.kill(job.pid, signal.SIGCONT)
    job.communicate(timeout=300)
    killed = client(results).get_run(run.info.run_id)
    assert killed.info.status == "KILLED"
    logged_before = {m.step for m in client(results).get_metric_history(run.info.run_id, "train_loss")}
    assert RunDir(run_dir).list_checkpoints()[-1][0] == checkpoint
    assert max(logged_before) > checkpoint  # the resumed job recomputes steps the store already holds

    resumed = start_training(train_config, results, f"train.steps={steps}", "train.checkpoint_every=100")
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert live_run_id(results) == run.info.run_id
    final = client(results).get_run(run.info.run_id)
    assert final.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client(results).get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(s for s, _ in history) == list(range(1, steps + 1))  # each step once: none lost, none twice
    assert sorted(history) == loss_csv(results)
    sessions = json.loads((run_dir / "mlflow_run.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["KILLED", "FINISHED"]


@pytest.mark.slow
def test_eight_jobs_logging_at_once_lose_no_record_and_fail_no_job(train_config, tmp_path):
    results = tmp_path / "results"
    jobs = [start_training(train_config, results, seed=seed) for seed in range(8)]
    outputs = [job.communicate(timeout=900) for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 8, [err[-1000:] for _, err in outputs]
    assert not [line for _, err in outputs for line in err.splitlines() if "MLflow logging stopped" in line]
    for seed in range(8):
        run = client(results).get_run(live_run_id(results, seed))
        assert run.info.status == "FINISHED" and run.data.tags["seed"] == str(seed)
        curve = [(m.step, m.value) for m in client(results).get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(curve) == loss_csv(results, seed) and len(curve) == 40
    assert len(client(results).search_runs([run.info.experiment_id])) == 8


def test_an_unusable_store_is_reported_and_training_finishes(train_config, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "mlflow.db").write_bytes(b"not a database " * 100)
    job = start_training(train_config, results)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0
    assert "MLflow logging stopped, training goes on" in stderr
    assert (results / "mnist" / "gbm" / "seed0" / "run" / "model.pt").is_file()


def test_mirror_adopts_the_live_run_and_a_lost_store_is_rebuilt_with_its_times(train_config, tmp_path):
    from gbm.tracking.mirror import sync

    results = tmp_path / "results"
    job = start_training(train_config, results)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 0, stderr[-2000:]
    run_id = live_run_id(results)
    summary = sync(results, "live", uri=store(results)).as_dict()
    assert (summary["created"], summary["adopted"], summary["failed"]) == (0, 1, [])
    runs = client(results).search_runs([client(results).get_run(run_id).info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    adopted = runs[0]
    assert adopted.data.tags["gbm.key"] == "mnist/gbm/seed0" and "train.final_loss" in adopted.data.metrics
    assert sync(results, "live", uri=store(results)).as_dict()["unchanged"] == 1

    live = client(results).get_run(run_id).info
    copy = tmp_path / "copy" / "results"  # results/ without its store, as after losing it
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    rebuilt_summary = sync(copy, "live", uri=store(copy)).as_dict()
    assert (rebuilt_summary["created"], rebuilt_summary["failed"]) == (1, [])
    rebuilt = client(copy).search_runs([client(copy).get_experiment_by_name("live").experiment_id])[0]
    assert (rebuilt.info.start_time, rebuilt.info.end_time) == pytest.approx(
        (live.start_time, live.end_time), abs=1)
    # the job's wall time too, at the same step (the job's session), from the sessions mlflow_run.json records
    wall = [(m.step, m.value) for m in client(results).get_metric_history(run_id, "job_wall_time_s")]
    rebuilt_wall = [(m.step, m.value) for m in client(copy).get_metric_history(rebuilt.info.run_id, "job_wall_time_s")]
    assert len(wall) == 1 and rebuilt_wall == [(wall[0][0], pytest.approx(wall[0][1], abs=1e-6))]


def test_a_run_its_job_could_not_close_is_ended_by_the_mirror_with_the_jobs_wall_time(tmp_path):
    """The tracker loses the store after opening its run (the writers' lock outlasts its timeout): the run file
    still records the job's end, and the pipeline's sync ends the run FINISHED with the job's wall time, as
    the job would have."""
    from gbm.tracking.live import TrainingTracker
    from gbm.tracking.mirror import sync

    results = tmp_path / "results"
    run_dir = results / "mnist" / "gbm" / "seed0" / "run"
    run_dir.mkdir(parents=True)
    link = run_dir / "mlflow_run.json"
    started = time.time()
    tracker = TrainingTracker(store(results), "live", run_dir, {"seed": 0, "sde": {"name": "gbm"}}, started,
                              interval=0.1, lock_timeout=0.5)
    deadline = time.time() + 120
    while not link.is_file():
        assert time.time() < deadline and tracker.failed is None, tracker.failed
        time.sleep(0.05)
    lock = os.open(results / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # held past the tracker's lock timeout, as by a stuck writer
    try:
        tracker(1, 0.5, 1e-3, 100.0)
        tracker.close("FINISHED", timeout=60)
        ended = time.time()
    finally:
        os.close(lock)
    assert tracker.failed is not None and "TimeoutError" in tracker.failed
    record = json.loads(link.read_text())
    run_id = record["run_id"]
    assert record["status"] == "FINISHED" and record["sessions"][-1]["status"] == "FINISHED"
    wall = record["sessions"][-1]["ended_at"] - started
    assert 0 < wall <= ended - started
    run = client(results).get_run(run_id)
    assert run.info.status == "RUNNING" and "job_wall_time_s" not in run.data.metrics  # the store never heard

    (run_dir / "config.yaml").write_text("seed: 0\nsde: {name: gbm}\ntrain: {steps: 1}\n")
    (run_dir / "loss.csv").write_text("step,loss\n1,0.5\n")
    (run_dir / "train_log.csv").write_text("step,learning_rate,images_per_s\n1,0.001,100.0\n")
    (run_dir / "train_metrics.json").write_text(json.dumps({"steps": 1, "final_loss": 0.5}))
    summary = sync(results, "live", uri=store(results)).as_dict()
    assert (summary["adopted"], summary["created"], summary["failed"]) == (1, 0, [])
    run = client(results).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client(results).get_metric_history(run_id, "job_wall_time_s")] == [
        (0, pytest.approx(wall, abs=1e-6))]
