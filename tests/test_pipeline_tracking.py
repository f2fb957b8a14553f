"""MLflow mirror of results/ (concurrent writers, idempotence, never failing a job) and the result tables,
on a synthetic results tree in the formats `gbm train`, `gbm sample` and `gbm score` write."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gbm.reporting.tables import aggregate, benchmark_table, write_tables

GBM = str(Path(sys.executable).parent / "gbm")
JOB_START = 1.7e9  # when the sampling job of every synthetic evaluation started
FID = {("gbm", 0): 30.0, ("gbm", 1): 34.0, ("gbm", 2): 38.0, ("vp", 0): 50.0, ("vp", 1): 52.0, ("vp", 2): 54.0}


def fake_results(root: Path, seeds=(0, 1, 2)) -> Path:
    results = root / "results"
    for method, sampler in (("gbm", "dale-langevin"), ("vp", "em")):
        for seed in seeds:
            run = results / "mnist" / method / f"seed{seed}" / "run"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(f"seed: {seed}\nsde: {{name: {method}}}\ntrain: {{steps: 4}}\n")
            (run / "loss.csv").write_text("step,loss\n" + "".join(f"{i},{1 / i}\n" for i in range(1, 5)))
            (run / "train_metrics.json").write_text(json.dumps({"steps": 4, "wall_time_s": 1.5}))
            (run / "environment.json").write_text(json.dumps({"seed": seed, "sessions": []}))
            evaluation = run.parent / sampler / "steps10"
            evaluation.mkdir(parents=True)
            (evaluation / "metrics.json").write_text(json.dumps({
                "fid": FID[method, seed], "kid_mean": FID[method, seed] / 1e4, "kid_std": 1e-4, "n_fake": 8,
                "n_real": 8, "timing": {"features_s": 0.5}, "fid_ci": [FID[method, seed] - 1, FID[method, seed] + 1],
                "job": {"started_at": JOB_START + 60, "finished_at": JOB_START + 90, "wall_time_s": 30.0}}))
            (evaluation / "samples.json").write_text(json.dumps({
                "sampler": sampler, "steps": 10, "nfe": 10, "wall_time_s": 0.25, "fraction_clamped": 0.01,
                "prior": "iid" if method == "gbm" else "fixed",
                "job": {"started_at": JOB_START, "finished_at": JOB_START + 20, "wall_time_s": 20.0}}))
            np.savez(evaluation / "samples.npz", images=np.zeros((8, 1, 28, 28), np.uint8), seeds=np.arange(8))
    return results


def sync(results: Path) -> dict:
    from gbm.tracking.mirror import sync as mirror

    return mirror(results, "test", uri=f"sqlite:///{results / 'mlflow.db'}").as_dict()


def mirrored(results: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test").experiment_id
    return client.search_runs([experiment], max_results=1000)


def test_concurrent_jobs_never_lose_a_record(tmp_path):
    results = fake_results(tmp_path, seeds=(0, 1))
    seed_dirs = sorted(str(p.parent.parent) for p in results.glob("*/*/seed*/run/train_metrics.json"))
    env = dict(os.environ, MLFLOW_TRACKING_URI="")
    jobs = [subprocess.Popen([GBM, "mlflow-sync", str(results), "--experiment", "test", "--run", d],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for d in seed_dirs]
    outputs = [json.loads(job.communicate(timeout=300)[0]) for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    assert all(out["failed"] == [] and out["created"] == 2 for out in outputs)
    runs = mirrored(results)
    assert len(runs) == 8
    evaluation = next(r for r in runs if r.data.tags["kind"] == "evaluation" and r.data.tags["seed"] == "1"
                      and r.data.tags["method"] == "gbm")
    assert evaluation.data.metrics["fid"] == 34.0 and evaluation.data.metrics["sample.nfe"] == 10
    assert evaluation.data.tags["row"] == "mnist|gbm|dale-langevin|10"
    assert evaluation.data.tags["prior"] == "iid"
    parent = next(r for r in runs if r.info.run_id == evaluation.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["kind"] == "training" and parent.data.params["train.steps"] == "4"


def test_an_evaluation_runs_metrics_are_its_outcomes_and_the_settings_that_made_them_are_params(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))
    evaluation_dir = results / "mnist" / "gbm" / "seed0" / "dale-langevin" / "steps10"
    scores = json.loads((evaluation_dir / "metrics.json").read_text())
    scores.update(protocol={"kid": {"subsets": 100}}, domain={"fd": 4.5, "fd_ci": [4.0, 5.0], "n_fake": 8,
                  "classifier": {"test_accuracy": 0.98, "settings": {"epochs": 2}}},
                  collapse={"any": 0.25, "empty": 0.25, "n": 8, "protocol": {"calibration": {"empty_below": 0.02}}})
    (evaluation_dir / "metrics.json").write_text(json.dumps(scores))
    stats = json.loads((evaluation_dir / "samples.json").read_text())
    (evaluation_dir / "samples.json").write_text(json.dumps(dict(stats, sde={"sigma": 0.8}, batch_size=200)))
    sync(results)
    evaluation = next(r for r in mirrored(results) if r.data.tags["kind"] == "evaluation"
                      and r.data.tags["method"] == "gbm")
    metrics, params = evaluation.data.metrics, evaluation.data.params
    assert {"fid", "kid_mean", "domain.fd", "domain.fd_ci.low", "collapse.any", "collapse.empty", "nfe",
            "sample.nfe", "sample.fraction_clamped", "sample.wall_time_s"} <= set(metrics)
    for setting in ("protocol.kid.subsets", "domain.classifier.test_accuracy", "domain.classifier.settings.epochs",
                    "collapse.protocol.calibration.empty_below", "n_fake", "domain.n_fake", "collapse.n"):
        assert setting not in metrics and setting in params, setting
    assert params["sde.sigma"] == "0.8" and params["batch_size"] == "200" and "sample.sde.sigma" not in metrics


def test_evaluation_runs_show_scores_intervals_nfe_and_labels_with_their_jobs_times(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))
    sync(results)
    evaluation = next(r for r in mirrored(results) if r.data.tags["kind"] == "evaluation"
                      and r.data.tags["method"] == "gbm")
    assert evaluation.data.metrics["fid"] == 30.0 and evaluation.data.metrics["nfe"] == 10
    assert (evaluation.data.metrics["fid_ci.low"], evaluation.data.metrics["fid_ci.high"]) == (29.0, 31.0)
    assert {k: evaluation.data.params[k] for k in ("method", "sampler", "prior", "seed", "steps")} == {
        "method": "gbm", "sampler": "dale-langevin", "prior": "iid", "seed": "0", "steps": "10"}
    assert (evaluation.info.start_time, evaluation.info.end_time) == (JOB_START * 1000, (JOB_START + 90) * 1000)
    assert evaluation.data.metrics["sample.job_wall_time_s"] == 20.0
    assert evaluation.data.metrics["score.job_wall_time_s"] == 30.0
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(f"sqlite:///{results / 'mlflow.db'}").get_experiment(evaluation.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_artifacts_stay_readable_after_moving_results_to_another_folder(tmp_path):
    from mlflow.tracking import MlflowClient

    from mlflow_serving import mlflow_server

    results = fake_results(tmp_path / "before", seeds=(0,))
    sync(results)
    moved = tmp_path / "elsewhere" / "results"
    moved.parent.mkdir()
    shutil.move(results, moved)
    with mlflow_server(moved) as base:
        client = MlflowClient(base)
        run = next(r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
                   if r.data.tags["kind"] == "evaluation" and r.data.tags["method"] == "vp")
        local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
        grid = client.download_artifacts(run.info.run_id, "sample_grid.png", str(tmp_path))
    assert Path(local).read_bytes() == (moved / "mnist" / "vp" / "seed0" / "em" / "steps10" / "metrics.json").read_bytes()
    assert Path(grid).read_bytes().startswith(b"\x89PNG")


def test_sync_is_idempotent_and_follows_changed_and_vanished_files(tmp_path):
    results = fake_results(tmp_path, seeds=(0, 1))
    assert sync(results)["created"] == 8
    assert sync(results) == {"created": 0, "adopted": 0, "unchanged": 8, "deleted": 0, "repaired": [], "failed": []}
    metrics = results / "mnist" / "vp" / "seed1" / "em" / "steps10" / "metrics.json"
    metrics.write_text(json.dumps({"fid": 99.0, "kid_mean": 0.01, "kid_std": 0.0}))
    for path in (results / "mnist" / "gbm" / "seed1").rglob("*"):
        if path.is_file():
            path.unlink()
    summary = sync(results)
    assert (summary["created"], summary["unchanged"]) == (1, 5)
    runs = mirrored(results)
    assert len(runs) == 6
    assert [r.data.metrics["fid"] for r in runs if r.data.tags.get("row") == "mnist|vp|em|10"
            and r.data.tags["seed"] == "1"] == [99.0]


def test_an_unusable_store_is_reported_and_never_fails_the_job(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))
    (results / "mlflow.db").write_bytes(b"not a database " * 100)  # e.g. a store damaged by a full disk
    out = subprocess.run([GBM, "mlflow-sync", str(results), "--experiment", "test"], capture_output=True,
                         text=True, env=dict(os.environ, MLFLOW_TRACKING_URI=""))
    assert out.returncode == 0
    assert "not recorded in MLflow" in out.stderr
    assert json.loads(out.stdout)["failed"]
    assert subprocess.run([GBM, "mlflow-sync", str(results), "--experiment", "test", "--strict"],
                          capture_output=True, env=dict(os.environ, MLFLOW_TRACKING_URI="")).returncode == 1


def test_the_mirror_treats_only_a_run_the_store_lacks_as_absent_never_one_it_cannot_read(tmp_path):
    """A linked live run the store does not hold is absent (a rebuilt store: the sync creates the run anew); a
    store that fails to answer must fail the record instead, or the sync would replace and delete a live run."""
    from types import SimpleNamespace

    from gbm.tracking.mirror import Mirror

    results = fake_results(tmp_path, seeds=(0,))
    sync(results)
    mirror = Mirror(f"sqlite:///{results / 'mlflow.db'}", "test")
    held = next(r for r in mirrored(results) if r.data.tags["kind"] == "training")
    assert mirror.live_run(SimpleNamespace(linked_run=held.info.run_id)).info.run_id == held.info.run_id
    assert mirror.live_run(SimpleNamespace(linked_run="0" * 32)) is None
    with open(results / "mlflow.db", "r+b") as store:  # damage the store under the open client
        store.write(b"not a database " * 8)
    with pytest.raises(Exception) as raised:
        mirror.live_run(SimpleNamespace(linked_run=held.info.run_id))
    assert "database" in str(raised.value).lower()


def test_table_reports_mean_and_std_over_seeds_with_n_nfe_and_split(tmp_path):
    results = fake_results(tmp_path)
    runs = aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))
    assert len(runs) == 6
    table = benchmark_table(runs).set_index("method")
    assert table.loc["gbm", "fid_mean"] == pytest.approx(34.0)
    assert table.loc["gbm", "fid_std"] == pytest.approx(4.0)  # sample std of 30, 34, 38
    assert table.loc["vp", "kid_mean"] == pytest.approx(52.0 / 1e4)
    assert (table["seeds"] == 3).all() and (table["nfe"] == 10).all() and (table["n"] == 8).all()
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"fid": 3.5, "kid_mean": 1e-4, "kid_std": 1e-5, "floor": {"n": 8}}))
    from gbm.reporting.tables import floor_table

    write_tables(runs, floor_table([floor]), tmp_path / "tables", "test")
    markdown = (tmp_path / "tables" / "benchmark.md").read_text()
    assert "| mnist | gbm | dale-langevin | iid | 10 | 10 | 8 | test | 3 | 34.00 ± 4.00 |" in markdown
    assert "| mnist | vp | em | fixed | 10 |" in markdown and "'iid' is the paper's" in markdown
    assert r"34.00 $\pm$ 4.00" in (tmp_path / "tables" / "benchmark.tex").read_text()
    assert pd.read_csv(tmp_path / "tables" / "floor.csv")["fid"].tolist() == [3.5]


def test_prior_column_names_the_start_distribution_and_its_rank(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))
    stats = results / "mnist" / "gbm" / "seed0" / "dale-langevin" / "steps10" / "samples.json"
    stats.write_text(json.dumps(json.loads(stats.read_text()) | {"prior": "correlated", "prior_options": {"rank": 64}}))
    table = benchmark_table(aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))).set_index("method")
    assert table.loc["gbm", "prior"] == "correlated (rank 64)" and table.loc["vp", "prior"] == "fixed"


def test_single_seed_rows_show_no_spread_rather_than_zero(tmp_path):
    runs = aggregate(sorted(fake_results(tmp_path, seeds=(0,)).glob("*/*/seed*/*/steps*/metrics.json")))
    table = benchmark_table(runs)
    assert table["fid_std"].map(math.isnan).all()


def test_guided_rows_are_labelled_a_reconstruction_in_the_tables(tmp_path):
    results = fake_results(tmp_path, seeds=(0,))
    stats = results / "mnist" / "vp" / "seed0" / "em" / "steps10" / "samples.json"
    stats.write_text(json.dumps(json.loads(stats.read_text()) | {"guidance": {"label": "reconstruction (SPEC §7)"}}))
    runs = aggregate(sorted(results.glob("*/*/seed*/*/steps*/metrics.json")))
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"fid": 3.5, "kid_mean": 1e-4}))
    from gbm.reporting.tables import floor_table

    write_tables(runs, floor_table([floor]), tmp_path / "tables", "test")
    markdown = (tmp_path / "tables" / "benchmark.md").read_text()
    assert "| mnist | vp | em + guidance† |" in markdown and "| mnist | gbm | dale-langevin |" in markdown
    assert "reconstruction (SPEC §7)" in markdown.splitlines()[0]
