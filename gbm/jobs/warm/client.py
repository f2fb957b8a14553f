"""Warm workers, client side: run a ``gbm`` command in a child forked from a process that has already loaded
torch, torch-fidelity's Inception network, MLflow and the plotting stack (``gbm.jobs.warm.server``).

A fresh ``gbm`` process spends 2-5 s importing torch (more for a ``score`` job, which also builds the
Inception network) before any work; the default benchmark runs ~78 of them on 2 cores. A local Snakemake
run starts one server (``common.smk``, config key ``warm_workers``) and advertises its socket in
``$GBM_WARM_SOCKET``; ``gbm`` then forwards its command line, working directory, environment, umask and
standard streams (the descriptors themselves, so ``> log 2>&1`` still applies) to the server, which forks
a child to run it, and waits for the child's exit status, which it returns as its own (a child killed by a
signal kills the client with the same signal). Signals the client receives (Ctrl-C, Snakemake's SIGTERM)
are forwarded to the child; if the client itself dies, the server kills the child.

Not used (the command runs in this process, as without a server) when ``$GBM_WARM_SOCKET`` is unset, when
the socket does not answer, inside a SLURM job (a cluster job must run in the resources SLURM gave it), or
when the server dies before starting the command.

Standard library only: this runs in every ``gbm`` process before it imports anything heavy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from gbm.umask import current_umask

SOCKET_ENV = "GBM_WARM_SOCKET"
FOLDER_PREFIX = "gbm-warm-"  # gbm.jobs.warm.launch makes TMPDIR/gbm-warm-XXXX/socket for each worker
SOCKET_NAME = "socket"
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")


def send_message(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    """One length-prefixed JSON message; ``fds`` travel with its first bytes (SCM_RIGHTS)."""
    body = json.dumps(message).encode()
    header = _HEADER.pack(len(body))
    if fds:
        socket.send_fds(sock, [header], fds)
        sock.sendall(body)
    else:
        sock.sendall(header + body)


def receive_message(sock: socket.socket, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """The next message and any descriptors sent with it; (None, []) when the peer closed the connection."""
    fds: list[int] = []
    if max_fds:
        header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, max_fds)
    else:
        header = sock.recv(_HEADER.size)
    if not header:
        return None, fds
    header += _read_exactly(sock, _HEADER.size - len(header))
    (length,) = _HEADER.unpack(header)
    return json.loads(_read_exactly(sock, length)), fds


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("warm worker: connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _standard_stream_fds() -> list[int]:
    """Descriptors 0, 1 and 2, with /dev/null in place of any that is closed."""
    fds = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    return fds


def environment_without_socket() -> dict:
    """This process's environment minus ``$GBM_WARM_SOCKET`` (what a child or the worker itself gets)."""
    return {k: v for k, v in os.environ.items() if k != SOCKET_ENV}


def connect(environ: dict | None = None) -> socket.socket | None:
    """A connection to the advertised warm worker, or None (no server, or inside a SLURM job)."""
    environ = os.environ if environ is None else environ
    path = environ.get(SOCKET_ENV)
    if not path or environ.get("SLURM_JOB_ID"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def run_in_worker(argv: list[str]) -> int | None:
    """Run ``gbm ARGV`` in a warm worker's child and return its exit status; None to run it here instead."""
    sock = connect()
    if sock is None:
        return None
    with sock:
        request = {"argv": list(argv), "cwd": os.getcwd(), "env": environment_without_socket(), "umask": current_umask()}
        try:
            send_message(sock, request, _standard_stream_fds())
            started, _ = receive_message(sock)
        except OSError:
            started = None
        if not started or "pid" not in started:
            return None  # the server went away before starting anything: run here
        return _wait_for_child(sock, started["pid"])


def _wait_for_child(sock: socket.socket, pid: int) -> int:
    """Forward signals to the child until the server reports how it ended; mirror that ending."""

    def forward(signum, frame):
        try:
            send_message(sock, {"signal": signum})
        except OSError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        ended, _ = receive_message(sock)
    except (OSError, ConnectionError):
        ended = None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if ended is None:
        print(f"gbm: error: the warm worker running this command (pid {pid}) went away", file=sys.stderr)
        return 1
    if ended.get("signal"):
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(ended["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), ended["signal"])
        return 128 + ended["signal"]  # not reached unless the signal is blocked
    return int(ended.get("exit", 1))


def remove_abandoned_folders(parent: str | None = None, min_age_s: float = 10.0) -> list[str]:
    """Remove this user's ``gbm-warm-*`` folders in ``parent`` (default: the temporary directory) whose worker
    is gone, as a hard-killed run leaves them; returns their paths.

    A folder is abandoned when nothing accepts connections on its socket (or it has none) and it has not
    changed for ``min_age_s`` seconds (a worker being started has made its folder but not yet bound the
    socket). A folder holding anything but the socket is left alone.
    """
    import stat
    import tempfile
    import time

    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        folder = os.path.join(parent, name)
        try:
            info = os.lstat(folder)
            if (not name.startswith(FOLDER_PREFIX) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                    or time.time() - info.st_mtime < min_age_s or not set(os.listdir(folder)) <= {SOCKET_NAME}):
                continue
            socket_path = os.path.join(folder, SOCKET_NAME)
            if os.path.exists(socket_path):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(socket_path)
                    continue  # a worker is serving it
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
                finally:
                    probe.close()
                os.unlink(socket_path)
            os.rmdir(folder)
            removed.append(folder)
        except OSError:
            continue  # another run removed or reused it meanwhile
    return removed
