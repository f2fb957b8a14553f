"""The GBM ablation table (gbm.reporting.ablation): each GBM setting of a config and its changes from the paper's."""

from pathlib import Path

import pandas as pd
import pytest

from gbm.reporting.ablation import ablation_table, gbm_settings
from gbm.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_default_config_sets_gbm_paper_beside_gbm_tuned():
    settings = gbm_settings(load_config(REPO / "config" / "config.yaml"))
    assert set(settings) == {"gbm/sign-agnostic", "gbm/dale-langevin", "gbm/dale-langevin-sqrt-t",
                             "gbm/dale-langevin-correlated", "gbm-tuned/dale-langevin"}
    assert settings["gbm/dale-langevin"] == {"weighting": "paper", "grid": "uniform-t", "end_time": 0.0,
                                             "prior": "iid", "sigma": 0.8, "T": 1.0, "practical": False}
    paper = {"weighting": "paper", "grid": "uniform-t", "end_time": 0.0, "prior": "iid"}
    assert settings["gbm-tuned/dale-langevin"] | paper == settings["gbm/dale-langevin"]
    assert settings["gbm-tuned/dale-langevin"]["weighting"] == "uniform-eps"
    assert settings["gbm-tuned/dale-langevin"]["prior"] == "correlated"  # SPEC §1a: weight + sqrt-t grid + prior
    assert settings["gbm/dale-langevin-correlated"] == settings["gbm/dale-langevin"] | {"prior": "correlated"}
    assert settings["gbm/dale-langevin-sqrt-t"] == settings["gbm/dale-langevin"] | {"grid": "sqrt-t", "end_time": 1e-3}


def test_ablation_rows_name_their_changes_from_the_paper_setting_fewest_first():
    settings = gbm_settings(load_config(REPO / "config" / "paper.yaml"))
    table = pd.DataFrame([
        {"dataset": "mnist", "method": m, "sampler": s, "steps": 100, "fid_mean": fid, "fid_std": 1.0, "n": 10, "seeds": 3}
        for m, s, fid in [("gbm-tuned", "dale-langevin", 110.0), ("gbm", "dale-langevin-exact", 140.0),
                          ("gbm-uniform-eps", "dale-langevin-exact", 120.0), ("vp", "em", 130.0),
                          ("gbm-sigma0p5", "dale-langevin-exact", 150.0)]
    ])
    ablation = ablation_table(table, settings)
    assert list(ablation["method"]) == ["gbm", "gbm-uniform-eps", "gbm-sigma0p5", "gbm-tuned"]  # no vp row
    assert list(ablation["changes"]) == [0, 1, 1, 3]
    assert ablation["change_from_paper"][0] == "none (the paper's setting)"
    assert ablation["change_from_paper"][1] == "weighting=uniform-eps"
    assert ablation["change_from_paper"][2] == "sigma=0.5"
    assert ablation["change_from_paper"][3] == "weighting=uniform-eps, grid=sqrt-t, end_time=0.001"
    authors = gbm_settings(load_config(REPO / "config" / "paper.yaml"))["gbm/dale-langevin"]
    assert authors["practical"] is True  # the authors' delta, L, gamma are a change from the exact sampler


def test_tables_step_writes_the_ablation_table_from_the_config_settings(tmp_path):
    import json

    from gbm.reporting.tables import floor_table, write_tables

    runs = pd.DataFrame([
        {"dataset": "mnist", "method": m, "seed": 0, "sampler": "dale-langevin", "sampler_method": "dale-langevin",
         "guided": False, "steps": 20, "nfe": 20, "n": 16, "n_reference": 16, "reference_split": "test",
         "fid": fid, "kid": 0.1, "kid_subset_std": 0.0, "precision": None}
        for m, fid in [("gbm", 272.0), ("gbm-tuned", 145.5), ("vp", 145.3)]
    ])
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"dataset": "mnist", "n": 16, "fid": 1.0, "kid_mean": 0.0}))
    settings = gbm_settings(load_config(REPO / "config" / "config.yaml"))
    write_tables(runs, floor_table([floor]), tmp_path, "test", gbm_settings=settings)
    lines = (tmp_path / "ablation.md").read_text().splitlines()
    paper = next(line for line in lines if "gbm / dale-langevin" in line)
    tuned = next(line for line in lines if "gbm-tuned / dale-langevin" in line)
    assert "none (the paper's setting)" in paper and "272.00" in paper
    assert "weighting=uniform-eps, grid=sqrt-t, end_time=0.001" in tuned and "145.50" in tuned
    assert not any("vp /" in line for line in lines)


def test_each_changed_setting_is_compared_with_the_papers_setting_of_its_own_sampler(tmp_path):
    """ΔFID against the paper row with the same sampler (a prior row of sign-agnostic against sign-agnostic,
    not dale-langevin), with the comparisons' Welch interval over seeds and its verdict."""
    import json

    import numpy as np

    from gbm.reporting.tables import benchmark_table

    rng = np.random.default_rng(0)
    fids = {("gbm", "sign-agnostic"): 100.0, ("gbm", "dale-langevin"): 200.0,
            ("gbm", "sign-agnostic-correlated"): 90.0, ("gbm", "dale-langevin-correlated"): 200.5,
            ("gbm-tuned", "dale-langevin"): 150.0}
    rows = []
    for (method, label), fid in fids.items():
        for seed in (0, 1):
            path = tmp_path / method / str(seed) / label
            path.mkdir(parents=True)
            value = fid + 0.2 * seed
            (path / "metrics.json").write_text(json.dumps({"fid": value}))
            rows.append({"dataset": "mnist", "method": method, "seed": seed, "sampler": label,
                         "sampler_method": label.removesuffix("-correlated"), "prior": "iid", "guided": False,
                         "steps": 100, "nfe": 100, "n": 200, "reference_split": "test", "fid": value, "kid": 0.0,
                         "path": str(path)})
    runs = pd.DataFrame(rows)
    methods = {"gbm": {"samplers": {"sign-agnostic": {}, "dale-langevin": {},
                                    "sign-agnostic-correlated": {"sampler": "sign-agnostic", "prior": "correlated"},
                                    "dale-langevin-correlated": {"sampler": "dale-langevin", "prior": "correlated"}}},
               "gbm-tuned": {"method": "gbm", "loss": {"weighting": "uniform-eps"}, "samplers": {"dale-langevin": {}}}}
    ablation = ablation_table(benchmark_table(runs), gbm_settings({"methods": methods}), runs)
    by_row = {f"{r.method}/{r.sampler}": r for r in ablation.itertuples()}
    assert by_row["gbm/sign-agnostic-correlated"].paper_row == "gbm / sign-agnostic"
    assert by_row["gbm/sign-agnostic-correlated"].fid_difference == pytest.approx(-10.0)
    assert by_row["gbm/sign-agnostic-correlated"].fid_verdict == "better"
    assert by_row["gbm-tuned/dale-langevin"].paper_row == "gbm / dale-langevin"
    assert by_row["gbm-tuned/dale-langevin"].fid_verdict == "better"
    assert by_row["gbm/dale-langevin-correlated"].fid_verdict == "not resolved"  # 0.5 apart, Welch half-width 0.61
    assert pd.isna(by_row["gbm/dale-langevin"].fid_verdict)  # the paper's own row has no difference
