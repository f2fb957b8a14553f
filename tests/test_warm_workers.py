"""Warm workers (gbm.jobs.warm.client, gbm.jobs.warm.server): a command run in a child forked from a real
`gbm worker` gives the same files, exit status, output and signal behaviour as a fresh `gbm` process."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gbm.jobs.warm.client import SOCKET_ENV
from helpers import noise_dataset

GBM = str(Path(sys.executable).parent / "gbm")


def start_worker(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    socket_path, log = tmp_path / "worker.sock", tmp_path / "worker.log"
    worker = subprocess.Popen([GBM, "worker", "--socket", str(socket_path), *extra], stdout=open(log, "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while "serving on" not in log.read_text():
        assert worker.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.1)
    return worker, socket_path, log


def stop(worker: subprocess.Popen) -> None:
    worker.terminate()
    worker.wait(timeout=30)


@pytest.fixture(scope="module")
def preloaded_worker(tmp_path_factory):
    """A worker that preloaded torch, torch-fidelity's Inception network, MLflow and the plotting stack."""
    worker, socket_path, log = start_worker(tmp_path_factory.mktemp("worker"))
    yield socket_path, log
    stop(worker)


@pytest.fixture
def bare_worker(tmp_path):
    """A worker that preloads nothing (fast to start; for the protocol tests)."""
    worker, socket_path, log = start_worker(tmp_path, "--no-preload")
    yield socket_path, log
    stop(worker)


def gbm(args, *, cwd, socket_path=None, threads="1", **popen):
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if socket_path is not None:
        env[SOCKET_ENV] = str(socket_path)
    return subprocess.run([GBM, *args], cwd=cwd, env=env, capture_output=True, text=True, **popen)


@pytest.fixture(scope="module")
def train_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("config")
    data = noise_dataset(folder / "data.npz", n_train=64, n_test=16)
    config = {"data": {"path": str(data)}, "sde": {"name": "gbm"}, "model": {"size": "tiny"},
              "train": {"steps": 6, "batch_size": 8, "checkpoint_every": 3, "log_every": 1}}
    (folder / "train.yaml").write_text(yaml.safe_dump(config))
    return folder


def _train_sample_score(folder: Path, socket_path, threads: str) -> Path:
    out = folder / ("warm" if socket_path else "fresh") / f"threads{threads}"
    out.mkdir(parents=True)
    steps = [
        ["train", str(folder / "train.yaml"), "--out", str(out / "run"), "--device", "cpu", "--no-progress"],
        ["sample", str(out / "run"), "--sampler", "dale-langevin", "--steps", "4", "--n", "12", "--batch-size", "6",
         "--device", "cpu", "--no-progress", "--out", str(out / "samples.npz")],
        ["score", "--real", str(folder / "data.npz"), "--real-split", "test", "--fake", str(out / "samples.npz"),
         "--n", "12", "--interval-draws", "50", "--out", str(out / "metrics.json")],
    ]
    for args in steps:
        result = gbm(args, cwd=folder, socket_path=socket_path, threads=threads)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("threads", ["1", "2"])
def test_warm_child_trains_samples_and_scores_exactly_like_a_fresh_process(preloaded_worker, train_config, threads):
    socket_path, log = preloaded_worker
    fresh = _train_sample_score(train_config, None, threads)
    warm = _train_sample_score(train_config, socket_path, threads)
    assert f"started: gbm score --real {train_config / 'data.npz'}" in log.read_text()  # it did run warm
    a, b = (torch.load(d / "run" / "model.pt", map_location="cpu", weights_only=False) for d in (fresh, warm))
    assert a["state_dict"] and all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    env_a, env_b = (json.loads((d / "run" / "environment.json").read_text()) for d in (fresh, warm))
    assert env_a["sessions"][0]["cpu_threads"] == env_b["sessions"][0]["cpu_threads"] == int(threads)
    with np.load(fresh / "samples.npz") as x, np.load(warm / "samples.npz") as y:
        assert np.array_equal(x["images"], y["images"])
    m_a, m_b = (json.loads((d / "metrics.json").read_text()) for d in (fresh, warm))
    for key in ("fid", "fid_ci", "fid_inf", "kid_mean", "kid_ci", "sid"):
        assert m_a[key] == m_b[key], key


def test_the_child_gets_a_fresh_processes_threads_and_its_own_generator_seeds():
    """_match_fresh_process undoes what the server changed (torch threads) and seeds the global generators
    from the OS, as a fresh process does, instead of sharing the server's state with every other child."""
    script = textwrap.dedent("""
        import json, os, random, sys, numpy as np, torch
        from gbm.jobs.warm.server import _Startup, _match_fresh_process
        startup = _Startup()
        torch.set_num_threads(1); torch.rand(100)            # what preloading does to this process
        inherited = torch.get_rng_state(), random.getstate(), np.random.get_state()
        _match_fresh_process(dict(os.environ, **json.loads(sys.argv[1])), startup)
        draws = [torch.rand(2).tolist(), random.random(), np.random.rand()]
        torch.set_rng_state(inherited[0]); random.setstate(inherited[1]); np.random.set_state(inherited[2])
        print(json.dumps([torch.get_num_threads(), draws, [torch.rand(2).tolist(), random.random(), np.random.rand()]]))
    """)
    fresh = "import torch; print(torch.get_num_threads())"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    for job_env in ({}, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2"}, {"MKL_NUM_THREADS": "1"}):
        children = [json.loads(subprocess.run([sys.executable, "-c", script, json.dumps(job_env)], check=True,
                                              capture_output=True, text=True, env=base).stdout) for _ in range(2)]
        fresh_threads = int(subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True,
                                           check=True, env=dict(base, **job_env)).stdout)
        for threads, draws, inherited_draws in children:
            assert threads == fresh_threads, job_env
            assert all(d != i for d, i in zip(draws, inherited_draws)), "a generator kept the server's state"
        assert all(a != b for a, b in zip(children[0][1], children[1][1])), "two children drew the same numbers"


def test_exit_status_and_both_streams_reach_the_client(bare_worker, tmp_path):
    socket_path, log = bare_worker
    fresh = gbm(["score", "--real", "missing.npz", "--fake", "missing.npz"], cwd=tmp_path)
    warm = gbm(["score", "--real", "missing.npz", "--fake", "missing.npz"], cwd=tmp_path, socket_path=socket_path)
    assert fresh.returncode == warm.returncode == 2
    assert warm.stderr == fresh.stderr and "missing.npz" in warm.stderr
    help_fresh, help_warm = (gbm(["train", "--help"], cwd=tmp_path, socket_path=s) for s in (None, socket_path))
    assert help_warm.returncode == 0 and help_warm.stdout == help_fresh.stdout
    assert log.read_text().count("started: gbm") == 2


def test_the_child_runs_in_the_clients_directory_with_its_environment(bare_worker, tmp_path):
    socket_path, _ = bare_worker
    (tmp_path / "here").mkdir()
    config = {"data": {"path": "data.npz"}, "sde": {"name": "no-such-method"}}
    (tmp_path / "here" / "train.yaml").write_text(yaml.safe_dump(config))
    env_module = tmp_path / "here" / "extra_method.py"
    env_module.write_text("raise SystemExit('extra method module imported from the job environment')\n")
    result = subprocess.run([GBM, "train", "train.yaml", "--out", "run"], cwd=tmp_path / "here", text=True,
                            capture_output=True, env={**os.environ, SOCKET_ENV: str(socket_path),
                                                      "GBM_METHOD_MODULES": str(env_module)})
    assert result.returncode == 1 and "extra method module imported from the job environment" in result.stderr


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _child_pid(log: Path, command: str) -> int:
    line = next(line for line in log.read_text().splitlines() if f"started: gbm {command}" in line)
    return int(line.split("pid ")[1].split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def _long_training(tmp_path: Path, train_config: Path, socket_path: Path) -> subprocess.Popen:
    config = yaml.safe_load((train_config / "train.yaml").read_text())
    config["train"].update(steps=100000, checkpoint_every=100000)
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, SOCKET_ENV: str(socket_path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([GBM, "train", str(tmp_path / "long.yaml"), "--out", str(tmp_path / "run"),
                             "--device", "cpu"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ctrl_c_on_the_client_interrupts_the_child_once_and_both_end_by_sigint(bare_worker, tmp_path, train_config):
    socket_path, log = bare_worker
    client = _long_training(tmp_path, train_config, socket_path)
    _wait_for(lambda: "started: gbm train" in log.read_text(), what="the child")
    child = _child_pid(log, "train")
    _wait_for(lambda: (tmp_path / "run" / "loss.csv").exists(), what="training")
    client.send_signal(signal.SIGINT)
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == -signal.SIGINT
    assert stderr.count("KeyboardInterrupt") == 1  # one Ctrl-C, one interrupt (the child is its own group)
    _wait_for(lambda: f"pid {child} ended: {{'signal': 2}}" in log.read_text(), what="the child's end")
    assert not _alive(child)


def test_a_killed_client_takes_its_command_with_it(bare_worker, tmp_path, train_config):
    socket_path, log = bare_worker
    client = _long_training(tmp_path, train_config, socket_path)
    _wait_for(lambda: "started: gbm train" in log.read_text(), what="the child")
    child = _child_pid(log, "train")
    client.kill()
    client.wait(timeout=30)
    _wait_for(lambda: not _alive(child), timeout=30, what="the orphaned child to be terminated")
    assert "its client is gone" in log.read_text()


def test_without_a_worker_or_inside_slurm_the_command_runs_in_its_own_process(bare_worker, tmp_path):
    socket_path, log = bare_worker
    gone = gbm(["score", "--real", "x", "--fake", "y"], cwd=tmp_path, socket_path=tmp_path / "no-such.sock")
    assert gone.returncode == 2 and "gbm score: error" in gone.stderr
    env = {**os.environ, SOCKET_ENV: str(socket_path), "SLURM_JOB_ID": "7"}
    slurm = subprocess.run([GBM, "score", "--real", "x", "--fake", "y"], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert slurm.returncode == 2 and "started:" not in log.read_text()


def test_a_runs_first_jobs_run_in_their_own_process_beside_the_preload(bare_worker, tmp_path):
    socket_path, log = bare_worker
    for command in (["prepare-data", "no-such-dataset", "--out", "x.npz"], ["write-config", "--out", "x.yaml"]):
        own = gbm(command, cwd=tmp_path, socket_path=socket_path)
        assert own.returncode == 2 and "error" in own.stderr, own.stderr
    served = gbm(["score", "--real", "x", "--fake", "y"], cwd=tmp_path, socket_path=socket_path)
    assert served.returncode == 2
    started = [line for line in log.read_text().splitlines() if "started:" in line]
    assert len(started) == 1 and "started: gbm score" in started[0]


def test_the_worker_ends_with_the_process_that_started_it(tmp_path):
    """Snakemake killed outright (no onsuccess/onerror): its worker notices and removes its socket."""
    script = textwrap.dedent(f"""
        import os, time
        from gbm.jobs.warm.launch import start_worker
        worker = start_worker({str(tmp_path / 'worker.log')!r})
        print(worker.pid, os.environ[{SOCKET_ENV!r}], flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    pid, socket_path = starter.stdout.readline().split()
    assert Path(socket_path).exists()
    starter.kill()
    starter.wait()
    _wait_for(lambda: not _alive(int(pid)), timeout=120, what="the worker to end")
    assert not Path(socket_path).exists() and not Path(socket_path).parent.exists()
    assert "is gone" in (tmp_path / "worker.log").read_text()


def test_the_worker_stops_preloading_when_the_process_that_started_it_is_gone(tmp_path):
    """A run that ends before any job (nothing to be done, a DAG error) does not leave a preload running."""
    script = textwrap.dedent(f"""
        import os
        from gbm.jobs.warm.launch import start_worker
        worker = start_worker({str(tmp_path / 'worker.log')!r}, "for the test")
        print(worker.pid, os.environ[{SOCKET_ENV!r}], flush=True)
    """)  # the starter exits at once, while the worker imports torch
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pid, socket_path = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env,
                                      check=True).stdout.split()
    _wait_for(lambda: not _alive(int(pid)), timeout=120, what="the worker to end")
    log = (tmp_path / "worker.log").read_text()
    assert log.startswith("gbm worker: starting for the test (pid ")
    assert "preload stopped before" in log and "serving on" not in log and "preloaded in" not in log, log
    assert not Path(socket_path).parent.exists()


@pytest.mark.parametrize("argv, early", [
    (["/venv/bin/snakemake", "--cores", "2"], True),
    (["/venv/bin/snakemake", "--cores", "8", "--resources", "gpu=2", "--config", "seeds=[0]", "all"], True),
    (["/venv/lib/python3.11/site-packages/snakemake/__main__.py", "-s", "Snakefile", "--directory", "w", "-c1"],
     False),  # -c1: an option spelling outside the list; onstart starts the worker then
    (["/venv/lib/python3.11/site-packages/snakemake/__main__.py", "-s", "Snakefile", "--directory=w", "-c", "1"],
     True),
    (["/venv/bin/snakemake", "--cores", "2", "-n"], False),
    (["/venv/bin/snakemake", "--dry-run"], False),
    (["/venv/bin/snakemake", "--report", "results/report.html"], False),
    (["/venv/bin/snakemake", "--executor", "slurm", "--jobs", "4"], False),
    (["/venv/bin/snakemake", "--profile", "profiles/slurm"], False),
    (["/venv/bin/snakemake", "--cores", "2", "--touch"], False),
    (["/venv/bin/pytest", "tests"], False),  # the Python API inside another program
    ([], False),
])
def test_the_worker_starts_while_snakemake_parses_only_for_a_plain_local_run(argv, early):
    from gbm.jobs.warm.launch import early_start

    assert early_start(argv, {}) is early
    assert early_start(argv, {"SNAKEMAKE_PROFILE": "profiles/slurm"}) is False
    assert early_start(argv, {"SLURM_JOB_ID": "7"}) is False


def test_a_child_writes_its_files_under_the_clients_umask(bare_worker, tmp_path):
    """The worker's child takes the client's umask, and the result files get the mode it gives (not 0600)."""
    socket_path, log = bare_worker
    bench = tmp_path / "results" / "benchmarks" / "train"
    bench.mkdir(parents=True)
    (bench / "job.tsv").write_text("s\th:m:s\n1.0\t0:00:01\n")
    command = [GBM, "report", "timing", "--results", "results", "--cores", "2", "--threads", "1", "--out", "timing.json"]
    env = {**os.environ, SOCKET_ENV: str(socket_path)}
    for umask, mode in ((0o027, 0o640), (0o022, 0o644)):
        out = tmp_path / "timing.json"
        out.unlink(missing_ok=True)
        result = subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert out.stat().st_mode & 0o777 == mode
    assert log.read_text().count("started: gbm report timing") == 2
