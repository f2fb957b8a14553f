"""The ablation table (gbm.reporting.ablation): each setting of a method that declares its paper's setting, read
from the records of its evaluations (metrics.csv), and its changes from the paper's setting."""

import json
from pathlib import Path

import pandas as pd
import pytest

from gbm.losses import describe_loss
from gbm.methods import get_method
from gbm.pipeline.config import (evaluations, load_config, method_name, sampler_name, sampler_options,
                                 sampler_prior)
from gbm.pipeline.layout import Evaluation
from gbm.reporting.ablation import ablation_table
from gbm.reporting.tables import aggregate, benchmark_table
from gbm.sampling import time_discretisation

REPO = Path(__file__).resolve().parents[1]


def write_records(config: dict, root: Path, fid=lambda e: 100.0 + e.seed) -> list[Path]:
    """The records `gbm train`, `gbm sample` and `gbm score` write for every evaluation of ``config`` (the settings
    parts, computed by the same code: the SDE's and loss's descriptions, the sampler's time discretisation, the
    prior's name), under ``root``; returns the metrics.json paths."""
    paths = []
    for e in evaluations(config):
        spec = config["methods"][e.method]
        method = get_method(method_name(config, e.method))
        sde = method.make_sde(**spec["sde"])
        evaluation = Evaluation(e.dataset, e.method, e.seed, e.sampler, e.steps, str(root))
        run = Path(evaluation.run.run_dir)
        run.mkdir(parents=True, exist_ok=True)
        loss = describe_loss(method.make_loss(sde, **spec["loss"]))
        (run / "train_metrics.json").write_text(json.dumps({
            "steps": config["train"]["steps"], "sde": sde.describe(), "loss": loss["name"], "loss_options": loss,
            "seed": e.seed, "parameterisation": "eps"}))
        sampler = sampler_name(config, e.method, e.sampler)
        options = sampler_options(config, e.dataset, e.method, e.sampler)
        prior, prior_options = sampler_prior(config, e.method, e.sampler)
        directory = Path(evaluation.directory)
        directory.mkdir(parents=True)
        (directory / "samples.json").write_text(json.dumps({
            "sampler": sampler, "steps": e.steps, "nfe": e.steps, "options": options,
            **time_discretisation(sde, method.samplers[sampler], e.steps, options),
            "prior": method.get_prior(prior).name if method.priors else "fixed", "prior_options": prior_options}))
        (directory / "metrics.json").write_text(json.dumps({"fid": fid(e), "kid_mean": 0.0, "n_fake": 8, "n_real": 8}))
        paths.append(directory / "metrics.json")
    return paths


def ablation_of(config_file: str, tmp_path: Path, fid=lambda e: 100.0 + e.seed) -> pd.DataFrame:
    runs = aggregate(write_records(load_config(REPO / "config" / config_file), tmp_path / "results", fid))
    return ablation_table(benchmark_table(runs), runs)


def changes(ablation: pd.DataFrame) -> dict[str, str]:
    return {f"{r.method}/{r.sampler}": r.change_from_paper for r in ablation.drop_duplicates(["method", "sampler"])
            .itertuples()}


def test_gbms_paper_setting_is_its_own_defaults():
    from gbm.methods.gbm import GBM

    paper = get_method("gbm").paper_setting
    assert paper.values == {"weighting": "paper", "grid": "uniform-t", "end_time": 0.0, "prior": "iid",
                            "sigma": GBM().sigma, "T": GBM().T, "practical": False}
    assert paper.description == ("M-DSM weight (sigma^2 t)^2, grid uniform in t, iid prior, sigma 0.8, T 1, "
                                 "exact sampler")
    assert get_method("vp").paper_setting is None


def test_ablation_benchmark_reads_gbm_paper_beside_gbm_tuned_from_the_records(tmp_path):
    ablation = ablation_of("ablation.yaml", tmp_path)
    assert changes(ablation) == {
        "gbm/sign-agnostic": "none (the paper's setting)", "gbm/dale-langevin": "none (the paper's setting)",
        "gbm/dale-langevin-correlated": "prior=correlated",
        "gbm/dale-langevin-sqrt-t": "grid=sqrt-t, end_time=0.001",
        "gbm-tuned/dale-langevin": "weighting=uniform-eps, grid=sqrt-t, end_time=0.001, prior=correlated",
    }  # no vp row: VP declares no paper setting
    row = ablation[(ablation["method"] == "gbm") & (ablation["sampler"] == "dale-langevin")].iloc[0]
    assert (row["sigma"], row["T"], row["practical"]) == (0.8, 1.0, False)


def test_paper_benchmark_ablation_names_sigma_and_the_authors_practical_options(tmp_path):
    ablation = ablation_of("paper.yaml", tmp_path).query("dataset == 'mnist'")
    found = changes(ablation)
    assert found["gbm-sigma0p5/dale-langevin-exact"] == "sigma=0.5"
    assert found["gbm-uniform-eps/dale-langevin-exact"] == "weighting=uniform-eps"
    assert found["gbm/dale-langevin"] == "practical=True"  # the authors' delta, L, gamma: not the exact sampler
    assert found["gbm/dale-langevin-exact"] == "none (the paper's setting)"
    assert not any(key.startswith(("vp/", "cld/", "beta/")) for key in found)
    fewest_first = ablation.groupby(["steps"], sort=False)["changes"].apply(lambda c: list(c) == sorted(c))
    assert fewest_first.all()


def test_a_setting_is_read_from_the_training_record_not_the_config(tmp_path):
    config = load_config(REPO / "config" / "ablation.yaml")
    paths = write_records(config, tmp_path / "results")
    record = tmp_path / "results" / "mnist" / "gbm" / "seed0" / "run" / "train_metrics.json"
    values = json.loads(record.read_text())
    values["loss_options"]["weighting"] = "uniform-eps"  # as if trained with another weighting than the config's
    record.write_text(json.dumps(values))
    runs = aggregate(paths)
    seed0 = runs[(runs["method"] == "gbm") & (runs["seed"] == 0)]
    assert set(seed0["loss.weighting"]) == {"uniform-eps"}
    assert set(runs[(runs["method"] == "gbm") & (runs["seed"] == 1)]["loss.weighting"]) == {"paper"}


def test_tables_step_writes_the_ablation_table_from_the_metrics_table(tmp_path):
    from gbm.reporting.tables import floor_table, write_tables

    fids = {"gbm": 272.0, "gbm-tuned": 145.5, "vp": 145.3}
    runs = aggregate(write_records(load_config(REPO / "config" / "ablation.yaml"), tmp_path / "results",
                                   lambda e: fids[e.method] + e.seed))
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"dataset": "mnist", "n": 16, "fid": 1.0, "kid_mean": 0.0}))
    write_tables(runs, floor_table([floor]), tmp_path, "test")
    text = (tmp_path / "ablation.md").read_text()
    lines = text.splitlines()
    paper = next(line for line in lines if "gbm / dale-langevin | 20" in line)
    tuned = next(line for line in lines if "gbm-tuned / dale-langevin | 20" in line)
    assert "none (the paper's setting)" in paper and "272.50" in paper
    assert "weighting=uniform-eps, grid=sqrt-t, end_time=0.001, prior=correlated" in tuned and "146.00" in tuned
    assert not any("vp /" in line for line in lines)
    assert text.startswith("GBM ablation (benchmark 'test'): each evaluated GBM setting and what it changes from the "
                           "paper's (M-DSM weight (sigma^2 t)^2, grid uniform in t, iid prior, sigma 0.8, T 1, "
                           "exact sampler); ")


def test_each_changed_setting_is_compared_with_the_papers_setting_of_its_own_sampler(tmp_path):
    """ΔFID against the paper row with the same sampler (a prior row of sign-agnostic against sign-agnostic,
    not dale-langevin), with the comparisons' Welch interval over seeds and its verdict."""
    fids = {("gbm", "sign-agnostic"): 100.0, ("gbm", "dale-langevin"): 200.0,
            ("gbm", "sign-agnostic-correlated"): 90.0, ("gbm", "dale-langevin-correlated"): 200.5,
            ("gbm-tuned", "dale-langevin"): 150.0}
    config = load_config(REPO / "config" / "ablation.yaml")
    config["methods"]["gbm"]["samplers"] = {
        "sign-agnostic": {"steps": [100]}, "dale-langevin": {"steps": [100]},
        "sign-agnostic-correlated": {"sampler": "sign-agnostic", "prior": "correlated", "steps": [100]},
        "dale-langevin-correlated": {"sampler": "dale-langevin", "prior": "correlated", "steps": [100]}}
    config["methods"]["gbm-tuned"]["samplers"] = {"dale-langevin": {"steps": [100]}}
    config["methods"].pop("vp")
    runs = aggregate(write_records(config, tmp_path / "results", lambda e: fids[e.method, e.sampler] + 0.2 * e.seed))
    ablation = ablation_table(benchmark_table(runs), runs)
    by_row = {f"{r.method}/{r.sampler}": r for r in ablation.itertuples()}
    assert by_row["gbm/sign-agnostic-correlated"].paper_row == "gbm / sign-agnostic"
    assert by_row["gbm/sign-agnostic-correlated"].fid_difference == pytest.approx(-10.0)
    assert by_row["gbm/sign-agnostic-correlated"].fid_verdict == "better"
    assert by_row["gbm-tuned/dale-langevin"].paper_row == "gbm / dale-langevin"
    assert by_row["gbm-tuned/dale-langevin"].fid_verdict == "better"
    assert by_row["gbm/dale-langevin-correlated"].fid_verdict == "not resolved"  # 0.5 apart, Welch half-width 0.61
    assert pd.isna(by_row["gbm/dale-langevin"].fid_verdict)  # the paper's own row has no difference
