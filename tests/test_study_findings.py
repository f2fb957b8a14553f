"""benchmarks/study_findings.py: the study's contrasts use a paired t interval within one trained model and
Welch's interval between models, each against its definition; the paired interval covers at its level."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from test_pipeline import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import study_findings  # noqa: E402


def frame(values: dict[tuple[str, str], list[float]], dataset: str = "mnist") -> pd.DataFrame:
    rows = [{"dataset": dataset, "method": entry, "sampler": label, "seed": seed, "fid": v, "domain_fd": v / 10}
            for (entry, label), per_seed in values.items() for seed, v in enumerate(per_seed)]
    return pd.DataFrame(rows)


def pick(rows, question, metric="fid"):
    return next(r for r in rows if r["question"] == question and r["metric"] == metric)


def test_within_model_contrast_is_the_paired_t_interval():
    # seed effects shared by both rows (100 vs 140) cancel in the pairs: differences -10.0 and -10.5
    rows = study_findings.findings(frame({("gbm", "dale-langevin"): [100.0, 140.0],
                                          ("gbm", "dale-langevin-correlated"): [90.0, 129.5]}))
    r = pick(rows, "correlated start, paper weight and grid")
    half = stats.t.ppf(0.975, 1) * np.std([-10.0, -10.5], ddof=1) / math.sqrt(2)
    assert r["interval"] == "paired t" and r["df"] == 1
    assert r["difference"] == pytest.approx(-10.25)
    assert (r["low"], r["high"]) == pytest.approx((-10.25 - half, -10.25 + half))
    assert r["verdict"] == "better"  # Welch on the same values (seed sd 28 per side) would not resolve it
    assert pick(rows, "correlated start, paper weight and grid", "domain_fd")["difference"] == pytest.approx(-1.025)


def test_between_model_contrast_is_welch():
    vp, tuned = [88.0, 92.0], [100.0, 97.0]
    rows = study_findings.findings(frame({("vp", "em"): vp, ("gbm-tuned", "dale-langevin"): tuned}))
    r = pick(rows, "GBM (tuned) against VP")
    s2 = np.var(tuned, ddof=1) / 2 + np.var(vp, ddof=1) / 2
    df = s2**2 / ((np.var(tuned, ddof=1) / 2) ** 2 + (np.var(vp, ddof=1) / 2) ** 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(s2)
    assert r["interval"] == "Welch" and r["df"] == pytest.approx(df)
    assert (r["low"], r["high"]) == pytest.approx((8.5 - half, 8.5 + half))
    assert r["verdict"] == "not resolved"
    # rows the run lacks (every other contrast) are skipped, not reported as empty
    assert {x["question"] for x in rows} == {"GBM (tuned) against VP"}


def test_paired_interval_covers_at_its_level():
    rng = np.random.default_rng(3)
    covered = 0
    draws = 4000
    for _ in range(draws):
        seed_effect = 30 * rng.standard_normal(2)  # large shared training variation
        reference = pd.Series(100 + seed_effect + rng.standard_normal(2))
        candidate = pd.Series(95 + seed_effect + rng.standard_normal(2))
        r = study_findings.contrast(candidate, reference, paired=True, level=0.95)
        covered += r["low"] <= -5.0 <= r["high"]
    assert 0.935 <= covered / draws <= 0.965


def test_cli_writes_json_and_markdown(tmp_path):
    metrics = tmp_path / "metrics.csv"
    frame({("vp", "em"): [88.0, 92.0], ("logvp-control", "em"): [120.0, 125.0]}, "fashion_mnist").to_csv(metrics)
    study_findings.main(["--metrics", str(metrics), "--out", str(tmp_path / "out")])
    assert "| fashion_mnist | log-space control against VP | Inception FID |" in (tmp_path / "out" / "findings.md").read_text()
    with pytest.raises(SystemExit):
        study_findings.main(["--metrics", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out")])
    study_findings.main(["--metrics", str(metrics), "--out", str(tmp_path / "out90"), "--level", "0.9"])
    at_90 = (tmp_path / "out90" / "findings.md").read_text()
    assert "difference [90 % interval]" in at_90 and "95 %" not in at_90
    with pytest.raises(SystemExit):
        study_findings.main(["--metrics", str(metrics), "--out", str(tmp_path / "out"), "--level", "95"])


def test_rows_table_prints_seed_mean_sd_collapse_and_the_pipelines_verdicts():
    metrics = frame({("vp", "em"): [88.0, 92.0], ("logvp-control", "em"): [120.0, 126.0]})
    metrics["class_tv"] = 0.2
    metrics["collapse_any"] = [0.0, 0.075, 0.01, 0.02]
    comparisons = pd.DataFrame([{"dataset": "mnist", "method": "logvp-control", "sampler": "em",
                                 "fid_difference": 33.0, "fid_low": 20.0, "fid_high": 46.0, "fid_verdict": "worse",
                                 "domain_fd_difference": 3.3, "domain_fd_low": -1.0, "domain_fd_high": 7.6,
                                 "domain_fd_verdict": "not resolved", "level": 0.95}])
    table = study_findings.rows_markdown(metrics, comparisons)
    assert "ΔFID vs VP [95 %]" in table
    assert "ΔFID vs VP [80 %]" in study_findings.rows_markdown(metrics, comparisons.assign(level=0.8))
    assert ("| VP / Euler-Maruyama (baseline) | 2 | 90.0 ± 2.8 | 9.00 ± 0.28 | 0.20 | 7.5 % | baseline | – | "
            "baseline | – |") in table
    assert ("| 2 | 123.0 ± 4.2 | 12.30 ± 0.42 | 0.20 | 2.0 % | +33.00 [+20.00, +46.00] | worse | "
            "+3.30 [-1.00, +7.60] | not resolved |") in table
