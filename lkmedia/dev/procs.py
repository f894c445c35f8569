"""Process facts from /proc for the dev tools, tests and benches: a process's children and
the CPU time it has used."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            if int(_stat(int(name))[1]) == pid:
                out.append(int(name))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used; 0 once it is gone."""
    try:
        f = _stat(pid)
    except (OSError, IndexError):
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
