"""Start and stop the warm worker of a local Snakemake run (common.smk).

The worker's preload (~9 s on one core) is started as early as possible: while Snakemake parses the
workflow, when its command line is a plain run (``early_start``: only options that execute jobs here, such
as ``--cores``, ``--resources``, ``--config``; no dry run, report, profile or executor), so that it overlaps
Snakemake's own start-up (~5 s for the default benchmark) instead of delaying the first jobs. ``onstart``,
which knows the executor, keeps that worker for the local executor, stops it for any other, and starts one
for local runs the command line did not reveal. A run that ends before ``onstart`` (nothing to be done, a
DAG error) leaves the worker to notice that Snakemake is gone, which it checks between preloaded modules.

The worker runs ``gbm worker`` from the ``gbm`` on PATH (the one the jobs run), in its own session (a
Ctrl-C reaches the jobs' clients, which forward it, not the worker), watching the Snakemake process so it
ends with it however Snakemake ends. ``$GBM_WARM_SOCKET`` is set in Snakemake's environment, which the
jobs inherit. Standard library only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from gbm.jobs.warm.client import SOCKET_ENV, environment_without_socket


# Options after which `snakemake` runs its jobs with the local executor, unless a profile says otherwise.
PLAIN_RUN_OPTIONS = frozenset({
    "--cores", "-c", "--jobs", "-j", "--resources", "--res", "--config", "-C", "--configfile", "--configfiles",
    "--set-threads", "--set-resources", "--default-resources", "--keep-going", "-k", "--printshellcmds", "-p",
    "--rerun-incomplete", "--ri", "--forceall", "-F", "--forcerun", "-R", "--force", "-f", "--until", "-U",
    "--omit-from", "-O", "--rerun-triggers", "--latency-wait", "-w", "--quiet", "-q", "--show-failed-logs",
    "--nolock", "--keep-incomplete", "--max-threads", "--snakefile", "-s", "--directory", "-d",
})


def early_start(argv: list[str], environ: dict | None = None) -> bool:
    """Whether ``argv`` is a plain `snakemake` run that will execute jobs locally (checked at parse time).

    Conservative: any option outside PLAIN_RUN_OPTIONS (a dry run, ``--report``, ``--executor``,
    ``--profile``, ...), a ``$SNAKEMAKE_PROFILE``, or a program that is not the ``snakemake`` command (the
    Python API inside another program) says no, and ``onstart`` starts the worker later if it is needed.
    """
    environ = os.environ if environ is None else environ
    if not argv or environ.get("SNAKEMAKE_PROFILE") or "SLURM_JOB_ID" in environ:
        return False
    program = Path(argv[0])
    if not (program.name == "snakemake" or (program.name == "__main__.py" and program.parent.name == "snakemake")):
        return False
    for token in argv[1:]:
        if token.startswith("-") and token.split("=", 1)[0] not in PLAIN_RUN_OPTIONS:
            return False
    return True


def start_worker(log_path: str | Path, when: str = "") -> subprocess.Popen:
    """Start ``gbm worker`` on a fresh socket and advertise it to this process's future children.

    ``when`` (e.g. "while Snakemake parses the workflow") goes into the log's first line.
    """
    socket_path = Path(tempfile.mkdtemp(prefix="gbm-warm-")) / "socket"  # short: Unix socket paths are <108 bytes
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gbm = shutil.which("gbm")
    command = [gbm] if gbm else [sys.executable, "-m", "gbm"]
    environment = environment_without_socket()
    # Bound and listening before the first job starts: a job's client queues until the worker has preloaded.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    listener.listen(128)
    fd = listener.fileno()
    with listener, open(log_path, "ab") as log:
        log.write(f"gbm worker: starting{' ' + when if when else ''} (pid {os.getpid()})\n".encode())
        log.flush()
        worker = subprocess.Popen(
            [*command, "worker", "--socket", str(socket_path), "--listen-fd", str(fd), "--watch-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True,
            pass_fds=(fd,),
        )
    os.environ[SOCKET_ENV] = str(socket_path)
    return worker


def stop_worker(worker: subprocess.Popen, timeout: float = 30.0) -> None:
    """End the worker (it terminates any child still running) and stop advertising it."""
    socket_path = os.environ.pop(SOCKET_ENV, None)
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    if socket_path:
        shutil.rmtree(Path(socket_path).parent, ignore_errors=True)
