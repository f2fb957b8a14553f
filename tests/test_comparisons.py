"""Comparisons against the baseline: the two-stage bootstrap interval of the difference and its verdict,
on feature sets drawn from known Gaussians (low dimension, fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gbm.metrics.uncertainty import bootstrap
from gbm.pipeline.comparisons import BETTER, UNRESOLVED, WORSE, Arm, compare
from gbm.pipeline.tables import aggregate, benchmark_table

D, N = 4, 120
REFERENCE = np.random.default_rng(100).normal(size=(N, D))


def scored(shift: float, seed: int) -> dict:
    """metrics of N generated features from N(shift, I) against the fixed reference N(0, I)."""
    fake = np.random.default_rng(seed).normal(size=(N, D)) + shift
    result = bootstrap(REFERENCE, fake, draws=400, seed=seed)
    return {"fid": result["protocol"]["fid_centre"], "kid": result["protocol"]["kid_centre"], **result}


def arm(shift: float, seeds, metric: str = "fid") -> Arm:
    runs = [scored(shift, s) for s in seeds]
    return Arm(tuple(r[metric] for r in runs), tuple(np.asarray(r["bootstrap"][metric]) for r in runs))


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_runs_from_one_distribution_are_not_resolved(metric):
    result = compare(arm(0.0, (1, 2), metric), arm(0.0, (3, 4), metric))
    assert result["verdict"] == UNRESOLVED
    assert result["low"] < 0 < result["high"]


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_a_clearly_separated_pair_gets_the_verdict_with_the_right_sign(metric):
    far, near = arm(1.0, (5, 6), metric), arm(0.0, (7, 8), metric)
    worse = compare(far, near)
    assert worse["verdict"] == WORSE and worse["difference"] > 0 and worse["low"] > 0
    better = compare(near, far)
    assert better["verdict"] == BETTER and better["difference"] < 0 and better["high"] < 0


def test_seed_spread_widens_the_interval():
    """Two seeds that disagree (a training effect) must widen the interval beyond sample noise alone."""
    steady, spread = arm(0.3, (9, 10)), arm(0.0, (11,))
    wobbly = Arm((spread.estimates[0], spread.estimates[0] + 2.0),
                 (spread.replicates[0], spread.replicates[0] + 2.0))
    narrow, wide = compare(steady, Arm(spread.estimates * 2, spread.replicates * 2)), compare(steady, wobbly)
    assert wide["high"] - wide["low"] > narrow["high"] - narrow["low"] + 1.0


def write_results(root: Path) -> Path:
    """A results tree with metrics.json as `gbm score` writes them: gbm far from the data, vp close."""
    shifts = {"gbm": 1.0, "vp": 0.0}
    for method, sampler in (("gbm", "sign-agnostic"), ("vp", "em")):
        for seed in (0, 1):
            evaluation = root / "mnist" / method / f"seed{seed}" / sampler / "steps20"
            evaluation.mkdir(parents=True)
            result = scored(shifts[method], 10 * seed + len(method))
            metrics = {"fid": result["fid"], "kid_mean": result["kid"], "n_fake": N, "n_real": N,
                       "fid_ci": result["fid_ci"], "kid_ci": result["kid_ci"], "fid_inf": result["fid"],
                       "bootstrap": result["bootstrap"], "protocol": {"bootstrap": result["protocol"]}}
            (evaluation / "metrics.json").write_text(json.dumps(metrics))
            (evaluation / "samples.json").write_text(json.dumps({"sampler": sampler, "nfe": 20}))
    return root


def test_report_comparisons_writes_tables_and_figure_with_verdicts(tmp_path):
    results = write_results(tmp_path / "results")
    runs = aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))
    runs.to_csv(tmp_path / "metrics.csv", index=False)
    table = benchmark_table(runs).set_index("method")
    assert table.loc["gbm", "fid_ci_low"] < table.loc["gbm", "fid_mean"] < table.loc["gbm", "fid_ci_high"]
    gbm = str(Path(sys.executable).parent / "gbm")
    out = subprocess.run([gbm, "report", "comparisons", "--metrics", str(tmp_path / "metrics.csv"), "--baseline",
                          "vp/em", "--name", "test", "--out-dir", str(tmp_path / "tables"), "--figure",
                          str(tmp_path / "comparisons.png")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(tmp_path / "tables" / "comparisons.csv")
    assert rows[["method", "sampler", "fid_verdict", "kid_verdict"]].values.tolist() == [
        ["gbm", "sign-agnostic", WORSE, WORSE]]
    assert "| mnist | gbm | sign-agnostic | – | 20 | 2 vs 2 |" in (tmp_path / "tables" / "comparisons.md").read_text()
    assert (tmp_path / "comparisons.png").stat().st_size > 0 and (tmp_path / "comparisons.pdf").is_file()


def test_a_baseline_without_runs_is_named(tmp_path):
    results = write_results(tmp_path / "results")
    runs = aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))
    from gbm.pipeline.comparisons import comparisons_table

    with pytest.raises(ValueError, match="comparisons.baseline"):
        comparisons_table(runs, {"method": "ve", "sampler": "em"})


def test_report_over_the_same_metrics_writes_identical_tables(tmp_path):
    """Repeatability: every interval is seeded, so the same metrics give byte-identical tables."""
    from gbm.pipeline.comparisons import comparisons_table, write_comparisons
    from gbm.pipeline.tables import floor_table, write_tables

    results = write_results(tmp_path / "results")
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"fid": 3.5, "kid_mean": 1e-4, "fid_ci": [3.0, 4.0], "fid_inf": 0.5}))
    outputs = []
    for attempt in ("a", "b"):
        runs = aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))
        written = write_tables(runs, floor_table([floor]), tmp_path / attempt, "test")
        written += write_comparisons(comparisons_table(runs, {"method": "vp", "sampler": "em"}), tmp_path / attempt, "test")
        outputs.append({p.name: p.read_bytes() for p in written})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 9
