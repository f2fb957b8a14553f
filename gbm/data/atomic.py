"""Atomic file writes: a reader sees either the previous file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from gbm.umask import current_umask


def _temporary_prefix(path: Path, pid: int | None = None) -> str:
    """``.tmp-STEM-HOST-PID-``: whose temporary file it is, so that a later write can tell one left by a killed
    process from one being written."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    return f".tmp-{path.stem}-{host}-{os.getpid() if pid is None else pid}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of ``path`` that processes of this host, now gone, left (a kill during a
    write); those of live processes and other hosts stay. Returns the removed paths."""
    prefix = _temporary_prefix(path, pid=0)[:-2]
    name = re.compile(rf"{re.escape(prefix)}(\d+)-[a-z0-9_]{{8}}{re.escape(path.suffix)}")  # mkstemp's 8 characters
    removed = []
    for candidate in path.parent.glob(glob.escape(prefix) + "*"):
        match = name.fullmatch(candidate.name)
        if match and not _alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` with ``os.replace``.

    The temporary name keeps the final suffix (numpy and torch look at it) and starts with ``.tmp-`` so
    that nothing globbing for finished files picks it up; it names the host and process writing it, and a
    write removes the temporary files of the same path that a killed process left. On error the temporary
    file is removed. The file gets the mode a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temporaries(path)
    handle, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=path.suffix, dir=path.parent)
    os.fchmod(handle, 0o666 & ~current_umask())
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # on disk before it takes the final name
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode())


def write_stream_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Atomically write what ``write(handle)`` writes to a binary file handle (``torch.save``, ``np.savez``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def cache_dir() -> Path:
    """The user cache directory: ``$GBM_CACHE_DIR`` if set, else ``~/.cache/gbm``."""
    return Path(os.environ.get("GBM_CACHE_DIR") or Path.home() / ".cache" / "gbm").expanduser()


def downloads_allowed() -> bool:
    """False when ``GBM_NO_DOWNLOAD`` is set to a non-empty value other than ``0`` (tests, air-gapped CI)."""
    return os.environ.get("GBM_NO_DOWNLOAD", "") in ("", "0")
