"""A crash at any moment loses nothing: the smoke pipeline killed outright (SIGKILL to Snakemake, its jobs, the
warm worker and the worker's children, as a power loss would) inside a training between checkpoints, inside
scoring and inside the MLflow sync, each time followed by `snakemake --unlock` and the same command, ends as an
uninterrupted run does: the same result files (timings aside), every MLflow metric point once, every artifact,
and no temporary file or folder left. Also, each defect on its own: a killed training job's metric points, a
sync stopped before its artifacts, a damaged artifact folder, a hard-killed warm worker's folder.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from test_pipeline_e2e import SMOKE, SNAKEMAKE, prepared_mnist, with_data  # noqa: F401 - a fixture
from test_live_tracking import tiny_gbm_train_config
from test_pipeline_tracking import fake_results

GBM = str(Path(sys.executable).parent / "gbm")
EXPERIMENT = "crash"
CURVES = ("train_loss", "learning_rate", "images_per_s")
# What differs between two runs of the same configuration however they ran: timings (keys and columns in
# seconds, "..._s", and the moments below), the working directory in recorded paths, the sessions a resumed job
# adds (environment.json), run ids (mlflow_run.json) and the sync's own counts (mlflow.json). All else is compared.
TIMING_KEYS = {"time", "started_at", "finished_at", "ended_at", "timing", "job", "session_steps", "resumed_from_step"}
NOT_COMPARED = ("logs/", "benchmarks/", "mlflow.db", "mlartifacts/", "timing.json")


# ---------------------------------------------------------------- helpers: processes, the store, files

def kill_everything(root: int) -> list[str]:
    """SIGKILL ``root`` and every descendant (the warm worker and its children included), frozen first so that
    none can start another process or finish its work between the first and the last kill."""
    frozen: dict[int, psutil.Process] = {}
    for _ in range(3):  # a process started while the tree was being listed
        try:
            tree = [psutil.Process(root)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            tree = [p for p in frozen.values() if p.is_running()]
        for process in tree:
            if process.pid not in frozen:
                try:
                    process.suspend()
                    frozen[process.pid] = process
                except psutil.NoSuchProcess:
                    pass
    names = []
    for process in frozen.values():
        try:
            names.append(" ".join(process.cmdline()[:3]))
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=30)
    return names


def environment(tmp: Path) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


class Pipeline:
    """One working directory of the crash test's benchmark and the command that runs it."""

    def __init__(self, workdir: Path, configfile: Path, targets: list[str]):
        self.workdir, self.results = workdir, workdir / "results"
        self.tmp = workdir / "tmp"
        self.tmp.mkdir()
        self.command = SNAKEMAKE + ["--directory", str(workdir), *targets, "--cores", "1", "--configfile",
                                    str(configfile)]

    def start(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, cwd=self.workdir, env=environment(self.tmp), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def run(self, *extra: str) -> None:
        out = subprocess.run(self.command + list(extra), cwd=self.workdir, env=environment(self.tmp),
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    def worker_log(self) -> str:
        path = self.results / "logs" / "warm_worker.log"
        return path.read_text() if path.is_file() else ""


def wait_for(condition, job: subprocess.Popen, what: str, timeout: float = 600.0, every: float = 0.05):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert job.poll() is None, f"the pipeline ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def store(results: Path) -> str:
    return f"sqlite:///{results / 'mlflow.db'}"


def client(results: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store(results))


def active_runs(results: Path, experiment: str = EXPERIMENT) -> dict:
    mlflow = client(results)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    runs: dict = {}
    for run in mlflow.search_runs([experiment_id], max_results=1000):
        runs.setdefault(run.data.tags.get("gbm.key"), []).append(run)
    return runs


def csv_steps(path: Path, column: str) -> list[int]:
    with open(path) as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row.get(column)]


def steps_in_store(results: Path, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client(results).get_metric_history(run_id, key))


def is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_s")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def comparable(path: Path, relative: str, workdir: Path):
    """What of a result file two runs must agree on: its content, less its timings."""
    if relative.endswith(("/environment.json", "/mlflow.json", "/mlflow_run.json")) or "checkpoints/" in relative:
        return "present"  # sessions, sync counts and run ids differ by design; checkpoints hold their wall time
    if path.suffix == ".json":
        return without_timings(json.loads(path.read_text().replace(str(workdir), "WORKDIR")))
    if path.suffix == ".csv":
        with open(path) as handle:
            return [{k: v.replace(str(workdir), "WORKDIR") for k, v in row.items() if not is_timing(k)}
                    for row in csv.DictReader(handle)]
    if path.suffix == ".npz":  # the zip's own entry times aside: each array, a JSON record less its timings
        with np.load(path) as arrays:
            return {k: without_timings(json.loads(str(arrays[k]).replace(str(workdir), "WORKDIR")))
                    if k == "meta" else hashlib.sha256(arrays[k].tobytes()).hexdigest() for k in arrays.files}
    return hashlib.sha256(path.read_bytes()).hexdigest()


def result_files(results: Path) -> dict:
    files = {}
    for path in sorted(results.rglob("*")):
        relative = str(path.relative_to(results))
        if path.is_file() and not relative.startswith(NOT_COMPARED):
            files[relative] = comparable(path, relative, results.parent)
    return files


def comparable_params(run, workdir: Path) -> dict:
    return {k: v.replace(str(workdir), "WORKDIR") for k, v in run.data.params.items()
            if not is_timing(k.split(".")[-1])}


def leftovers(pipeline: Pipeline) -> list[str]:
    found = [str(p) for p in pipeline.results.rglob(".tmp-*")]
    found += [str(p) for p in pipeline.tmp.glob("gbm-warm-*")]
    found += [str(p) for p in (pipeline.workdir / ".snakemake" / "locks").glob("*")]
    found += [str(p) for p in (pipeline.workdir / ".snakemake" / "incomplete").rglob("*") if p.is_file()]
    return found


def stored_artifact_hashes(results: Path, run) -> dict[str, str]:
    from gbm.tracking.mirror import stored_artifacts

    return stored_artifacts(client(results), store(results), run)


# ---------------------------------------------------------------- the crash test

@pytest.fixture(scope="module")
def crash_config(tmp_path_factory) -> Path:
    """The smoke benchmark cut to one model (GBM, seed 0, one sampler) trained long enough to be killed between
    checkpoints: 120 steps, a checkpoint every 20, losses written every 5."""
    config = yaml.safe_load(SMOKE.read_text())
    config.update(name=EXPERIMENT, seeds=[0], methods={"gbm": {"samplers": {"sign-agnostic": {"steps": [2]}}}},
                  warm_workers=True)  # the opt-in worker too must lose nothing when killed with its children
    config["train"].update(steps=120, checkpoint_every=20, log_every=5)
    path = tmp_path_factory.mktemp("crash-config") / "crash.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TARGETS = ["results/mnist/gbm/seed0/mlflow.json", "results/tables/metrics.csv"]
RUN = "mnist/gbm/seed0"


@pytest.mark.slow
def test_pipeline_killed_in_training_scoring_and_sync_then_rerun_equals_an_uninterrupted_run(
        prepared_mnist, crash_config, tmp_path):  # noqa: F811 - prepared_mnist is the e2e module's fixture
    began = time.time()
    straight = Pipeline(with_data(tmp_path / "straight", prepared_mnist), crash_config, TARGETS)
    straight.run()
    straight_s = time.time() - began
    worker_ran_every_job_and_stopped_with_snakemake(straight.worker_log())

    crashed = Pipeline(with_data(tmp_path / "crashed", prepared_mnist), crash_config, TARGETS)
    run_dir = crashed.results / "mnist" / "gbm" / "seed0" / "run"
    seen: dict = {}

    # 1. Inside the training, just after a checkpoint, before its metric points reach MLflow: the test holds
    # the store's writers' lock (as a long sync would), so the job's tracker has written nothing since.
    job = crashed.start()
    wait_for(lambda: (run_dir / "mlflow_run.json").is_file(), job, "the training's live MLflow run")
    lock = os.open(crashed.results / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    before = {p.name for p in (run_dir / "checkpoints").glob("step_*.pt")}
    wait_for(lambda: {p.name for p in (run_dir / "checkpoints").glob("step_*.pt")} - before, job, "a checkpoint")
    kill_everything(job.pid)
    os.close(lock)
    checkpoint = max(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))
    live_run = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    in_store = steps_in_store(crashed.results, live_run, "learning_rate")
    passed = [s for s in csv_steps(run_dir / "train_log.csv", "learning_rate") if s <= checkpoint]
    seen["training"] = {"checkpoint": checkpoint, "steps_passed": len(passed), "learning_rate_in_store": len(in_store)}
    assert checkpoint < 120 and not (run_dir / "model.pt").exists()
    assert set(passed) - set(in_store), "the kill was meant to leave passed steps out of MLflow"
    assert list(crashed.tmp.glob("gbm-warm-*")), "the killed worker was meant to leave its folder"

    # 2. Inside scoring (the score job has started and written nothing).
    evaluation = crashed.results / "mnist" / "gbm" / "seed0" / "sign-agnostic" / "steps2"
    crashed.run("--unlock")
    job = crashed.start()
    wait_for(lambda: "started: gbm score" in crashed.worker_log(), job, "the score job")
    time.sleep(0.5)
    kill_everything(job.pid)
    assert (evaluation / "samples.npz").is_file() and not (evaluation / "metrics.json").exists()
    seen["scoring"] = "killed 0.5 s into `gbm score`"

    # 3. Inside the MLflow sync: as soon as the first artifact folder appears (the sync is storing artifacts).
    crashed.run("--unlock")
    job = crashed.start()
    artifacts = crashed.results / "mlartifacts"
    wait_for(lambda: list(artifacts.glob("*/*/artifacts")), job, "the sync's first artifact", every=0.002)
    kill_everything(job.pid)
    training = active_runs(crashed.results)[RUN][0]
    seen["sync"] = {"artifacts_stored": sorted(stored_artifact_hashes(crashed.results, training)),
                    "digest_written": "gbm.digest" in training.data.tags, "status": training.info.status}
    assert not (crashed.results / "mnist" / "gbm" / "seed0" / "mlflow.json").exists()

    # The rerun Snakemake asks for, then the same command.
    crashed.run("--unlock")
    crashed.run()
    print(f"\ncrash test: uninterrupted run {straight_s:.0f} s; kills: {json.dumps(seen)}")

    assert differences(straight, crashed) == []


def worker_ran_every_job_and_stopped_with_snakemake(log: str) -> None:
    started, ended = log.count("started: gbm "), log.count("ended: {'exit': 0}")
    assert started == ended > 5, log[-2000:]  # every job, and each one succeeded
    for command in ("train", "sample", "score", "floor", "mlflow-sync", "report"):
        assert f"started: gbm {command} " in log, command
    assert "started: gbm write-config" not in log  # imports no torch: runs in its own process, beside the preload
    assert log.rstrip().endswith("gbm worker: stopped")
    # started while Snakemake parsed the run (a plain local command line), not again in onstart
    assert log.startswith("gbm worker: starting while Snakemake parses the workflow") and log.count("starting") == 1


def differences(straight: Pipeline, crashed: Pipeline) -> list[str]:
    """Every way the crashed run ended unlike the uninterrupted one (all listed, not only the first)."""
    problems = []
    # The same result files, timings aside.
    straight_files, crashed_files = result_files(straight.results), result_files(crashed.results)
    if sorted(crashed_files) != sorted(straight_files):
        problems.append(f"files: {sorted(set(crashed_files) ^ set(straight_files))}")
    problems += [f"differs: {name}" for name in straight_files
                 if name in crashed_files and straight_files[name] != crashed_files[name]]

    # In MLflow: the same runs, each FINISHED and complete, every metric step once, every artifact as its file.
    straight_runs, crashed_runs = active_runs(straight.results), active_runs(crashed.results)
    if sorted(crashed_runs) != sorted(straight_runs) or any(len(r) != 1 for r in crashed_runs.values()):
        problems.append(f"runs: {[(k, len(r)) for k, r in crashed_runs.items()]}")
    for key, (want, *_) in straight_runs.items():
        got = crashed_runs.get(key, [None])[0]
        if got is None:
            continue
        if got.info.status != "FINISHED" or "gbm.digest" not in got.data.tags:
            problems.append(f"{key}: {got.info.status}, digest {'gbm.digest' in got.data.tags}")
        if comparable_params(got, crashed.workdir) != comparable_params(want, straight.workdir):
            problems.append(f"{key}: params")
        if sorted(got.data.metrics) != sorted(want.data.metrics):
            problems.append(f"{key}: metrics {sorted(set(got.data.metrics) ^ set(want.data.metrics))}")
        for metric in set(want.data.metrics) - {"job_wall_time_s"}:  # whose step numbers the job's sessions
            steps = steps_in_store(crashed.results, got.info.run_id, metric)
            if steps != steps_in_store(straight.results, want.info.run_id, metric):
                problems.append(f"{key}: {metric} has {len(steps)} points (steps {steps[:3]}...)")
        files = {p.name: p for p in [*(crashed.results / key).glob("run/*"), *(crashed.results / key).glob("*.json"),
                                     crashed.results / "config.resolved.yaml"] if p.is_file()}
        stored = stored_artifact_hashes(crashed.results, got)
        if sorted(stored) != sorted(stored_artifact_hashes(straight.results, want)):
            problems.append(f"{key}: artifacts {sorted(stored)}")
        problems += [f"{key}: artifact {name} is not its file" for name, digest in stored.items()
                     if name in files and digest != hashlib.sha256(files[name].read_bytes()).hexdigest()]
    training = crashed_runs.get(RUN, [None])[0]
    for curve, (file, column) in {"train_loss": ("loss.csv", "loss"), "learning_rate": ("train_log.csv",
                                  "learning_rate"), "images_per_s": ("train_log.csv", "images_per_s")}.items():
        if training is None or steps_in_store(crashed.results, training.info.run_id, curve) != list(range(1, 121)):
            problems.append(f"{RUN}: {curve} lacks points")

    # Nothing left over: no temporary file, warm-worker folder, lock or incomplete marker.
    problems += [f"left over: {path}" for path in leftovers(crashed) + leftovers(straight)]
    return problems


# ---------------------------------------------------------------- each defect on its own

STEPS = 1000  # long enough to outlast the start of the job's MLflow run


def tiny_train_config(root: Path) -> Path:
    return tiny_gbm_train_config(root, steps=STEPS, checkpoint_every=50, log_every=10)


def train(config: Path, run_dir: Path, results: Path, **popen) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store(results), MLFLOW_EXPERIMENT_NAME="live", OMP_NUM_THREADS="1")
    return subprocess.Popen([GBM, "train", str(config), "--out", str(run_dir), "--device", "cpu", "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)


@pytest.mark.slow
def test_every_metric_point_a_hard_killed_training_passed_reaches_mlflow_exactly_once(tmp_path):
    results = tmp_path / "results"
    run_dir = results / "mnist" / "gbm" / "seed0" / "run"
    config = tiny_train_config(tmp_path)
    job = train(config, run_dir, results)
    wait_for(lambda: (run_dir / "mlflow_run.json").is_file(), job, "the live run", every=0.01)
    lock = os.open(results / "mlflow.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the tracker can write no batch from now on
    checkpoints = lambda: {p.name for p in (run_dir / "checkpoints").glob("step_*.pt")}  # noqa: E731
    before = checkpoints()
    wait_for(lambda: checkpoints() - before, job, "a checkpoint", every=0.005)
    job.kill()
    job.wait()
    os.close(lock)
    checkpoint = max(int(name[5:13]) for name in checkpoints())
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    passed = set(csv_steps(run_dir / "train_log.csv", "learning_rate")) & set(range(1, checkpoint + 1))
    assert passed - set(steps_in_store(results, run_id, "learning_rate"))  # steps the job passed, not in MLflow

    assert train(config, run_dir, results).wait() == 0  # resumes after the checkpoint
    from gbm.tracking.mirror import sync

    assert sync(results, "live", uri=store(results)).adopted == 1
    for curve in CURVES:
        assert steps_in_store(results, run_id, curve) == list(range(1, STEPS + 1)), curve
    again = sync(results, "live", uri=store(results))
    assert (again.unchanged, again.adopted, again.repaired) == (1, 0, [])
    assert steps_in_store(results, run_id, "images_per_s") == list(range(1, STEPS + 1))


def test_a_sync_stopped_before_its_artifacts_are_stored_is_completed_by_the_next(tmp_path):
    from gbm.tracking.mirror import sync

    results = fake_results(tmp_path, seeds=(0,))
    obstacle = results / "mlartifacts" / "test"
    obstacle.parent.mkdir()
    obstacle.write_text("a file where the experiment's artifact folder goes: every artifact write fails")
    first = sync(results, "test", uri=store(results))
    assert first.failed and first.created == 0
    obstacle.unlink()

    second = sync(results, "test", uri=store(results))
    assert second.failed == [] and second.created == 4
    runs = active_runs(results, "test")
    assert all(len(r) == 1 and r[0].info.status == "FINISHED" for r in runs.values())
    for key, (run,) in runs.items():
        names = sorted(stored_artifact_hashes(results, run))
        assert names == (["config.yaml", "environment.json", "loss.csv", "train_metrics.json"] if key.count("/") == 2
                         else ["metrics.json", "sample_grid.png", "samples.json"]), key


def test_mlflow_sync_repairs_missing_partial_and_stray_artifacts_and_reports_them(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))

    def mlflow_sync() -> dict:
        out = subprocess.run([GBM, "mlflow-sync", str(results), "--experiment", "test"], capture_output=True,
                             text=True, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert mlflow_sync()["created"] == 4
    runs = active_runs(results, "test")
    training = runs["mnist/gbm/seed0"][0]
    evaluation = runs["mnist/gbm/seed0/dale-langevin/steps10"][0]
    folder = results / "mlartifacts" / "test"
    train_folder, eval_folder = (folder / r.info.run_id / "artifacts" for r in (training, evaluation))
    (train_folder / "config.yaml").unlink()
    (train_folder / "loss.csv").write_bytes((train_folder / "loss.csv").read_bytes()[:7])  # cut short
    (train_folder / ".tmp-config-x1y2.yaml").write_text("seed: 0\n")  # a killed atomic write
    (eval_folder / "sample_grid.png").unlink()

    repaired = mlflow_sync()
    assert sorted(repaired["repaired"]) == [
        "mnist/gbm/seed0/dale-langevin/steps10: wrote sample_grid.png",
        "mnist/gbm/seed0: wrote config.yaml, wrote loss.csv, removed .tmp-config-x1y2.yaml",
    ]
    assert repaired["unchanged"] == 2 and repaired["created"] == repaired["deleted"] == 0
    run_dir = results / "mnist" / "gbm" / "seed0" / "run"
    stored = stored_artifact_hashes(results, training)
    assert stored == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}
    assert "sample_grid.png" in stored_artifact_hashes(results, evaluation)
    again = mlflow_sync()
    assert (again["unchanged"], again["repaired"]) == (4, [])


def test_a_starting_worker_removes_the_folders_of_hard_killed_workers_and_keeps_live_ones(tmp_path):
    from gbm.jobs.warm.client import FOLDER_PREFIX

    def worker(folder: Path) -> tuple[subprocess.Popen, Path]:
        folder.mkdir()
        log = folder.with_suffix(".log")
        process = subprocess.Popen([GBM, "worker", "--socket", str(folder / "socket"), "--no-preload"],
                                   stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, TMPDIR=str(tmp_path)))
        deadline = time.time() + 60
        while "serving on" not in log.read_text():
            assert process.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        return process, log

    killed, _ = worker(tmp_path / f"{FOLDER_PREFIX}killed")
    live, _ = worker(tmp_path / f"{FOLDER_PREFIX}live")
    killed.kill()
    killed.wait()
    empty = tmp_path / f"{FOLDER_PREFIX}empty"
    empty.mkdir()
    starting = tmp_path / f"{FOLDER_PREFIX}starting"  # made just now by a worker being started
    starting.mkdir()
    for old in (tmp_path / f"{FOLDER_PREFIX}killed", tmp_path / f"{FOLDER_PREFIX}live", empty):
        os.utime(old, (time.time() - 60, time.time() - 60))
    assert (tmp_path / f"{FOLDER_PREFIX}killed" / "socket").exists()

    new, log = worker(tmp_path / f"{FOLDER_PREFIX}new")
    try:
        left = sorted(p.name.removeprefix(FOLDER_PREFIX) for p in tmp_path.glob(f"{FOLDER_PREFIX}*") if p.is_dir())
        assert left == ["live", "new", "starting"]
        assert "left by a worker that is gone" in log.read_text()
    finally:
        for process in (live, new):
            process.terminate()
            process.wait(timeout=30)


def test_a_write_removes_the_temporary_files_a_killed_writer_of_the_same_file_left(tmp_path):
    from gbm.data.atomic import write_text_atomic

    target = tmp_path / "config.yaml"
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from gbm.data.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), str(target)])
    assert killed.returncode == -9
    (left,) = tmp_path.glob(".tmp-config-*.yaml")
    alive = tmp_path / left.name.replace(f"-{left.name.split('-')[-2]}-", f"-{os.getpid()}-")  # a live writer's
    alive.write_text("being written")
    other = tmp_path / ".tmp-config.v2-host-1-abcdefgh.yaml"  # another file's
    other.write_text("not ours")

    write_text_atomic(target, "seed: 0\n")
    assert target.read_text() == "seed: 0\n"
    assert sorted(p.name for p in tmp_path.glob(".tmp-*")) == sorted([alive.name, other.name])
