"""The process's umask (standard library only: the warm worker's client reads it before any heavy import)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def current_umask() -> int:
    """The umask, read without changing it where Linux reports it; elsewhere ``os.umask`` must set one briefly."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
