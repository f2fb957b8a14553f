"""Start and stop the warm worker of a local Snakemake run (``onstart``/``onsuccess``/``onerror`` in common.smk).

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

from gbm.pipeline.warm import SOCKET_ENV, environment_without_socket


def start_worker(log_path: str | Path) -> subprocess.Popen:
    """Start ``gbm worker`` on a fresh socket and advertise it to this process's future children."""
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
