"""Who is still running: process identity that survives pid reuse.

A pid alone can be reused by an unrelated process after the first one dies, so an identity is
(host, pid, start time). The start time is the kernel's (field 22 of /proc/<pid>/stat, clock ticks
since boot) on Linux; elsewhere it is unknown ("") and only the pid is checked.
"""

from __future__ import annotations

import os
import socket


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first), or None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ')'
    return stat.rsplit(")", 1)[-1].split()


def start_time(pid: int) -> str:
    """The start time of process `pid` as an opaque string; "" where unknown or the process is gone."""
    fields = _stat(pid)
    return fields[19] if fields else ""


def identity() -> dict[str, str]:
    """This process: {"host", "pid", "start"}."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "start": start_time(pid)}


def is_alive(host: str, pid: str | int, start: str) -> bool | None:
    """Whether the process (host, pid, start) still runs: True/False, or None when it is on another
    host (it cannot be checked from here). A zombie (killed, not yet reaped) counts as gone, and so
    does a live process whose start time differs (the pid was reused)."""
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except PermissionError:
        pass  # it exists, owned by another user
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    fields = _stat(pid)
    if fields is None:
        return not os.path.isdir("/proc")  # no procfs (macOS...): the pid exists, trust it
    return fields[0] not in ("Z", "X") and (not start or fields[19] == start)
