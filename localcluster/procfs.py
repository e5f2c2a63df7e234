"""What Linux's /proc says of a process: its state, its parent, the CPU time it used."""

from __future__ import annotations

import os
from pathlib import Path


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name, which may hold spaces and parentheses itself:
    [0] the state ("Z" for a zombie), [1] the parent's PID, [11] and [12] user and system CPU in clock ticks.
    Raises OSError when the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int | None) -> float:
    """User and system CPU seconds a process has used so far (0 when there is none, or it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
