"""MLflow records mirrored from ``results/``: the files are the source of truth, MLflow a browsable index.

Layout read (written by ``gbm train``, ``gbm sample`` and ``gbm score`` through the pipeline)::

    results/{dataset}/{method}/seed{seed}/run/                  training run directory
    results/{dataset}/{method}/seed{seed}/{sampler}/steps{K}/   samples.json, metrics.json, samples.npz

Each training run becomes one MLflow run (tags ``kind=training``; params from its resolved config; the
loss curve; artifacts), and each evaluated sampler a child run (tags ``kind=evaluation``, ``sampler``,
``steps``, ``row``; FID, KID, NFE, wall times; ``metrics.json`` and a sample grid). Every record carries
``gbm.key`` (which files it mirrors) and ``gbm.digest`` (their content hash): syncing again skips
unchanged records and replaces changed ones, so ``sync`` is idempotent and rebuilds a lost store.

Parallel jobs: writers take an exclusive ``fcntl`` lock next to the store and retry when SQLite reports
a lock (e.g. while ``mlflow ui`` reads). No MLflow failure propagates: it is reported and skipped.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from gbm.pipeline.config import RESOLVED_CONFIG_NAME

STORE_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlartifacts"
MAX_CURVE_POINTS = 2000


def tracking_uri(results_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (e.g. a server), else the SQLite store ``results/mlflow.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(results_dir).resolve() / STORE_NAME}"


@dataclass
class Record:
    """One MLflow run to mirror: identity, tags, params, metrics, a metric curve and artifact files."""

    key: str
    name: str
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    curve_name: str = "train_loss"
    artifacts: list[Path] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    children: list["Record"] = field(default_factory=list)

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
    unchanged: int = 0
    deleted: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"created": self.created, "unchanged": self.unchanged, "deleted": self.deleted,
                "failed": self.failed}


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
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


def _loss_curve(path: Path) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [(int(float(r["step"])), float(r["loss"])) for r in csv.DictReader(f) if r.get("loss")]
    stride = max(1, len(rows) // MAX_CURVE_POINTS)
    return rows[::stride]


def training_record(seed_dir: Path, config_name: str) -> Record:
    """The record of ``results/{dataset}/{method}/seed{seed}`` and of its evaluated samplers."""
    seed_dir = Path(seed_dir)
    dataset, method, seed = seed_dir.parent.parent.name, seed_dir.parent.name, seed_dir.name.removeprefix("seed")
    run_dir = seed_dir / "run"
    tags = {"kind": "training", "dataset": dataset, "method": method, "seed": seed, "config": config_name,
            "git_revision": _git_revision(run_dir)}
    params: dict = {}
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        _flatten("", yaml.safe_load(config_path.read_text()) or {}, params)
    params = {k: str(v)[:500] for k, v in params.items()}
    flat: dict = {}
    _flatten("", _read_json(run_dir / "train_metrics.json"), flat)
    files = [run_dir / name for name in ("config.yaml", "environment.json", "train_metrics.json", "loss.csv")]
    files.append(seed_dir.parents[2] / RESOLVED_CONFIG_NAME)  # the pipeline run's whole configuration
    record = Record(
        key=f"{dataset}/{method}/seed{seed}", name=f"{dataset}/{method}/seed{seed}", tags=tags, params=params,
        metrics={f"train.{k}": v for k, v in _numeric(flat).items()}, curve=_loss_curve(run_dir / "loss.csv"),
        artifacts=[p for p in files if p.is_file()], sources=files,
    )
    for metrics_path in sorted(seed_dir.glob("*/steps*/metrics.json")):
        record.children.append(evaluation_record(metrics_path.parent, record, config_name))
    return record


def evaluation_record(eval_dir: Path, parent: Record, config_name: str) -> Record:
    """The record of one evaluated sampler, ``.../{sampler}/steps{K}/``."""
    sampler, steps = eval_dir.parent.name, eval_dir.name.removeprefix("steps")
    tags = dict(parent.tags, kind="evaluation", sampler=sampler, steps=steps,
                row=f"{parent.tags['dataset']}|{parent.tags['method']}|{sampler}|{steps}")
    flat: dict = {}
    _flatten("", _read_json(eval_dir / "metrics.json"), flat)
    sample_stats: dict = {}
    samples = _read_json(eval_dir / "samples.json")
    _flatten("", samples, sample_stats)
    tags["prior"] = str(samples.get("prior", "n/a"))  # the start distribution x_T (gbm sample --prior)
    metrics = _numeric(flat)
    metrics.update({f"sample.{k}": v for k, v in _numeric(sample_stats).items()})
    params = {k: str(v)[:500] for k, v in sample_stats.items()
              if not isinstance(v, (int, float)) or isinstance(v, bool)}
    files = [eval_dir / "metrics.json", eval_dir / "samples.json"]
    return Record(key=f"{parent.key}/{sampler}/steps{steps}", name=f"{parent.name}/{sampler}/steps{steps}",
                  tags=tags, params=params, metrics=metrics, artifacts=[p for p in files if p.is_file()],
                  sources=files + [eval_dir / "samples.npz"])


def discover(results_dir: Path) -> list[Path]:
    """Every training seed directory under ``results/`` that holds a finished run."""
    return sorted(p.parent.parent for p in Path(results_dir).glob("*/*/seed*/run/train_metrics.json"))


@contextmanager
def store_lock(results_dir: Path, timeout: float = 600.0) -> Iterator[None]:
    """Exclusive lock serialising writers of one store (released on exit, even on a crash)."""
    path = Path(results_dir) / f"{STORE_NAME}.lock"
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


def _retry(action, attempts: int = 8, first_wait: float = 0.25):
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - SQLite/SQLAlchemy/MLflow raise many types for a lock
            if "locked" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(first_wait * 2**attempt)


def _sample_grid_png(samples_npz: Path, out: Path, count: int = 64) -> bool:
    import numpy as np
    from PIL import Image

    if not samples_npz.is_file():
        return False
    with np.load(samples_npz) as data:
        images = data["images"][:count]
    n, c, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((c, rows * h, cols * w), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = image
    Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0)).save(out)
    return True


class Mirror:
    """Writes records into one MLflow experiment, skipping those already mirrored unchanged."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = _retry(lambda: self.client.get_experiment_by_name(experiment))
        if found is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = _retry(lambda: self.client.create_experiment(
                experiment, artifact_location=artifact_root.resolve().as_uri()))
        else:
            self.experiment_id = found.experiment_id

    def active_runs(self, key_prefix: str | None = None) -> list:
        query = f"tags.`gbm.key` LIKE '{key_prefix}%'" if key_prefix else ""
        runs, token = [], None
        while True:
            page = _retry(lambda: self.client.search_runs([self.experiment_id], filter_string=query,
                                                          max_results=1000, page_token=token))
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def write(self, record: Record, existing: dict, summary: SyncSummary, parent_id: str | None = None) -> str:
        from mlflow.entities import Metric, Param

        digest = record.digest(salt=parent_id or "")
        old = existing.get(record.key, [])
        keep = [r for r in old if r.data.tags.get("gbm.digest") == digest]
        for run in old:
            if not keep or run.info.run_id != keep[0].info.run_id:
                _retry(lambda: self.client.delete_run(run.info.run_id))
                summary.deleted += 1
        if keep:
            summary.unchanged += 1
            run_id = keep[0].info.run_id
        else:
            tags = dict(record.tags, **{"gbm.key": record.key, "gbm.digest": digest})
            if parent_id:
                tags["mlflow.parentRunId"] = parent_id
            run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=record.name, tags=tags))
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in record.metrics.items()]
            metrics += [Metric(record.curve_name, loss, now, step) for step, loss in record.curve]
            params = [Param(k, v) for k, v in record.params.items()]
            for i in range(0, len(params), 100):  # MLflow's log_batch limits: 100 params, 1000 metrics
                _retry(lambda: self.client.log_batch(run_id, params=params[i:i + 100]))
            for i in range(0, len(metrics), 1000):
                _retry(lambda: self.client.log_batch(run_id, metrics=metrics[i:i + 1000]))
            for path in record.artifacts:
                self.client.log_artifact(run_id, str(path))
            grid = next((p for p in record.sources if p.name == "samples.npz"), None)
            if grid is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    png = Path(tmp) / "sample_grid.png"
                    if _sample_grid_png(grid, png):
                        self.client.log_artifact(run_id, str(png))
            _retry(lambda: self.client.set_terminated(run_id, "FINISHED"))
            summary.created += 1
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
            mirror = Mirror(uri or tracking_uri(results_dir), experiment, results_dir / ARTIFACTS_NAME)
            records = [training_record(p, experiment) for p in seed_dirs]
            existing: dict[str, list] = {}
            for run in mirror.active_runs():
                existing.setdefault(run.data.tags.get("gbm.key", ""), []).append(run)
            for record in records:
                try:
                    mirror.write(record, existing, summary)
                except Exception as error:  # noqa: BLE001 - MLflow never fails a job
                    summary.failed.append(f"{record.key}: {type(error).__name__}: {error}")
            if full:
                wanted = {r.key for r in records} | {c.key for r in records for c in r.children}
                for key, runs in existing.items():
                    if key not in wanted:
                        for run in runs:
                            _retry(lambda: mirror.client.delete_run(run.info.run_id))
                            summary.deleted += 1
    except Exception as error:  # noqa: BLE001 - MLflow never fails a job
        summary.failed.append(f"store: {type(error).__name__}: {error}")
    for failure in summary.failed:
        print(f"gbm mlflow-sync: warning: not recorded in MLflow (files under {results_dir} are kept): "
              f"{failure}", file=sys.stderr)
    return summary
