"""GPU slots for concurrent jobs: each job holds one device through a lock file until it exits.

Snakemake's ``resources: gpu=1`` bounds how many GPU jobs run at once but does not say which GPU each
job gets, and it does not set ``CUDA_VISIBLE_DEVICES``. ``run_with_device`` picks a free device, holds an
exclusive ``fcntl`` lock on ``<lock dir>/<device>.lock`` and replaces itself (``exec``) with the job's
command with ``CUDA_VISIBLE_DEVICES`` set to that one device, so ``--device auto`` in the command sees
exactly one GPU. The kernel drops the lock when the command exits, however it exits.

Devices, first match wins:
1. ``GBM_GPU_SLOTS``: a count (``2``) or a list of ids (``0,1``); overrides detection (and simulates
   GPUs in tests).
2. ``CUDA_VISIBLE_DEVICES``, when a scheduler (SLURM, a user) already set it: one entry is used as it is,
   without a lock (the scheduler gave this job that device); several entries are shared out by locks.
   Empty or ``-1`` means no GPU.
3. ``nvidia-smi --query-gpu=index``.
4. None: the command runs on the CPU, environment untouched.

Standard library only, so the wrapper starts in milliseconds: ``python -m gbm.jobs.devices -- CMD``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCK_DIR_ENV = "GBM_GPU_LOCK_DIR"
SLOTS_ENV = "GBM_GPU_SLOTS"


@dataclass(frozen=True)
class Slot:
    """A device held by this process: ``device`` is ``"cpu"`` or a CUDA id; ``fd`` the held lock (or None);
    ``source`` where the device list came from (``visible_devices``)."""

    device: str
    fd: int | None
    source: str = field(default="none", compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.device != "cpu"


def _parse_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def visible_devices(environ: dict | None = None) -> tuple[list[str], str]:
    """The CUDA devices jobs may use and where that list came from."""
    environ = os.environ if environ is None else environ
    slots = environ.get(SLOTS_ENV)
    if slots is not None and slots.strip():
        slots = slots.strip()
        if slots.isdigit() and "," not in slots:
            return [str(i) for i in range(int(slots))], SLOTS_ENV
        return _parse_list(slots), SLOTS_ENV
    if "CUDA_VISIBLE_DEVICES" in environ:
        entries = _parse_list(environ["CUDA_VISIBLE_DEVICES"])
        if entries and entries[0] == "-1":
            entries = []
        return entries, "CUDA_VISIBLE_DEVICES"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout
            return _parse_list(out.replace("\n", ",")), "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    return [], "none"


def default_lock_dir(environ: dict | None = None) -> Path:
    """One lock directory per machine (or per SLURM job, whose devices are its own)."""
    environ = os.environ if environ is None else environ
    if environ.get(LOCK_DIR_ENV):
        return Path(environ[LOCK_DIR_ENV])
    name = "gbm-gpu-slots"
    if environ.get("SLURM_JOB_ID"):
        name += f"-slurm{environ['SLURM_JOB_ID']}"
    return Path(tempfile.gettempdir()) / name


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire(lock_dir: Path | None = None, environ: dict | None = None, timeout: float | None = None,
            poll: float = 0.2) -> Slot:
    """Hold a free device (blocking until one frees up, at most ``timeout`` seconds), or the CPU."""
    environ = os.environ if environ is None else environ
    devices, source = visible_devices(environ)
    if not devices:
        return Slot("cpu", None, source)
    if len(devices) == 1 and source == "CUDA_VISIBLE_DEVICES":
        return Slot(devices[0], None, source)
    lock_dir = default_lock_dir(environ) if lock_dir is None else Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for device in devices:  # the first free one, in order
            fd = _try_lock(lock_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock")
            if fd is not None:
                return Slot(device, fd, source)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {devices} (from {source}) after {timeout} s")
        time.sleep(poll)


def job_environment(slot: Slot, environ: dict | None = None) -> dict:
    """The environment a job runs with on ``slot``: its one device visible, ``GBM_DEVICE`` naming it."""
    env = dict(os.environ if environ is None else environ)
    if slot.is_gpu:
        env["CUDA_VISIBLE_DEVICES"] = slot.device
        env["GBM_DEVICE"] = "cuda:0"
    else:
        env["GBM_DEVICE"] = "cpu"
    return env


def scheduler_record(environ: dict | None = None) -> str:
    """What the scheduler gave this job, as the wrapper found it (one line for the job's log)."""
    environ = os.environ if environ is None else environ
    if not environ.get("SLURM_JOB_ID"):
        return "no SLURM job"
    given = {key: environ.get(key, "(unset)") for key in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")}
    return f"SLURM job {environ['SLURM_JOB_ID']} set " + " ".join(f"{k}={v}" for k, v in given.items())


def run_with_device(command: list[str], lock_dir: Path | None = None, timeout: float | None = None) -> int:
    """Acquire a slot, then ``exec`` ``command`` holding it (the lock is released when it exits)."""
    if not command:
        raise ValueError("command: nothing to run (usage: ... -- COMMAND [ARGS...])")
    slot = acquire(lock_dir, timeout=timeout)
    label = f"GPU {slot.device} (CUDA_VISIBLE_DEVICES={slot.device})" if slot.is_gpu else "CPU (no GPU visible)"
    print(f"gbm with-device: {label} for: {' '.join(command)}", file=sys.stderr, flush=True)
    print(f"gbm with-device: devices from {slot.source}; {scheduler_record()}", file=sys.stderr, flush=True)
    if slot.fd is not None:
        os.set_inheritable(slot.fd, True)
    os.execvpe(command[0], command, job_environment(slot))
    return 127  # not reached: exec replaces this process


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        return run_with_device(argv)
    except (ValueError, TimeoutError, OSError) as error:
        print(f"gbm with-device: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
