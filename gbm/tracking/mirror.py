"""MLflow records mirrored from ``results/``: the files are the source of truth, MLflow a browsable index.

Layout read (written by ``gbm train``, ``gbm sample`` and ``gbm score`` through the pipeline)::

    results/{dataset}/{method}/seed{seed}/run/                  training run directory (mlflow_run.json: its live run)
    results/{dataset}/{method}/seed{seed}/{sampler}/steps{K}/   samples.json, metrics.json, samples.npz

Each training run is one MLflow run (tags ``kind=training``; params from its resolved config; the loss
curve; artifacts): the run ``gbm train`` logged live (``gbm.tracking.live``) is adopted and
completed, or, when the store does not hold it, created with the job's recorded start and end. Each
evaluated sampler is a child run (tags ``kind=evaluation``, ``sampler``, ``steps``, ``row``; FID, KID and
any intervals, NFE, wall times; ``metrics.json`` and a sample grid) spanning its sampling and scoring
jobs. Every record carries ``gbm.key`` (which files it mirrors) and ``gbm.digest`` (their content hash):
syncing again skips unchanged records and replaces changed ones, so ``sync`` is idempotent and rebuilds a
lost store.

A crash at any moment loses nothing: ``gbm.digest`` is the last thing written, after the params, every
metric point, the artifacts and the run's end, so a run without it (a sync killed half-way) is completed
(an adopted live run) or replaced (a created one) by the next sync. The curves (``train_loss``,
``learning_rate``, ``images_per_s``) come from ``loss.csv`` and ``train_log.csv``, each (metric, step) point
logged once; ``job_wall_time_s`` (one point per job session) from the sessions ``mlflow_run.json`` records,
so a live run its job could not close (the tracker failed) and a run rebuilt from the files carry it as a
run the job closed does. Each sync compares a run's stored artifacts with the SHA-256 of the files they mirror, writes
those missing or different again and removes anything else in the run's artifact folder (a killed write's
``.tmp-*`` file); the summary lists what it repaired.

The experiment is tagged as model training, holds the ``training`` and ``evaluations`` views
(``view_url``), and stores artifacts at a location relative to ``mlflow server --artifacts-destination``.

Parallel jobs: writers take an exclusive ``fcntl`` lock next to the store and retry when SQLite reports
a lock (e.g. while ``mlflow ui`` reads). No MLflow failure propagates: it is reported and skipped.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from gbm.data.atomic import write_bytes_atomic
from gbm.pipeline.config import RESOLVED_CONFIG_NAME
from gbm.pipeline.layout import Evaluation, Run

STORE_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"
MAX_CURVE_POINTS = 2000
LIVE_RUN_FILE = "mlflow_run.json"  # in a run directory: the live run `gbm train` logged (gbm.tracking.live)
TRAIN_LOG_NAME = "train_log.csv"  # in a run directory: step,learning_rate,images_per_s (gbm.training.STEP_LOG_NAME)
#: Each training curve: the run-directory file and column it is read from.
CURVES = {"train_loss": ("loss.csv", "loss"), "learning_rate": (TRAIN_LOG_NAME, "learning_rate"),
          "images_per_s": (TRAIN_LOG_NAME, "images_per_s")}
JOB_WALL_TIME = "job_wall_time_s"  # a training run's: one point per job session (gbm.tracking.live)
KEY_TAG, DIGEST_TAG = "gbm.key", "gbm.digest"
SAMPLE_GRID_NAME = "sample_grid.png"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens a custom_model_development experiment on
MODEL_TRAINING_KIND = "custom_model_development"  # its training-runs table, not the GenAI overview
ARTIFACTS_SCHEME = "mlflow-artifacts:/"  # resolved by `mlflow server --artifacts-destination`, not stored absolute
VIEW_TAG = "mlflow.sharedViewState."  # MLflow's UI opens the view in tag VIEW_TAG + NAME at ?viewStateShareKey=NAME
TRAINING_VIEW = {
    "selectedColumns": ["tags.`dataset`", "tags.`method`", "tags.`seed`", "metrics.`train_loss`",
                        "metrics.`learning_rate`", "metrics.`images_per_s`", "metrics.`job_wall_time_s`"],
    "searchFilter": "tags.kind = 'training'", "orderByKey": "attributes.start_time", "orderByAsc": False,
}
EVALUATION_PARAMS = ("method", "sampler", "prior", "seed")  # dataset and steps are in the run name
#: The evaluations view's metric columns, in order (the other metrics stay one click away in "Columns").
EVALUATION_METRICS = ("fid", "fid_ci.low", "fid_ci.high", "kid_mean", "kid_ci.low", "kid_ci.high", "domain.fd", "collapse.any",
                      "nfe")


#: What ``samples.json`` measured (the rest of its numbers are the sampler's settings: params, not metrics).
SAMPLE_OUTCOMES = frozenset({"nfe", "fraction_clamped", "fraction_negative", "nonfinite", "images_per_s",
                             "wall_time_s"})
#: Parts of ``metrics.json`` that record how a number was made (the protocol, the domain classifier, sample
#: sizes): logged as params, so that a run's metrics (and MLflow's compare page) list only outcomes.
SETTING_PARTS = frozenset({"protocol", "classifier", "samples"})
SIZE_FIELDS = frozenset({"n", "n_fake", "n_real"})


def is_setting(key: str) -> bool:
    """Whether a flattened ``metrics.json`` key names a setting of the score rather than a score."""
    parts = key.split(".")
    return bool(SETTING_PARTS & set(parts[:-1])) or parts[-1] in SIZE_FIELDS


def view_url(server: str, experiment_id: str, view: str = "evaluations") -> str:
    """The MLflow UI address of an experiment's runs table in one of our views (``evaluations``, ``training``).

    MLflow 3.17's UI picks GenAI or model-training pages from ``workflowType`` (URL, else the browser's last
    choice, GenAI by default), not from the experiment's kind tag, so the address names it.
    """
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={view}")


def evaluation_view(metric_keys, param_keys, previous: dict | None = None) -> dict:
    """The evaluations view: method, sampler, prior and seed, then FID, KID and their intervals and NFE as
    columns (those any evaluation run has, plus the view's previous columns), best FID first. Few
    enough columns to fit a screen: dataset and steps are in the run name, other metrics under "Columns"."""
    params = [k for k in EVALUATION_PARAMS if k in set(param_keys)]
    metrics = [k for k in EVALUATION_METRICS if k in set(metric_keys)]
    columns = [f"params.`{k}`" for k in params] + [f"metrics.`{k}`" for k in metrics]
    for column in (previous or {}).get("selectedColumns", []):
        if column not in columns:
            columns.append(column)
    return {"selectedColumns": columns, "searchFilter": "tags.kind = 'evaluation'",
            "orderByKey": "metrics.`fid`", "orderByAsc": True}


def tracking_uri(results_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (e.g. a server), else the SQLite store ``results/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_dir).resolve() / STORE_NAME}"


def open_experiment(client, uri: str, name: str) -> str:
    """The id of experiment ``name`` (created if absent), marked as model training for MLflow 3's UI.

    In a SQLite store the experiment's artifact location is ``mlflow-artifacts:/NAME``: relative to the
    server's ``--artifacts-destination`` (``results/mlartifacts``), so moving ``results/`` keeps every
    artifact readable. A tracking server chooses the location itself.
    """
    found = retry_locked(lambda: client.get_experiment_by_name(name))
    if found is None:
        location = f"{ARTIFACTS_SCHEME}{re.sub(r'[^A-Za-z0-9._-]', '_', name)}" if sqlite_store(uri) else None
        try:
            experiment_id = retry_locked(lambda: client.create_experiment(name, artifact_location=location))
        except Exception:  # noqa: BLE001 - another job created it first (a server takes no lock of ours)
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found is not None:
        experiment_id = found.experiment_id
    wanted = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND, f"{VIEW_TAG}training": json.dumps(TRAINING_VIEW)}
    for key, value in wanted.items():
        if found is None or found.tags.get(key) != value:
            retry_locked(lambda: client.set_experiment_tag(experiment_id, key, value))
    return experiment_id


def local_artifact_dir(uri: str, run) -> Path | None:
    """The folder of ``run``'s artifacts in ``mlartifacts/`` next to a SQLite store, else None (kept by MLflow)."""
    store = sqlite_store(uri)
    if store is None or not run.info.artifact_uri.startswith(ARTIFACTS_SCHEME):
        return None
    return store.parent / ARTIFACTS_NAME / run.info.artifact_uri.removeprefix(ARTIFACTS_SCHEME)


def log_artifact(client, uri: str, run, name: str, data: bytes) -> None:
    """Store ``data`` as ``run``'s artifact ``name``: written (atomically) into ``mlartifacts/`` next to a
    SQLite store, else through MLflow (a server, or a store whose experiment predates relocatable locations)."""
    folder = local_artifact_dir(uri, run)
    if folder is not None:
        write_bytes_atomic(folder / name, data)
        return
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(data)
        client.log_artifact(run.info.run_id, str(Path(tmp) / name))


def stored_artifacts(client, uri: str, run) -> dict[str, str]:
    """SHA-256 of each file among ``run``'s stored artifacts, by name (temporary files included)."""
    folder = local_artifact_dir(uri, run)
    if folder is not None:
        if not folder.is_dir():
            return {}
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for entry in retry_locked(lambda: client.list_artifacts(run.info.run_id)):
            if not entry.is_dir:
                local = client.download_artifacts(run.info.run_id, entry.path, tmp)
                found[entry.path] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    return found


@dataclass
class Record:
    """One MLflow run to mirror: identity, tags, params, metrics, a metric curve, artifact files and times."""

    key: str
    name: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    artifacts: list[Path] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    children: list["Record"] = field(default_factory=list)
    start_ms: int | None = None
    end_ms: int | None = None
    linked_run: str | None = None  # the run `gbm train` logged live, adopted rather than duplicated

    def digest(self, salt: str = "") -> str:
        h = hashlib.sha256(salt.encode())
        h.update(json.dumps([self.tags, self.params], sort_keys=True).encode())
        for path in self.sources:
            h.update(path.name.encode())
            h.update(path.read_bytes() if path.is_file() else b"<missing>")
        return h.hexdigest()


@dataclass
class SyncSummary:
    created: int = 0
    adopted: int = 0
    unchanged: int = 0
    deleted: int = 0
    repaired: list[str] = field(default_factory=list)  # "KEY: wrote NAME, ...; removed NAME, ..." per repaired run
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"created": self.created, "adopted": self.adopted, "unchanged": self.unchanged, "deleted": self.deleted,
                "repaired": self.repaired, "failed": self.failed}


def flatten_params(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten_params(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif re.search(r"(^|[._])(ci|interval)$", prefix) and isinstance(value, (list, tuple)) and len(value) == 2:
        out[f"{prefix}.low"], out[f"{prefix}.high"] = value  # an interval, e.g. fid_ci: [low, high]
    else:
        out[prefix] = value


def _numeric(values: dict) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _git_revision(run_dir: Path) -> str:
    env = _read_json(run_dir / "environment.json")
    for key in ("git_revision", "git", "revision"):
        if isinstance(env.get(key), str):
            return env[key]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _csv_curve(path: Path, column: str) -> list[tuple[int, float]]:
    """``(step, value)`` of each finite value in a column of ``loss.csv`` or ``train_log.csv``."""
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [(int(float(r["step"])), float(r[column])) for r in csv.DictReader(f) if r.get(column)]
    return [(step, value) for step, value in rows if math.isfinite(value)]


def job_wall_times(live: dict) -> list[tuple[int, float]]:
    """(session index, seconds) of every ended session of a training job's run file (``mlflow_run.json``):
    the ``job_wall_time_s`` points its live run logs (step = session), so a run the job could not close, or
    one rebuilt from ``results/``, carries them too."""
    points = []
    for index, session in enumerate(live.get("sessions") or []):
        started, ended = session.get("started_at"), session.get("ended_at")
        if isinstance(started, (int, float)) and isinstance(ended, (int, float)):
            points.append((index, ended - started))
    return points


def training_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every training curve (``CURVES``) of a run directory, every step."""
    return {name: _csv_curve(Path(run_dir) / file, column) for name, (file, column) in CURVES.items()}


def thinned(points: list, max_points: int = MAX_CURVE_POINTS) -> list:
    """Every ``len // max_points``-th point: a curve a sync creates (a live run has each step)."""
    return points[::max(1, len(points) // max_points)]


def _ms(seconds) -> int | None:
    return int(seconds * 1000) if isinstance(seconds, (int, float)) else None


def training_record(seed_dir: Path, config_name: str) -> Record:
    """The record of ``results/{dataset}/{method}/seed{seed}`` and of its evaluated samplers."""
    seed_dir = Path(seed_dir)
    run = Run.from_seed_dir(seed_dir)
    dataset, method, seed = run.dataset, run.method, str(run.seed)
    run_dir = seed_dir / "run"
    tags = {"kind": "training", "dataset": dataset, "method": method, "seed": seed, "config": config_name,
            "git_revision": _git_revision(run_dir)}
    params: dict = {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        flatten_params("", yaml.safe_load(config_path.read_text()) or {}, params)
    params = {k: str(v)[:500] for k, v in params.items()}
    flat: dict = {}
    flatten_params("", _read_json(run_dir / "train_metrics.json"), flat)
    live = _read_json(run_dir / LIVE_RUN_FILE)
    files = [run_dir / name for name in ("config.yaml", "environment.json", "train_metrics.json", "loss.csv",
                                         TRAIN_LOG_NAME)]
    files.append(seed_dir.parents[2] / RESOLVED_CONFIG_NAME)  # the pipeline run's whole configuration
    record = Record(
        key=f"{dataset}/{method}/seed{seed}", name=f"{dataset}/{method}/seed{seed}", tags=tags, params=params,
        metrics={f"train.{k}": v for k, v in _numeric(flat).items()},
        curves=training_curves(run_dir) | {JOB_WALL_TIME: job_wall_times(live)},
        artifacts=[p for p in files if p.is_file()], sources=files, start_ms=_ms(live.get("started_at")),
        end_ms=_ms(live.get("ended_at")), linked_run=live.get("run_id"),
    )
    for metrics_path in sorted(seed_dir.glob("*/steps*/metrics.json")):
        record.children.append(evaluation_record(metrics_path.parent, record, config_name))
    return record


def evaluation_record(eval_dir: Path, parent: Record, config_name: str) -> Record:
    """The record of one evaluated sampler, ``.../{sampler}/steps{K}/``: from the start of its sampling job
    to the end of its scoring job, FID/KID (and whatever intervals ``metrics.json`` holds) as metrics,
    and dataset, method, sampler, prior, steps and seed as params (columns of the runs table)."""
    evaluation = Evaluation.from_directory(eval_dir)
    sampler, steps = evaluation.sampler, str(evaluation.steps)
    tags = dict(parent.tags, kind="evaluation", sampler=sampler, steps=steps,
                row=f"{parent.tags['dataset']}|{parent.tags['method']}|{sampler}|{steps}")
    scores, stats = _read_json(eval_dir / "metrics.json"), _read_json(eval_dir / "samples.json")
    sample_job, score_job = stats.pop("job", None) or {}, scores.pop("job", None) or {}
    flat: dict = {}
    flatten_params("", scores, flat)
    sample_stats: dict = {}
    flatten_params("", stats, sample_stats)
    tags["prior"] = str(stats.get("prior", "n/a"))  # the start distribution x_T (gbm sample --prior)
    scored = _numeric(flat)
    metrics = {k: v for k, v in scored.items() if not is_setting(k)}
    metrics.update({f"sample.{k}": v for k, v in _numeric(sample_stats).items() if k in SAMPLE_OUTCOMES})
    if "nfe" in stats:
        metrics["nfe"] = float(stats["nfe"])
    params = {k: str(v)[:500] for k, v in sample_stats.items() if k not in SAMPLE_OUTCOMES}
    params.update({k: str(v)[:500] for k, v in scored.items() if is_setting(k)})
    params.update({k: tags[k] for k in ("dataset", "method", "sampler", "steps", "seed")})
    if stats.get("prior") is not None:
        params["prior"] = str(stats["prior"])[:500]
    for name, job in (("sample", sample_job), ("score", score_job)):
        if isinstance(job.get("wall_time_s"), (int, float)):
            metrics[f"{name}.job_wall_time_s"] = float(job["wall_time_s"])
    files = [eval_dir / "metrics.json", eval_dir / "samples.json"]
    return Record(key=f"{parent.key}/{sampler}/steps{steps}", name=f"{parent.name}/{sampler}/steps{steps}",
                  tags=tags, params=params, metrics=metrics, artifacts=[p for p in files if p.is_file()],
                  sources=files + [eval_dir / "samples.npz"], start_ms=_ms(sample_job.get("started_at")),
                  end_ms=_ms(score_job.get("finished_at")))


def discover(results_dir: Path) -> list[Path]:
    """Every training seed directory under ``results/`` that holds a finished run."""
    return sorted(p.parent.parent for p in Path(results_dir).glob("*/*/seed*/run/train_metrics.json"))


@contextmanager
def store_lock(results_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive lock serialising writers of the store ``results_dir/mlflow.db`` (released on exit, even on a crash)."""
    with file_lock(Path(results_dir) / f"{STORE_NAME}.lock", timeout):
        yield


@contextmanager
def file_lock(path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``path`` (created if absent), waiting at most ``timeout`` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"MLflow store lock {path} held for more than {timeout} s")
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def sqlite_store(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None (a tracking server serialises itself)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def uri_lock(uri: str, timeout: float = 600.0) -> Iterator[None]:
    """The writers' lock of a SQLite store (the one ``store_lock`` takes); no lock for a server."""
    store = sqlite_store(uri)
    if store is None:
        yield
        return
    with file_lock(store.with_name(f"{store.name}.lock"), timeout):
        yield


def retry_locked(action, attempts: int = 8, first_wait: float = 0.25):
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - SQLite/SQLAlchemy/MLflow raise many types for a lock
            if "locked" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2**attempt)


def _sample_grid_png(samples_npz: Path, count: int = 64) -> bytes | None:
    """A PNG grid of the first ``count`` images of ``samples.npz`` (None when the file is absent)."""
    import numpy as np
    from PIL import Image

    if not samples_npz.is_file():
        return None
    with np.load(samples_npz) as data:
        images = data["images"][:count]
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((c, rows * h, cols * w), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    png = io.BytesIO()
    Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0)).save(png, format="png")
    return png.getvalue()


def artifact_payloads(record: Record) -> dict[str, bytes]:
    """The artifacts ``record``'s run must hold, by name: its artifact files and, for an evaluation, the
    sample grid drawn from ``samples.npz``."""
    payloads = {path.name: path.read_bytes() for path in record.artifacts if path.is_file()}
    grid = next((p for p in record.sources if p.name == "samples.npz"), None)
    png = _sample_grid_png(grid) if grid is not None else None
    if png is not None:
        payloads[SAMPLE_GRID_NAME] = png
    return payloads


class Mirror:
    """Writes records into one MLflow experiment: adopts the runs ``gbm train`` logged live, skips those
    already mirrored unchanged, creates the rest with the times the jobs recorded."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = open_experiment(self.client, uri, experiment)

    def active_runs(self, key_prefix: str | None = None) -> list:
        query = f"tags.`gbm.key` LIKE '{key_prefix}%'" if key_prefix else ""
        runs, token = [], None
        while True:
            page = retry_locked(lambda: self.client.search_runs([self.experiment_id], filter_string=query,
                                                          max_results=1000, page_token=token))
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def set_evaluation_view(self, metric_keys: set, param_keys: set) -> None:
        experiment = retry_locked(lambda: self.client.get_experiment(self.experiment_id))
        previous = json.loads(experiment.tags.get(f"{VIEW_TAG}evaluations", "{}"))
        view = json.dumps(evaluation_view(metric_keys, param_keys, previous))
        if experiment.tags.get(f"{VIEW_TAG}evaluations") != view:
            retry_locked(lambda: self.client.set_experiment_tag(self.experiment_id, f"{VIEW_TAG}evaluations", view))

    def live_run(self, record: Record):
        """The run ``gbm train`` logged for this record, when it is in this store and experiment. Only a run the
        store does not hold counts as absent (e.g. a store rebuilt from results/); any other error fails this
        record's sync (reported; the next sync retries) rather than have the live run replaced and deleted."""
        from mlflow.exceptions import MlflowException

        if record.linked_run is None:
            return None
        try:
            run = retry_locked(lambda: self.client.get_run(record.linked_run))
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            return None
        return run

    def _log(self, run_id: str, params: dict, metrics: list) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(params), 100):  # MLflow's log_batch limits: 100 params, 1000 metrics
            retry_locked(lambda: self.client.log_batch(run_id, params=params[i:i + 100]))
        for i in range(0, len(metrics), 1000):
            retry_locked(lambda: self.client.log_batch(run_id, metrics=metrics[i:i + 1000]))

    def complete_artifacts(self, run, payloads: dict[str, bytes]) -> list[str]:
        """Make ``run``'s stored artifacts exactly ``payloads``: write those missing or different (by SHA-256)
        and remove any other file of its local artifact folder (e.g. a killed write's ``.tmp-*``). Returns
        what it did, one phrase per file ("wrote NAME", "removed NAME")."""
        stored = stored_artifacts(self.client, self.uri, run)
        done = []
        for name, data in payloads.items():
            if stored.get(name) != hashlib.sha256(data).hexdigest():
                log_artifact(self.client, self.uri, run, name, data)
                done.append(f"wrote {name}")
        folder = local_artifact_dir(self.uri, run)
        for name in sorted(set(stored) - set(payloads)):
            if folder is not None:
                (folder / name).unlink(missing_ok=True)
                done.append(f"removed {name}")
        return done

    def _missing_points(self, run, record: Record, end: int) -> list:
        """The curve points and scalar metrics of ``record`` that ``run`` does not hold yet."""
        from mlflow.entities import Metric

        run_id = run.info.run_id
        metrics = [Metric(k, v, end, 0) for k, v in record.metrics.items() if run.data.metrics.get(k) != v]
        for name, points in record.curves.items():
            if not points:
                continue
            logged = {m.step for m in retry_locked(lambda: self.client.get_metric_history(run_id, name))}
            metrics += [Metric(name, v, end, s) for s, v in points if s not in logged]
        return metrics

    def adopt(self, run, record: Record, tags: dict, payloads: dict[str, bytes]) -> None:
        """Complete a live training run with what only the finished files hold: params, the metric points its
        job did not log (from ``loss.csv`` and ``train_log.csv``), the artifacts and its end."""
        from mlflow.entities import RunTag

        run_id, end = run.info.run_id, record.end_ms or int(time.time() * 1000)
        retry_locked(lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        self._log(run_id, {k: v for k, v in record.params.items() if k not in run.data.params},
                  self._missing_points(run, record, end))
        self.complete_artifacts(run, payloads)
        if run.info.status == "RUNNING":  # its job ended without closing it, yet its files are complete
            retry_locked(lambda: self.client.set_terminated(run_id, "FINISHED", end_time=end))

    def write(self, record: Record, existing: dict, summary: SyncSummary, parent_id: str | None = None) -> str:
        """Mirror ``record`` (and its children); its ``gbm.digest`` tag is written last, once all else is stored."""
        from mlflow.entities import Metric

        digest = record.digest(salt=parent_id or "")
        payloads = artifact_payloads(record)
        old = existing.get(record.key, [])
        live = self.live_run(record)
        keep = [live] if live is not None else [r for r in old if r.data.tags.get(DIGEST_TAG) == digest][:1]
        for run in old:
            if not keep or run.info.run_id != keep[0].info.run_id:
                retry_locked(lambda: self.client.delete_run(run.info.run_id))
                summary.deleted += 1
        tags = dict(record.tags, **{KEY_TAG: record.key})
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if keep and keep[0].data.tags.get(DIGEST_TAG) == digest:
            run_id = keep[0].info.run_id
            repairs = self.complete_artifacts(keep[0], payloads)
            if repairs:
                summary.repaired.append(f"{record.key}: {', '.join(repairs)}")
            else:
                summary.unchanged += 1
        else:
            if live is not None:
                self.adopt(live, record, tags, payloads)
                summary.adopted += 1
                run_id = live.info.run_id
            else:
                now = int(time.time() * 1000)
                run = retry_locked(lambda: self.client.create_run(self.experiment_id, start_time=record.start_ms or now,
                                                            run_name=record.name, tags=tags))
                run_id, end = run.info.run_id, record.end_ms or now
                metrics = [Metric(k, v, end, 0) for k, v in record.metrics.items()]
                metrics += [Metric(name, value, end, step) for name, points in record.curves.items()
                            for step, value in thinned(points)]
                self._log(run_id, record.params, metrics)
                self.complete_artifacts(run, payloads)
                retry_locked(lambda: self.client.set_terminated(run_id, "FINISHED", end_time=end))
                summary.created += 1
            retry_locked(lambda: self.client.set_tag(run_id, DIGEST_TAG, digest))  # the record is complete
        for child in record.children:
            self.write(child, existing, summary, parent_id=run_id)
        return run_id


def sync(results_dir: str | Path, experiment: str, seed_dirs: list[Path] | None = None,
         uri: str | None = None, lock_timeout: float = 600.0) -> SyncSummary:
    """Mirror training runs (all under ``results_dir`` when ``seed_dirs`` is None) into MLflow.

    A full sync also deletes MLflow runs whose files no longer exist, so the experiment equals
    ``results/``. Never raises: failures are listed in the summary.
    """
    results_dir = Path(results_dir)
    summary = SyncSummary()
    full = seed_dirs is None
    seed_dirs = discover(results_dir) if full else [Path(p) for p in seed_dirs]
    try:
        with store_lock(results_dir, lock_timeout):
            mirror = Mirror(uri or tracking_uri(results_dir), experiment)
            records = [training_record(p, experiment) for p in seed_dirs]
            existing: dict[str, list] = {}
            for run in mirror.active_runs():
                existing.setdefault(run.data.tags.get(KEY_TAG, ""), []).append(run)
            for record in records:
                try:
                    mirror.write(record, existing, summary)
                except Exception as error:  # noqa: BLE001 - MLflow never fails a job
                    summary.failed.append(f"{record.key}: {type(error).__name__}: {error}")
            evaluations = [c for r in records for c in r.children]
            if evaluations:
                mirror.set_evaluation_view({k for c in evaluations for k in c.metrics},
                                           {k for c in evaluations for k in c.params})
            if full:
                wanted = {r.key for r in records} | {c.key for r in records for c in r.children}
                for key, runs in existing.items():
                    if key not in wanted:
                        for run in runs:
                            retry_locked(lambda: mirror.client.delete_run(run.info.run_id))
                            summary.deleted += 1
    except Exception as error:  # noqa: BLE001 - MLflow never fails a job
        summary.failed.append(f"store: {type(error).__name__}: {error}")
    for failure in summary.failed:
        print(f"gbm mlflow-sync: warning: not recorded in MLflow (files under {results_dir} are kept): "
              f"{failure}", file=sys.stderr)
    return summary
