"""Where the benchmark's wall time went: training, sampling and feature extraction versus overhead.

Snakemake's ``benchmark:`` files give each job's wall time and (from their modification time) when it
ended; the ``gbm`` commands report the seconds they spent in the work itself (training: the loop and the fit of the method's
data-dependent parameters, e.g. GBM's priors; sampler; Inception features; and the metrics: half-sample
intervals, FID_inf and SID from the features, and the prior-mismatch table's Fréchet distances). Overhead is
the share of the available core-time (wall time x cores) not spent in that work (each compute second occupies ``min(threads, cores)`` cores): process start-up, imports, data
loading, scheduling, idle cores, tables, figures, MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from gbm.reporting.tables import pick

WALL_KEYS = ("wall_time_s", "features_s")


def _seconds(path: Path, *prefixes: str) -> float:
    if not path.is_file():
        return 0.0
    values = json.loads(path.read_text())
    names = [f"{p}.{k}" if p else k for p in (*prefixes, "") for k in WALL_KEYS]
    value = pick(values, *names, default=0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def job_times(results: Path) -> list[dict]:
    """One entry per finished job: rule, name, wall seconds, end time (epoch)."""
    jobs = []
    for tsv in sorted((Path(results) / "benchmarks").glob("*/*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        header, values = lines[0].split("\t"), lines[1].split("\t")
        seconds = float(dict(zip(header, values))["s"])
        jobs.append({"rule": tsv.parent.name, "job": tsv.stem, "seconds": seconds, "end": tsv.stat().st_mtime})
    return jobs


def compute_seconds(results: Path) -> dict[str, float]:
    """Seconds the gbm commands spent training, sampling, extracting features and computing metrics from them."""
    results = Path(results)
    train = sum(_seconds(p, "training") + _fit_seconds(p) for p in results.glob("*/*/seed*/run/train_metrics.json"))
    sample = sum(_seconds(p) for p in results.glob("*/*/seed*/*/steps*/samples.json"))
    features = sum(_seconds(p, "timing") for p in results.glob("*/*/seed*/*/steps*/metrics.json"))
    features += sum(_seconds(p, "timing") for p in results.glob("*/floor.json"))
    scored = [*results.glob("*/*/seed*/*/steps*/metrics.json"), *results.glob("*/floor.json")]
    metrics = sum(_metric_seconds(p) for p in scored)
    metrics += sum(_metric_seconds(p) for p in results.glob("tables/prior_mismatch.json"))
    for path in results.glob("*/*/seed*/*/steps*/neighbours.npz"):
        with np.load(path) as archive:
            meta = json.loads(str(archive["meta"])) if "meta" in archive else {}
        features += float(pick(meta, "timing.features_s", default=0.0))
    return {"training": train, "sampling": sample, "feature_extraction": features, "metrics": metrics}


def _seconds_at(path: Path, key: str) -> float:
    """The number at ``key`` (dotted) in a JSON file; 0 when it is absent."""
    value = pick(json.loads(path.read_text()), key, default=0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _fit_seconds(path: Path) -> float:
    """Seconds a training run spent fitting its method's data-dependent parameters (SDE statistics, priors)."""
    return _seconds_at(path, "fit_s")


def _metric_seconds(path: Path) -> float:
    return _seconds_at(path, "timing.metrics_s")


def timing_report(results: Path, cores: int, threads: int) -> dict:
    jobs = job_times(results)
    if not jobs:
        raise ValueError(f"results: no Snakemake benchmark files under {Path(results) / 'benchmarks'}")
    start = min(j["end"] - j["seconds"] for j in jobs)
    wall = time.time() - start
    compute = compute_seconds(results)
    work = sum(compute.values()) * min(threads, cores)  # core-seconds
    per_rule: dict[str, dict] = {}
    for job in jobs:
        entry = per_rule.setdefault(job["rule"], {"jobs": 0, "seconds": 0.0})
        entry["jobs"] += 1
        entry["seconds"] += job["seconds"]
    return {
        "wall_seconds": wall,
        "compute_seconds": compute,
        "cores": cores,
        "threads_per_compute_job": threads,
        "core_seconds": wall * cores,
        "compute_core_seconds": work,
        "overhead_share": 1 - work / (wall * cores) if wall > 0 else None,
        "jobs": len(jobs),
        "per_rule": per_rule,
        "note": "wall time from the first job's start to this job; Snakemake's start-up before the first job "
                "is not included (add it from the shell's own timing)",
    }
