"""Live MLflow logging of a training job: the loss curve, learning rate and throughput while it trains.

``TrainingTracker`` is the observer ``gbm.training.train`` calls for each logged step. The call only
appends to a queue; a background thread writes batches (``log_batch``) every ``interval`` seconds under
the store's writers' lock (``gbm.tracking.mirror.uri_lock``), retrying while SQLite is busy. Nothing
here can fail training: the first error is reported on stderr, logging stops, training goes on (and
``gbm mlflow-sync`` later fills any gap from ``loss.csv`` and ``train_log.csv``, which ``train`` writes
before it hands a step here: a job killed before a batch reached the store loses no point).

The run starts at the job's process start and ends when its last batch is written, with status
FINISHED, FAILED or KILLED (interrupted). Its id is kept in ``RUN_DIR/mlflow_run.json`` with each session's
start, end and status, written even when the store did not take them (the tracker failed): the mirror logs
``job_wall_time_s`` of every ended session from it, so a run the job could not close, or a store rebuilt
from ``results/``, ends as the job's own run would have. A resumed job reopens the same run and skips the
(metric, step) points the store already holds (the resumed loop recomputes the steps after its checkpoint
bitwise equal), so each curve has each step once.
``gbm mlflow-sync`` adopts the run through that file instead of creating a second one.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path

from gbm.data.atomic import write_text_atomic
from gbm.pipeline.layout import Run
from gbm.tracking.mirror import JOB_WALL_TIME, LIVE_RUN_FILE, flatten_params, retry_locked, open_experiment, uri_lock

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
LOSS, LEARNING_RATE, THROUGHPUT = "train_loss", "learning_rate", "images_per_s"
CURVES = (LOSS, LEARNING_RATE, THROUGHPUT)


def process_start_time() -> float:
    """When this process started (seconds since the epoch): a run's start is its job's start."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - psutil missing or the platform hides it
        return time.time()


def job_record(started_at: float) -> dict:
    """This job's start, end (now) and wall time, for the files an evaluation run is mirrored from."""
    finished_at = time.time()
    return {"started_at": started_at, "finished_at": finished_at, "wall_time_s": finished_at - started_at}


def run_identity(run_dir: Path, config: dict) -> tuple[str, dict]:
    """Run name and tags of a run directory; ``results/{dataset}/{method}/seed{seed}/run`` gives the pipeline's."""
    run_dir = Path(run_dir).resolve()
    tags = {"kind": "training", "gbm.run_dir": str(run_dir), "seed": str(config.get("seed")),
            "method": str((config.get("sde") or {}).get("name"))}
    try:
        run = Run.from_run_dir(run_dir)
    except ValueError:  # a run directory outside the pipeline's layout
        return run_dir.name, tags
    key = f"{run.dataset}/{run.method}/seed{run.seed}"
    tags |= {"dataset": run.dataset, "method": run.method, "seed": str(run.seed), "gbm.key": key}
    return key, tags


class TrainingTracker:
    """Observer of ``train()`` that logs to MLflow from a background thread; never raises into training."""

    def __init__(self, uri: str, experiment: str, run_dir: str | Path, config: dict, started_at: float,
                 interval: float = 2.0, lock_timeout: float = 600.0):
        self.uri, self.experiment, self.run_dir = uri, experiment, Path(run_dir)
        self.config, self.started_at, self.interval, self.lock_timeout = config, started_at, interval, lock_timeout
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.failed: str | None = None
        self.run_id: str | None = None
        self.logged: dict[str, set[int]] = {key: set() for key in CURVES}  # points in the store already (a resumed run)
        self._closing = threading.Event()
        self._status = FINISHED
        self._thread = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self._thread.start()

    def __call__(self, step: int, loss: float, lr: float, images_per_s: float | None) -> None:
        """Record one training step (called from the training loop; returns at once)."""
        if self.failed is None:
            self.queue.put((step, loss, lr, images_per_s, int(time.time() * 1000)))

    def close(self, status: str = FINISHED, timeout: float = 300.0) -> None:
        """Write what is queued, then end the run with ``status`` (waits at most ``timeout`` seconds)."""
        self._status = status
        self._closing.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._report(f"still writing after {timeout:.0f} s; the run stays RUNNING")
        if self.failed is not None and self.run_id is not None:
            # The store did not take the run's end: the run file still records when and how the job ended,
            # and ``gbm mlflow-sync`` completes the run from it (status, ``job_wall_time_s``).
            try:
                self._write_link(status=self._status, ended_at=time.time())
            except OSError as error:
                print(f"gbm train: warning: could not record the job's end in {LIVE_RUN_FILE}: {error}",
                      file=sys.stderr, flush=True)

    def _report(self, message: str) -> None:
        if self.failed is None:
            self.failed = message
            print(f"gbm train: warning: MLflow logging stopped, training goes on ({self.uri}): {message}",
                  file=sys.stderr, flush=True)

    def _work(self) -> None:
        try:
            from mlflow.tracking import MlflowClient

            with uri_lock(self.uri, self.lock_timeout):  # the first client of a store creates its tables
                self.client = MlflowClient(tracking_uri=self.uri)
                self._open_run()
            while not self._closing.wait(self.interval):
                self._write(self._drain())
            self._write(self._drain())
            self._end()
        except Exception as error:  # noqa: BLE001 - tracking never fails training
            self._report(f"{type(error).__name__}: {error}")

    def _drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                return items

    def _open_run(self) -> None:
        from mlflow.entities import Param

        link = self.run_dir / LIVE_RUN_FILE
        previous = json.loads(link.read_text()) if link.is_file() else {}
        experiment_id = open_experiment(self.client, self.uri, self.experiment)
        run = None
        if previous.get("run_id"):
            try:
                run = retry_locked(lambda: self.client.get_run(previous["run_id"]))
            except Exception:  # noqa: BLE001 - not in this store: start a new run
                run = None
            if run is not None and (run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active"):
                run = None
        if run is not None:
            self.run_id = run.info.run_id
            self.sessions = previous.get("sessions", [])
            self.first_start = previous.get("started_at", self.started_at)
            retry_locked(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            for key in CURVES:
                self.logged[key] = {m.step for m in retry_locked(lambda: self.client.get_metric_history(self.run_id, key))}
        else:
            name, tags = run_identity(self.run_dir, self.config)
            tags |= {"config": self.experiment, "mlflow.source.name": "gbm train"}
            run = retry_locked(lambda: self.client.create_run(experiment_id, start_time=int(self.started_at * 1000),
                                                        run_name=name, tags=tags))
            self.run_id = run.info.run_id
            self.sessions, self.first_start = [], self.started_at
            params: dict = {}
            flatten_params("", self.config, params)
            params = [Param(k, str(v)[:500]) for k, v in params.items()]
            for i in range(0, len(params), 100):
                retry_locked(lambda: self.client.log_batch(self.run_id, params=params[i:i + 100]))
        self._write_link(status="RUNNING", ended_at=None)

    def _write_link(self, status: str, ended_at: float | None) -> None:
        sessions = self.sessions + [{"started_at": self.started_at, "ended_at": ended_at, "status": status}]
        write_text_atomic(self.run_dir / LIVE_RUN_FILE, json.dumps({
            "run_id": self.run_id, "experiment": self.experiment, "tracking_uri": self.uri,
            "started_at": self.first_start, "ended_at": ended_at, "status": status, "sessions": sessions,
        }, indent=2) + "\n")

    def _write(self, items: list) -> None:
        from mlflow.entities import Metric

        metrics = []
        for step, loss, lr, rate, stamp in items:
            for key, value in ((LOSS, loss), (LEARNING_RATE, lr), (THROUGHPUT, rate)):
                if value is not None and math.isfinite(value) and step not in self.logged[key]:
                    metrics.append(Metric(key, value, stamp, step))
        if not metrics:
            return
        with uri_lock(self.uri, self.lock_timeout):
            for i in range(0, len(metrics), 1000):
                retry_locked(lambda: self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000]))
        for metric in metrics:
            self.logged[metric.key].add(metric.step)

    def _end(self) -> None:
        from mlflow.entities import Metric

        ended_at = time.time()
        wall = ended_at - self.started_at
        with uri_lock(self.uri, self.lock_timeout):
            retry_locked(lambda: self.client.log_batch(self.run_id, metrics=[
                Metric(JOB_WALL_TIME, wall, int(ended_at * 1000), len(self.sessions))]))
            retry_locked(lambda: self.client.set_terminated(self.run_id, self._status, end_time=int(ended_at * 1000)))
        self._write_link(status=self._status, ended_at=ended_at)


def tracker_from_environment(uri: str | None, experiment: str | None, run_dir: str | Path, config: dict,
                             started_at: float) -> TrainingTracker | None:
    """A tracker when a tracking URI is given (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), else None."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    return TrainingTracker(uri, experiment, run_dir, config, started_at)
