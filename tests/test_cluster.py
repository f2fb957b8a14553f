"""The pipeline through a real SLURM (scripts/slurm-cluster: slurmctld, slurmd, slurmdbd + MariaDB, munge,
two fake GPUs as GRES) with profiles/slurm: the smoke benchmark completes as SLURM jobs, each compute job
holds one GPU whose CUDA_VISIBLE_DEVICES the device wrapper keeps, the results match a local run, and a
training job cancelled with `scancel` resumes from its checkpoint to the same model as an uninterrupted run.

Needs root and the Debian packages (the cluster script installs them when root on Debian); skipped with
the reason elsewhere. One cluster per machine (its config lives in /etc/slurm): a lock file serialises
test runs, and a cluster that was already up before the test is left up.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "scripts" / "slurm-cluster"
PROFILE = REPO / "profiles" / "slurm"
SMOKE = REPO / "config" / "smoke.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# Fast status polling for a one-node test cluster (the profile's 20 s suits real clusters).
FAST = ["--slurm-init-seconds-before-status-checks", "5"]
# The smoke config's compute jobs (rules declaring gpu=1): 2 methods x 2 seeds trained, 3 sampler rows x
# 2 seeds sampled and scored, neighbours and the trajectory figure for the first seed, one FID floor.
COMPUTE_JOBS = {"train": 4, "sample": 6, "score": 6, "neighbours": 3, "floor": 1, "figure_trajectories": 1,
                "classifier": 1}
# neighbours reads stored features, and the domain classifier trains on one CPU thread: no GPU asked
GPU_RULES = set(COMPUTE_JOBS) - {"neighbours", "classifier"}

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def environment() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                OMP_NUM_THREADS="1")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(SNAKEMAKE + ["--directory", str(workdir), *args], capture_output=True, text=True,
                         cwd=workdir, env=environment(), timeout=3600)  # a hang fails instead of blocking CI
    if check:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-6000:]
    return out


def submitted(output: str) -> dict[str, str]:
    """SLURM job id -> rule, from Snakemake's 'submitted with SLURM jobid N (log: .../rule_R/...)' lines."""
    return {m.group(1): m.group(2) for m in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", output)}


def sacct(job_ids) -> dict[str, dict]:
    fields = ["JobID", "State", "ExitCode", "AllocTRES", "Account"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), f"--format={','.join(fields)}"],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    return {row["JobID"]: row for row in rows}


@pytest.fixture(scope="module")
def cluster():
    """The single-node cluster, up for this module (brought up here, so taken down here even on failure)."""
    if sys.platform != "linux":
        pytest.skip("SLURM test cluster: Linux only")
    lock = open(Path(os.environ.get("TMPDIR", "/tmp")) / "gbm-slurm-test.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one SLURM test per machine at a time
    was_up = subprocess.run([str(CLUSTER), "status"], capture_output=True).returncode == 0
    up = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
    try:
        if up.returncode == 3:
            pytest.skip(f"no SLURM test cluster here: {up.stderr.strip()}")
        assert up.returncode == 0, up.stdout + up.stderr
        yield
    finally:
        if not was_up:
            subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=300)
        lock.close()


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    subprocess.run([str(Path(sys.executable).parent / "gbm"), "prepare-data", "mnist", "--out", str(path)],
                   check=True, capture_output=True, env=environment())
    return path


def workdir_with_data(root: Path, prepared: Path) -> Path:
    (root / "results" / "data").mkdir(parents=True)
    shutil.copy(prepared, root / "results" / "data" / "mnist.npz")
    return root


@pytest.fixture(scope="module")
def runs(cluster, prepared_mnist, tmp_path_factory):
    """The smoke benchmark run locally and through profiles/slurm (side by side: the SLURM run mostly waits)."""
    local = workdir_with_data(tmp_path_factory.mktemp("local"), prepared_mnist)
    on_slurm = workdir_with_data(tmp_path_factory.mktemp("slurm"), prepared_mnist)
    local_run = subprocess.Popen(SNAKEMAKE + ["--directory", str(local), "--cores", "2", "--configfile", str(SMOKE)],
                                 cwd=local, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:
        start = time.monotonic()
        out = snakemake(on_slurm, "--profile", str(PROFILE), "--configfile", str(SMOKE), *FAST)
        wall = time.monotonic() - start
        local_log = local_run.communicate(timeout=3600)[0]
    finally:
        if local_run.poll() is None:
            local_run.kill()
            local_run.wait()
    assert local_run.returncode == 0, local_log[-4000:]
    jobs = submitted(out.stdout + out.stderr)
    print(f"\nSLURM run of the smoke config: {len(jobs)} SLURM jobs, {wall:.0f} s wall time")
    return {"local": local, "slurm": on_slurm, "jobs": jobs, "wall_s": wall}


def test_every_compute_job_ran_and_completed_as_a_slurm_job_with_one_gpu(runs):
    jobs = runs["jobs"]
    per_rule = {rule: list(jobs.values()).count(rule) for rule in set(jobs.values())}
    assert per_rule == COMPUTE_JOBS
    accounting = sacct(jobs)
    assert set(accounting) == set(jobs)
    for job_id, row in accounting.items():
        assert (row["State"], row["ExitCode"]) == ("COMPLETED", "0:0"), (jobs[job_id], row)
        gpus = [t for t in row["AllocTRES"].split(",") if t.startswith("gres/gpu=")]
        assert gpus == (["gres/gpu=1"] if jobs[job_id] in GPU_RULES else []), (jobs[job_id], row)
        assert row["Account"] == "gbm", row  # the user's default account (the profile names none)


def test_the_device_wrapper_kept_the_gpu_slurm_gave_each_job(runs):
    """Each compute job's log: the wrapper ran on the device SLURM set in CUDA_VISIBLE_DEVICES, no lock."""
    seen = {}
    for log in (runs["slurm"] / "results" / "logs").rglob("*.log"):
        text = log.read_text()
        chosen = re.search(r"gbm with-device: GPU (\S+) \(CUDA_VISIBLE_DEVICES=(\S+)\)", text)
        given = re.search(r"devices from (\S+); SLURM job (\d+) set CUDA_VISIBLE_DEVICES=(\S+) "
                          r"SLURM_JOB_GPUS=\S+ SLURM_STEP_GPUS=(\S+)", text)
        if given is None:
            continue
        assert chosen is not None, log
        source, job_id, slurm_cvd, step_gpus = given.groups()
        assert source == "CUDA_VISIBLE_DEVICES" and slurm_cvd == step_gpus, log
        assert chosen.group(1) == chosen.group(2) == slurm_cvd, log
        seen[job_id] = slurm_cvd
    gpu_jobs = {job_id for job_id, rule in runs["jobs"].items() if rule in GPU_RULES}
    assert set(seen) == gpu_jobs  # every GPU job recorded the device SLURM gave it, and only those
    assert set(seen.values()) <= {"0", "1"}


def test_tables_figures_and_mlflow_runs_match_a_local_run(runs):
    local, on_slurm = runs["local"] / "results", runs["slurm"] / "results"
    tables = sorted(p.name for p in (local / "tables").iterdir())
    assert tables == sorted(p.name for p in (on_slurm / "tables").iterdir()) and "benchmark.csv" in tables
    timed = {"metrics.csv", "prior_mismatch.json"}  # wall-clock columns; the compute seconds of the table
    for name in set(tables) - timed:
        assert (local / "tables" / name).read_bytes() == (on_slurm / "tables" / name).read_bytes(), name
    here, there = (pd.read_csv(d / "tables" / "metrics.csv") for d in (local, on_slurm))
    walls = [c for c in here.columns if c.endswith("_wall_s")]
    assert walls and here.drop(columns=walls).equals(there.drop(columns=walls))
    here, there = (json.loads((d / "tables" / "prior_mismatch.json").read_text()) for d in (local, on_slurm))
    assert here.pop("timing")["metrics_s"] > 0 and there.pop("timing")["metrics_s"] > 0
    assert here == there
    figures = sorted(str(p.relative_to(local)) for p in (local / "figures").rglob("*.p[dn][fg]"))
    assert figures == sorted(str(p.relative_to(on_slurm)) for p in (on_slurm / "figures").rglob("*.p[dn][fg]"))
    assert len(figures) == 28  # 14 figures, PNG and PDF

    def mlflow_runs(results: Path) -> list:
        with sqlite3.connect(results / "mlflow.db") as db:
            return sorted(db.execute(
                "SELECT r.name, m.key, m.value FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
                "WHERE m.key IN ('fid', 'kid_mean', 'kid_std', 'train_loss') ORDER BY r.name, m.key").fetchall())

    local_runs = mlflow_runs(local)
    assert len({name for name, _, _ in local_runs}) == 10  # 4 trainings + 6 evaluations
    assert mlflow_runs(on_slurm) == local_runs


def test_training_cancelled_by_scancel_resumes_to_the_same_model(cluster, prepared_mnist, tmp_path):
    config = yaml.safe_load(SMOKE.read_text())
    config["train"].update(steps=200, checkpoint_every=10, log_every=10)
    configfile = tmp_path / "resume.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/mnist/gbm/seed0/run/model.pt"
    reference = workdir_with_data(tmp_path / "uninterrupted", prepared_mnist)
    work = workdir_with_data(tmp_path / "cancelled", prepared_mnist)
    run = work / "results" / "mnist" / "gbm" / "seed0" / "run"
    args = [target, "--profile", str(PROFILE), "--configfile", str(configfile), "--retries", "0", *FAST]
    uninterrupted = subprocess.Popen(SNAKEMAKE + [target, "--directory", str(reference), "--cores", "1",
                                                  "--configfile", str(configfile)],
                                     cwd=reference, env=environment(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
    first = subprocess.Popen(SNAKEMAKE + ["--directory", str(work), *args], cwd=work, env=environment(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not list((run / "checkpoints").glob("step_*.pt")):
            assert first.poll() is None and time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        running = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "RUNNING"], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert len(running) == 1
        subprocess.run(["scancel", running[0]], check=True)
        deadline = time.time() + 60
        while not sacct(running)[running[0]]["State"].startswith("CANCELLED"):
            assert time.time() < deadline, sacct(running)
            time.sleep(1)
        # Plugin 2.8.0 reads sacct's "CANCELLED by 0" as still running and would wait forever (README): the
        # user stops Snakemake (Ctrl-C), as here, and reruns.
        first.send_signal(signal.SIGINT)
        first_log = first.communicate(timeout=300)[0]
        assert first.returncode != 0 and not (run / "model.pt").exists(), first_log[-3000:]
        interrupted_at = max(int(p.stem.split("_")[-1]) for p in (run / "checkpoints").glob("step_*.pt"))
        assert 0 < interrupted_at < 200

        snakemake(work, *args)
        metrics = json.loads((run / "train_metrics.json").read_text())
        assert metrics["steps"] == 200 and metrics["resumed_from_step"] >= interrupted_at

        reference_log = uninterrupted.communicate(timeout=900)[0]
        assert uninterrupted.returncode == 0, reference_log[-3000:]
    finally:
        for process in (first, uninterrupted):
            if process.poll() is None:
                process.kill()  # a Snakemake polling a cluster that goes down would never exit
                process.wait()
    resumed = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
    whole = torch.load(reference / target, map_location="cpu", weights_only=False)
    assert_bitwise_equal(resumed, whole)


def assert_bitwise_equal(a, b, where="model.pt"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture
def accounting_off(cluster, tmp_path) -> dict:
    """The environment of a cluster whose accounting is off: slurm.conf with accounting_storage/none."""
    conf = tmp_path / "slurm.conf"
    text = Path("/etc/slurm/slurm.conf").read_text()
    conf.write_text(re.sub(r"^AccountingStorageType=.*$", "AccountingStorageType=accounting_storage/none", text,
                           flags=re.MULTILINE))
    env = dict(environment(), SLURM_CONF=str(conf))
    disabled = subprocess.run(["sacct", "-X", "-n"], capture_output=True, text=True, env=env)
    assert disabled.returncode != 0 and "accounting storage is disabled" in disabled.stderr.lower(), disabled
    return env


def test_the_profile_refuses_to_start_where_sacct_exists_but_accounting_is_off(accounting_off, prepared_mnist,
                                                                             tmp_path):
    """The executor would poll the failing sacct and wait forever; the onstart check stops it first."""
    work = workdir_with_data(tmp_path / "work", prepared_mnist)
    out = subprocess.run(SNAKEMAKE + ["--directory", str(work), "results/mnist/floor.json", "--profile", str(PROFILE),
                                      "--configfile", str(SMOKE)],
                         cwd=work, env=accounting_off, capture_output=True, text=True, timeout=180)
    log = out.stdout + out.stderr
    assert out.returncode != 0, log[-3000:]
    assert "would lose every job and wait forever" in log and "--slurm-status-command squeue" in log, log[-3000:]
    assert not submitted(log)


def test_the_squeue_fallback_passes_the_check_only_when_min_job_age_allows_it(accounting_off, monkeypatch):
    from gbm.jobs import slurm

    monkeypatch.setenv("SLURM_CONF", accounting_off["SLURM_CONF"])
    assert slurm.check_status_query("squeue", init_seconds=20) == "squeue"  # MinJobAge 300 s >= 60 s
    with pytest.raises(slurm.StatusQueryError, match="falls back to sacct because MinJobAge=300"):
        slurm.check_status_query("squeue", init_seconds=200)
    with pytest.raises(slurm.StatusQueryError, match="wait forever"):
        slurm.check_status_query("sacct", init_seconds=20)
