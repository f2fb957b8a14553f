"""The smoke benchmark end to end on CPU: data -> training -> sampling -> FID/KID -> tables, figures, HTML
report and MLflow records (read back through a real ``mlflow server`` on loopback); and an interrupted
training job that resumes from its checkpoint when the pipeline is rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
SMOKE = REPO / "config" / "smoke.yaml"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], capture_output=True, text=True,
                         cwd=workdir, env=env, **popen)
    if check:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory) -> Path:
    """MNIST prepared once for the module by `gbm prepare-data` (as the pipeline's first job does)."""
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    subprocess.run([str(Path(sys.executable).parent / "gbm"), "prepare-data", "mnist", "--out", str(path)],
                   check=True, capture_output=True)
    return path


def with_data(workdir: Path, prepared: Path) -> Path:
    (workdir / "results" / "data").mkdir(parents=True)
    shutil.copy(prepared, workdir / "results" / "data" / "mnist.npz")
    return workdir


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, prepared_mnist) -> Path:
    """A working directory in which the smoke benchmark has run to completion."""
    workdir = with_data(tmp_path_factory.mktemp("smoke"), prepared_mnist)
    snakemake(workdir, "--cores", "2", "--configfile", str(SMOKE))
    snakemake(workdir, "--configfile", str(SMOKE), "--report", str(workdir / "results" / "report.html"))
    return workdir


def test_smoke_benchmark_fills_the_tables(smoke):
    table = pd.read_csv(smoke / "results" / "tables" / "benchmark.csv")
    assert sorted(zip(table["method"], table["sampler"])) == [
        ("gbm", "dale-langevin"), ("gbm", "sign-agnostic"), ("vp", "em")]
    assert (table["seeds"] == 2).all() and (table["n"] == 16).all()
    assert table[["fid_mean", "fid_std", "kid_mean", "nfe"]].notna().all().all()
    # both metric families and the collapse counters reach the table (the domain classifier ran)
    assert table[["domain_fd_mean", "domain_kid_mean", "class_tv_mean", "collapse_max"]].notna().all().all()
    comparisons = pd.read_csv(smoke / "results" / "tables" / "comparisons.csv")
    assert comparisons["domain_fd_verdict"].notna().all()
    assert (table["reference_split"] == "test").all()
    runs = pd.read_csv(smoke / "results" / "tables" / "metrics.csv")
    assert len(runs) == 6 and runs["fid"].gt(0).all()
    floor = pd.read_csv(smoke / "results" / "tables" / "floor.csv")
    assert list(floor["dataset"]) == ["mnist"] and floor["fid"].notna().all()
    for name in ("benchmark.md", "benchmark.tex", "floor.md", "floor.tex"):
        assert (smoke / "results" / "tables" / name).stat().st_size > 100
    assert "±" in (smoke / "results" / "tables" / "benchmark.md").read_text()


def test_smoke_benchmark_ran_each_job_in_its_own_process_measured_by_its_benchmark_file(smoke):
    # warm_workers is opt-in: by default every job is a fresh `gbm` process, so Snakemake's benchmark file
    # measures the job itself (importing torch alone takes more than a CPU second and 200 MB), not a client.
    assert not (smoke / "results" / "logs" / "warm_worker.log").exists()
    trainings = list((smoke / "results" / "benchmarks" / "train").glob("*.tsv"))
    assert len(trainings) == 4
    for path in trainings:
        row = pd.read_csv(path, sep="\t").iloc[0]
        assert row["cpu_time"] > 1.0 and row["max_rss"] > 200, (path.name, row.to_dict())


def test_smoke_benchmark_draws_every_figure_as_png_and_pdf(smoke):
    figures = smoke / "results" / "figures"
    expected = ["fid_kid_vs_nfe", "training_loss", "toy_gbm", "forward_histograms_mnist", "trajectories_mnist"]
    expected += [f"{kind}/mnist_{m}" for kind in ("samples", "neighbours")
                 for m in ("gbm_sign-agnostic", "gbm_dale-langevin", "vp_em")]
    for stem in expected:
        for suffix in (".png", ".pdf"):
            assert (figures / f"{stem}{suffix}").stat().st_size > 1000, stem
    report = (smoke / "results" / "report.html").read_text(errors="replace")
    assert "fid_kid_vs_nfe.png" in report and "benchmark.csv" in report


def test_smoke_benchmark_records_every_run_in_mlflow_served_on_loopback(smoke):
    from mlflow_serving import mlflow_server

    with mlflow_server(smoke / "results") as base:
        def call(path: str, body: dict | None = None) -> dict:
            request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                             data=json.dumps(body).encode() if body else None,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        experiment = call("experiments/get-by-name?experiment_name=smoke")["experiment"]["experiment_id"]
        evaluations = call("runs/search", {"experiment_ids": [experiment], "max_results": 100,
                                           "filter": "tags.kind = 'evaluation'"})["runs"]
        trainings = call("runs/search", {"experiment_ids": [experiment], "max_results": 100,
                                         "filter": "tags.kind = 'training'"})["runs"]
        row = call("runs/search", {"experiment_ids": [experiment], "max_results": 100,
                                   "filter": "tags.row = 'mnist|gbm|dale-langevin|2'"})["runs"]
        history = call(f"metrics/get-history?run_id={trainings[0]['info']['run_id']}&metric_key=train_loss")

    assert len(evaluations) == 6 and len(trainings) == 4
    assert sorted(r["data"]["tags"] and {t["key"]: t["value"] for t in r["data"]["tags"]}["seed"] for r in row) == ["0", "1"]
    metrics = {m["key"]: m["value"] for m in evaluations[0]["data"]["metrics"]}
    assert {"fid", "kid_mean", "kid_std", "sample.nfe", "sample.wall_time_s"} <= set(metrics)
    tags = {t["key"]: t["value"] for t in evaluations[0]["data"]["tags"]}
    assert {"dataset", "method", "sampler", "seed", "config", "git_revision", "mlflow.parentRunId"} <= set(tags)
    assert len(history["metrics"]) == 6  # one train_loss point per step


def test_mlflow_sync_rebuilds_a_lost_store_identically(smoke, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(smoke / "results", results, ignore=shutil.ignore_patterns("mlflow.db*", "mlartifacts"))
    gbm = str(Path(sys.executable).parent / "gbm")
    first = json.loads(subprocess.run([gbm, "mlflow-sync", str(results), "--experiment", "smoke"], check=True,
                                      capture_output=True, text=True).stdout)
    again = json.loads(subprocess.run([gbm, "mlflow-sync", str(results), "--experiment", "smoke"], check=True,
                                      capture_output=True, text=True).stdout)
    assert (first["created"], first["failed"]) == (10, [])
    assert (again["created"], again["unchanged"], again["deleted"]) == (0, 10, 0)


def test_interrupted_training_resumes_from_its_checkpoint(prepared_mnist, tmp_path):
    config = yaml.safe_load(SMOKE.read_text())
    config["train"].update(steps=400, checkpoint_every=20, log_every=20)
    config["warm_workers"] = True  # Ctrl-C through the opt-in warm worker's client reaches the job once
    configfile = tmp_path / "resume.yaml"
    configfile.write_text(yaml.safe_dump(config))
    with_data(tmp_path, prepared_mnist)
    run = tmp_path / "results" / "mnist" / "gbm" / "seed0" / "run"
    target = str(run.relative_to(tmp_path) / "model.pt")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    first = subprocess.Popen(SNAKEMAKE + [target, "--directory", str(tmp_path), "--cores", "1", "--configfile",
                                          str(configfile)], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list((run / "checkpoints").glob("step_*.pt")):
        assert first.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C: Snakemake stops the job and removes its outputs
    first.wait(timeout=60)
    assert not (run / "model.pt").exists()
    worker_log = tmp_path / "results" / "logs" / "warm_worker.log"  # the job ran in the warm worker, which ended
    deadline = time.time() + 60
    while not worker_log.read_text().rstrip().endswith("stopped"):
        assert time.time() < deadline, worker_log.read_text()[-2000:]
        time.sleep(0.2)
    assert "started: gbm train" in worker_log.read_text()
    interrupted_at = max(int(p.stem.split("_")[-1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert 0 < interrupted_at < 400

    snakemake(tmp_path, target, "--cores", "1", "--configfile", str(configfile))
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["steps"] == 400
    assert metrics["resumed_from_step"] >= interrupted_at
    sessions = json.loads((run / "environment.json").read_text())["sessions"]
    assert [s["resumed_from_step"] for s in sessions][0] == 0 and sessions[-1]["resumed_from_step"] > 0
