"""Warm workers, server side: preload what ``gbm`` commands import, then fork one child per command.

``gbm worker --socket PATH`` (started by a local Snakemake run, ``common.smk``) imports every ``gbm``
command module, torch, torch-fidelity (and builds its Inception network on the CPU when the converted
weights are cached), MLflow, pandas, matplotlib and seaborn once, then serves ``gbm.jobs.warm.client``
clients: each request is forked into a child that takes the client's descriptors 0-2, working directory,
environment and umask and runs ``gbm.cli.main``.

A child matches a fresh ``gbm`` process where results could depend on it: torch's intra-op threads (and
the BLAS pools through threadpoolctl) follow the job's ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` as in a
fresh process; torch's, Python's and numpy's global generators are seeded from the OS as at start-up (never
a copy of the server's, which every child would otherwise share); signals have their start-up handlers; it ends with
Python's own exit steps (non-daemon threads joined, ``atexit`` handlers run). The server itself never
runs a parallel torch operation (threads set to 1 while preloading) and never touches CUDA, so forking
it is safe; each child is its own process group and gets only the signals its client forwards.

The server ends on SIGTERM/SIGINT or when the process that started it (``--watch-pid``, Snakemake) is
gone; it then terminates its children (SIGTERM, SIGKILL after a grace period) and removes its socket and
folder. A worker killed outright (SIGKILL, a power loss) cannot: the next worker to start removes the
folders whose worker is gone (``gbm.jobs.warm.client.remove_abandoned_folders``).
"""

from __future__ import annotations

import atexit
import io
import os
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback

from gbm.jobs.warm.client import FORWARDED_SIGNALS, receive_message, remove_abandoned_folders, send_message

GRACE_SECONDS = 10.0
# Modules a job would import; loaded once here. Failures are logged and skipped (the child imports them).
PRELOAD = (
    "numpy", "scipy.linalg", "torch", "torchvision", "torch_fidelity", "pandas", "mlflow", "matplotlib",
    "matplotlib.pyplot", "seaborn", "yaml", "threadpoolctl",
    # MLflow's SQL store (imported when a client opens results/mlflow.db: every training job's live run and
    # every `track` job; 1.3 s, and 0.4 s more to configure its ORM mappers, see below)
    "mlflow.store.tracking.sqlalchemy_store",
    "gbm.training", "gbm.sampling", "gbm.metrics", "gbm.metrics.features", "gbm.tracking.live",
    "gbm.tracking.mirror", "gbm.reporting.tables", "gbm.reporting.figures", "gbm.reporting.comparisons",
    "gbm.reporting.ablation", "gbm.reporting.prior_mismatch", "gbm.reporting.trajectories", "gbm.data",
)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _Startup:
    """What a fresh process would have had: torch's default thread count, and the thread variables behind it."""

    def __init__(self) -> None:
        import torch

        self.torch_threads = torch.get_num_threads()
        self.thread_variables = {k: os.environ.get(k) for k in _THREAD_VARIABLES}


def preload(log, keep_going=lambda: True) -> _Startup | None:
    """Import what the commands import and build the CPU Inception network; returns the start-up state.

    ``keep_going()`` is asked between modules; when it says no (the worker was told to stop, or the run
    that started it is gone), the preload stops there and None is returned.
    """
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    started = time.perf_counter()
    startup = _Startup()
    import torch

    torch.set_num_threads(1)  # no OpenMP pool in the server: children fork from a single-threaded process
    for name in PRELOAD:
        if not keep_going():
            log(f"preload stopped before {name}")
            return None
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a missing optional module only costs the child its import
            log(f"preload: {name} not loaded ({type(error).__name__}: {error})")
    if "sqlalchemy.orm" in sys.modules:  # what MLflow's store otherwise does when a child first opens it
        sys.modules["sqlalchemy.orm"].configure_mappers()
    from gbm.cli import build_parser

    build_parser()  # every command module
    try:
        from gbm.metrics.features import torch_fidelity_extractor
        from gbm.metrics.weights import _cached

        if _cached() is not None:  # never convert or download here
            torch_fidelity_extractor(torch.device("cpu"))
    except Exception as error:  # noqa: BLE001
        log(f"preload: Inception network not built ({type(error).__name__}: {error})")
    if torch.cuda.is_initialized():
        raise RuntimeError("warm worker: CUDA was initialised while preloading; forking would be unsafe")
    log(f"preloaded in {time.perf_counter() - started:.1f} s; {threading.active_count()} Python thread(s)")
    return startup


def _thread_count(environ: dict, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _match_fresh_process(environ: dict, startup: _Startup) -> None:
    """Threads and generators as a fresh process started with ``environ`` would have them."""
    import random

    import numpy as np
    import torch

    same_variables = all(environ.get(k) == v for k, v in startup.thread_variables.items())
    torch_threads = startup.torch_threads if same_variables else (
        _thread_count(environ, ("OMP_NUM_THREADS", "MKL_NUM_THREADS")) or startup.torch_threads)
    torch.set_num_threads(torch_threads)
    if not same_variables:
        blas = _thread_count(environ, ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
        if blas is not None and "threadpoolctl" in sys.modules:
            sys.modules["threadpoolctl"].threadpool_limits(limits=blas, user_api="blas")
    torch.seed()  # a fresh process seeds torch's, Python's and numpy's global generators from the OS
    random.seed()
    np.random.seed()


def _adopt_standard_streams(fds: list[int]) -> None:
    """Descriptors 0-2 become the client's; sys.std* are rebuilt over them as Python builds them at start-up."""
    for target, fd in zip((0, 1, 2), fds):
        if fd != target:
            os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=encoding)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=encoding,
                                                   line_buffering=os.isatty(1))
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", closefd=False), encoding=encoding,
                                                   errors="backslashreplace", line_buffering=True)


def _finish(code: int, signum: int | None = None) -> None:
    """Python's own exit steps (non-daemon threads joined, atexit handlers), then end this child."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter runs at exit
    except Exception:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if signum is not None:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(code)


def run_child(request: dict, fds: list[int], startup: _Startup) -> None:
    """In the forked child: become the client's process and run ``gbm ARGV``; never returns."""
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (*FORWARDED_SIGNALS[1:], signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        _adopt_standard_streams(fds)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # recomputed from this job's TMPDIR
        sys.argv = [sys.argv[0], *request["argv"]]
        _match_fresh_process(request["env"], startup)
        from gbm.cli import main
    except BaseException:  # noqa: BLE001 - report and end the child, never return into the server loop
        traceback.print_exc()
        _finish(70)
    try:
        code = main(request["argv"])
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        _finish(130, signal.SIGINT)  # as Python does after an unhandled KeyboardInterrupt
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    _finish(int(code))


class WarmServer:
    """The accept loop: one child per request, signals forwarded, endings reported back to the clients."""

    def __init__(self, path: str, watch_pid: int | None = None, log=None, listen_fd: int | None = None) -> None:
        self.path = path
        self.listen_fd = listen_fd
        self.watch_pid = watch_pid
        self.log = log or (lambda message: print(f"gbm worker: {message}", file=sys.stderr, flush=True))
        self.children: dict[int, socket.socket | None] = {}
        self.kill_deadlines: dict[int, float] = {}
        self.running = True
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(fileno=listen_fd) if listen_fd is not None else (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        self.wakeup, self._wakeup_writer = socket.socketpair()  # a child's end (SIGCHLD) wakes the loop at once

    def serve(self, preload_modules: bool = True) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        self._wakeup_writer.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        if self.listen_fd is None:  # else the starter bound and listens already (gbm.jobs.warm.launch)
            if os.path.exists(self.path):
                os.unlink(self.path)
            self.listener.bind(self.path)
            os.chmod(self.path, 0o600)
            self.listener.listen(128)  # clients queue here while the preload runs
        for folder in remove_abandoned_folders():
            self.log(f"removed {folder}, left by a worker that is gone (a hard-killed run)")
        startup = preload(self.log, self._keep_going) if preload_modules else _Startup()
        if startup is None:
            self._shutdown()
            return 0
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.selector.register(self.wakeup, selectors.EVENT_READ, "wakeup")
        self.log(f"serving on {self.path} (pid {os.getpid()})")
        try:
            while self.running:
                for key, _ in self.selector.select(timeout=0.2):
                    if key.data is None:
                        self._start(startup)
                    elif key.data == "wakeup":
                        self.wakeup.recv(4096)
                    else:
                        self._client_message(key.fileobj, key.data)
                self._reap()
                self._escalate()
                if not self._starter_alive():
                    self.running = False
        finally:
            self._shutdown()
        return 0

    def _stop(self, signum, frame) -> None:
        self.running = False

    def _starter_alive(self) -> bool:
        if self.watch_pid is not None and os.getppid() != self.watch_pid:
            self.log(f"process {self.watch_pid} that started this worker is gone")
            return False
        return True

    def _keep_going(self) -> bool:
        return self.running and self._starter_alive()

    def _start(self, startup: _Startup) -> None:
        connection, _ = self.listener.accept()
        connection.settimeout(30)
        try:
            request, fds = receive_message(connection, max_fds=3)
        except (OSError, ConnectionError, ValueError) as error:
            self.log(f"bad request: {error}")
            connection.close()
            return
        if request is None or len(fds) != 3 or "argv" not in request:
            for fd in fds:
                os.close(fd)
            connection.close()
            return
        connection.settimeout(None)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            self.selector.close()
            for own in (self.listener, self.wakeup, self._wakeup_writer):
                own.close()
            connection.close()
            for other in self.children.values():
                if other is not None:
                    other.close()
            run_child(request, fds, startup)
        for fd in fds:
            os.close(fd)
        self.children[pid] = connection
        self.selector.register(connection, selectors.EVENT_READ, pid)
        command = " ".join(request["argv"])
        self.log(f"pid {pid} started: gbm {command if len(command) <= 400 else command[:400] + ' ...'}")
        try:
            send_message(connection, {"pid": pid})
        except OSError:
            self._client_gone(pid)

    def _client_message(self, connection: socket.socket, pid: int) -> None:
        try:
            message, _ = receive_message(connection)
        except (OSError, ConnectionError, ValueError):
            message = None
        if message is None:
            self._client_gone(pid)
        elif "signal" in message:
            self._signal(pid, int(message["signal"]))

    def _signal(self, pid: int, signum: int) -> None:
        """``signum`` to the child's process group (the child itself if it has not made its group yet)."""
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _client_gone(self, pid: int) -> None:
        """The client died (e.g. SIGKILL): end its command as a killed job would end."""
        connection = self.children.get(pid)
        if connection is not None:
            self.selector.unregister(connection)
            connection.close()
            self.children[pid] = None
            self.log(f"pid {pid}: its client is gone; terminating it")
            self._terminate(pid)

    def _terminate(self, pid: int) -> None:
        self._signal(pid, signal.SIGTERM)
        self.kill_deadlines.setdefault(pid, time.monotonic() + GRACE_SECONDS)

    def _escalate(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self.kill_deadlines.items()):
            if pid in self.children and now > deadline:
                self._signal(pid, signal.SIGKILL)
                del self.kill_deadlines[pid]

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.children.pop(pid, None)
            self.kill_deadlines.pop(pid, None)
            ending = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
            self.log(f"pid {pid} ended: {ending}; cpu {usage.ru_utime + usage.ru_stime:.1f} s, "
                     f"max RSS {usage.ru_maxrss / 1024:.0f} MiB")
            if connection is not None:
                self.selector.unregister(connection)
                try:
                    send_message(connection, ending)
                except OSError:
                    pass
                connection.close()

    def _shutdown(self) -> None:
        for pid in list(self.children):
            self._terminate(pid)
        deadline = time.monotonic() + GRACE_SECONDS
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in list(self.children):
            self._signal(pid, signal.SIGKILL)
        while self.children:
            self._reap()
            time.sleep(0.05)
        self.listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        folder = os.path.dirname(self.path)
        if os.path.basename(folder).startswith("gbm-warm-"):  # warm_launch's own directory: gone with it
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self.log("stopped")


def serve(path: str, watch_pid: int | None = None, preload_modules: bool = True,
          listen_fd: int | None = None) -> int:
    return WarmServer(path, watch_pid, listen_fd=listen_fd).serve(preload_modules)

