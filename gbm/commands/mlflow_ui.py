"""``gbm mlflow-ui``: serve a results folder's MLflow store and print the address of each experiment's runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mlflow-ui", help="serve results/mlflow.db with `mlflow server` and print the runs view's address",
        description="Start `mlflow server` on RESULTS/mlflow.db (artifacts from RESULTS/mlartifacts), wait until "
                    "it answers, print for each experiment that holds runs the address of its evaluation runs "
                    "and of its training runs (MLflow's runs table, not the GenAI overview), and serve until "
                    "Ctrl-C or SIGTERM, which stop the server too.",
    )
    parser.add_argument("results", nargs="?", default="results", help="results directory (default: results)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default: 5000; 0: any free port)")
    parser.add_argument("--experiment", default=None,
                        help="print only this experiment's addresses (default: every experiment with runs)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the server to answer (default: 180)")
    parser.set_defaults(func=run)


def free_port(host: str, port: int = 0) -> int:
    """``port`` when nothing listens on it on ``host`` now, else an error; with 0, a free port the OS picks."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port is free
        try:
            s.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot serve on {host}:{port} ({error.strerror}): choose another --port "
                             f"(0: any free port)") from None
        return s.getsockname()[1]


def mlflow_executable() -> str:
    """The ``mlflow`` script of this Python's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    found = str(beside) if beside.is_file() else shutil.which("mlflow")
    if found is None:
        raise FileNotFoundError("no `mlflow` command beside this Python or on PATH (pip install -e .)")
    return found


def api(base: str, path: str, body: dict) -> dict:
    """POST ``body`` to the MLflow REST API at ``base``; the decoded answer."""
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def experiments_with_runs(base: str, name: str | None) -> list[tuple[str, str]]:
    """(id, name) of the active experiments that hold runs, or of experiment ``name`` alone."""
    found = api(base, "experiments/search", {"max_results": 1000}).get("experiments", [])
    if name is not None:
        chosen = [(e["experiment_id"], e["name"]) for e in found if e["name"] == name]
        if not chosen:
            raise ValueError(f"no experiment {name!r} in the store; it holds {sorted(e['name'] for e in found)}")
        return chosen
    return [(e["experiment_id"], e["name"]) for e in found
            if api(base, "runs/search", {"experiment_ids": [e["experiment_id"]], "max_results": 1}).get("runs")]


def wait_until_serving(base: str, server: subprocess.Popen, timeout: float) -> bool:
    """Whether ``server`` answers ``/health`` within ``timeout`` seconds (False once it has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def stop(server: subprocess.Popen) -> None:
    """End the server and its workers (their own process group): SIGTERM, then SIGKILL after 20 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run(args) -> int:
    from gbm.tracking.mirror import ARTIFACTS_NAME, STORE_NAME, view_url

    results = Path(args.results)
    store = results / STORE_NAME
    if not store.is_file():
        raise FileNotFoundError(f"no MLflow store {store}: run the benchmark (./run-benchmark) or "
                                f"`gbm mlflow-sync {results} --experiment NAME` first")
    port = free_port(args.host, args.port)
    command = [mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{store.resolve()}",
               "--artifacts-destination", str((results / ARTIFACTS_NAME).resolve()),
               "--host", args.host, "--port", str(port), "--workers", "1"]
    # Its own process group, so that stop() reaches its workers too; Ctrl-C and SIGTERM reach it through us.
    # Its log goes to stderr: stdout carries only the addresses.
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), start_new_session=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{port}"
    try:
        if not wait_until_serving(base, server, args.timeout):
            status = server.poll()
            print(f"gbm mlflow-ui: error: `mlflow server` did not answer at {base} "
                  + (f"(it exited with status {status})" if status is not None
                     else f"within {args.timeout:g} s"), file=sys.stderr)
            return 1
        print(f"MLflow: serving {store} at {base} (Ctrl-C stops it)")
        experiments = experiments_with_runs(base, args.experiment)
        if not experiments:
            print(f"no runs in {store} yet: {base}")
        for experiment_id, name in experiments:
            print(f"experiment {name!r}, evaluation runs: {view_url(base, experiment_id, 'evaluations')}")
            print(f"experiment {name!r}, training runs:   {view_url(base, experiment_id, 'training')}")
        sys.stdout.flush()
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(server)
