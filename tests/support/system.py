"""What this process and its descendants hold: descriptors, processes, scheduling classes.

The one place the tests use psutil."""

from __future__ import annotations

import contextlib
import os

import psutil  # type: ignore[import-untyped]  # no stubs installed (as in tcletd)


def open_fds(pid: int | str = "self") -> dict[int, str]:
    """A process's descriptors (this one's by default) and what they point at."""
    fds: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return fds


def new_fds(before: dict[int, str]) -> dict[int, str]:
    """Descriptors open now that were not open (to the same thing) in ``before``.

    Descriptors that closed since are fine: lazily closed ones from earlier work (a server
    thread's end of an old connection) may go at any time.
    """
    return {fd: t for fd, t in open_fds().items() if before.get(fd) != t}


def descendants(pid: int | None = None) -> set[int]:
    """PIDs of every live (non-zombie) descendant of a process (this one by default)."""
    alive: set[int] = set()
    for proc in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.add(proc.pid)
    return alive


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def sched_classes(pid: int) -> set[int]:
    """The scheduling policies of every thread of a process (os.SCHED_IDLE once demoted)."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
