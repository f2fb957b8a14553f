"""``gbm mlflow-ui``: one command serves a results folder's MLflow store and prints the runs table's address."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gbm.commands.mlflow_ui import api


def small_store(results: Path) -> tuple[str, str]:
    """A real SQLite store in ``results/mlflow.db`` with experiment ``smoke`` holding one finished run."""
    from mlflow.tracking import MlflowClient

    from gbm.tracking.mirror import open_experiment

    uri = f"sqlite:///{results / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = open_experiment(client, uri, "smoke")
    run = client.create_run(experiment_id, tags={"kind": "evaluation"}, run_name="mnist gbm dale-langevin 2")
    client.log_metric(run.info.run_id, "fid", 123.4)
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id


def read_line(process: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    """The first line ``process`` prints that matches ``pattern``, within ``timeout`` seconds."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
    pytest.fail(f"no line matching {pattern!r} within {timeout} s; printed: {''.join(seen)!r}; "
                f"exit status {process.poll()}")


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_mlflow_ui_prints_an_address_that_serves_the_experiments_runs_table_and_stops_with_ctrl_c(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    experiment_id, run_id = small_store(results)
    ui = subprocess.Popen([sys.executable, "-m", "gbm", "mlflow-ui", str(results), "--port", "0"],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        address = read_line(ui, r"experiment 'smoke', evaluation runs: (http://127\.0\.0\.1:(\d+))"
                                r"(/#/experiments/(\w+)/runs\?workflowType=machine_learning"
                                r"&viewStateShareKey=evaluations)\s*$", timeout=240)
        base, port, printed_id = address.group(1), int(address.group(2)), address.group(4)
        assert printed_id == experiment_id
        with urllib.request.urlopen(f"{base}/", timeout=30) as page:  # the fragment is the browser's, not the server's
            assert page.status == 200 and b"<html" in page.read().lower()
        runs = api(base, "runs/search", {"experiment_ids": [printed_id]})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert api(base, "experiments/search", {"max_results": 10})["experiments"]
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in its terminal
        status = ui.wait(timeout=60)
    assert status == 0
    assert not listening(port), "the server outlived the command"


def test_mlflow_ui_refuses_a_results_folder_without_a_store(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gbm", "mlflow-ui", str(tmp_path), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"no MLflow store {tmp_path / 'mlflow.db'}" in done.stderr


def test_mlflow_ui_refuses_a_taken_port_at_once_naming_the_option(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "gbm", "mlflow-ui", str(tmp_path), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"cannot serve on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
