"""results/timing.json (gbm.reporting.timing): which seconds count as work, and the overhead share they leave."""

import json
import os
import time

import numpy as np
import pytest

from gbm.reporting.timing import compute_seconds, timing_report


@pytest.fixture
def results(tmp_path):
    """A results tree with one of each file that reports work seconds, and two Snakemake benchmark files."""
    r = tmp_path / "results"
    run = r / "mnist" / "gbm" / "seed0" / "run"
    run.mkdir(parents=True)
    (run / "train_metrics.json").write_text(json.dumps({"wall_time_s": 100.0, "fit_s": 4.0}))
    evaluation = r / "mnist" / "gbm" / "seed0" / "dale-langevin" / "steps20"
    evaluation.mkdir(parents=True)
    (evaluation / "samples.json").write_text(json.dumps({"wall_time_s": 20.0}))
    (evaluation / "metrics.json").write_text(json.dumps({"timing": {"features_s": 30.0, "metrics_s": 2.0}}))
    np.savez(evaluation / "neighbours.npz", meta=json.dumps({"timing": {"features_s": 1.0}}))
    (r / "mnist" / "floor.json").write_text(json.dumps({"timing": {"features_s": 10.0, "metrics_s": 1.0}}))
    (r / "tables").mkdir()
    (r / "tables" / "prior_mismatch.json").write_text(json.dumps({"timing": {"metrics_s": 3.0}}))
    now = time.time()
    for rule, job, seconds in (("train", "mnist_gbm_seed0", 110.0), ("score", "mnist_gbm_seed0_dl_steps20", 35.0)):
        tsv = r / "benchmarks" / rule / f"{job}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")
        os.utime(tsv, (now, now))
    return r


def test_work_is_the_loop_and_fit_the_sampler_the_features_and_the_metrics_including_prior_mismatch(results):
    assert compute_seconds(results) == {"training": 104.0, "sampling": 20.0, "feature_extraction": 41.0,
                                        "metrics": 6.0}


def test_overhead_is_the_share_of_core_time_outside_the_work(results):
    report = timing_report(results, cores=2, threads=1)
    wall = report["wall_seconds"]
    assert 110.0 <= wall < 120.0  # from the first job's start (110 s ago) to now
    assert report["compute_core_seconds"] == pytest.approx(171.0)
    assert report["overhead_share"] == pytest.approx(1 - 171.0 / (2 * wall))
    assert report["per_rule"] == {"train": {"jobs": 1, "seconds": 110.0}, "score": {"jobs": 1, "seconds": 35.0}}
    assert timing_report(results, cores=2, threads=2)["compute_core_seconds"] == pytest.approx(342.0)
