"""Where the resident host's control socket lives: claiming its path, and giving it up.

Host side of the trust boundary: the socket's directory is what keeps other users from the
host's clients' seat (the peer check of :mod:`tcletd.host.control` is the second line), so it
must be private, and one host at a time may serve on a path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from pathlib import Path

from tcletd.shared.errors import InUse, TcletdError

_LOCKS: dict[Path, int] = {}  # the control sockets this process serves on: their locks


def claim(path: Path) -> None:
    """Make the socket's directory (0700) and take the path, unless a host answers there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.parent.stat()
    # A directory others may write to without the sticky bit lets them swap our socket.
    if info.st_uid not in (os.getuid(), 0) or (info.st_mode & 0o022 and not info.st_mode & 0o1000):
        raise TcletdError(f"{path.parent}: others can replace files there; use a private directory")
    # Held for the host's life; the kernel drops it however the host dies (kill -9 included).
    lock = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise InUse(in_use(path, holder(path))) from None
    if path.exists() or path.is_symlink():
        pid = holder(path)
        if pid is None:
            path.unlink()  # stale: its host is gone
        else:
            os.close(lock)
            raise InUse(in_use(path, pid))
    _LOCKS[path] = lock


def holder(path: Path) -> int | None:
    """The pid of the host listening on ``path`` (the kernel's record of who called listen), or
    None when nothing answers there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        probe.close()
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def in_use(path: Path, pid: int | None) -> str:
    # No pid: its lock is held but nothing listens yet (a host starting up).
    who = f"pid {pid}" if pid is not None else "starting up"
    return f"serve: {path} is in use by a tcletd host ({who})"


def release(path: Path) -> None:
    """Remove the socket's path and drop its lock (the next host may claim it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if (lock := _LOCKS.pop(path, None)) is not None:
        os.close(lock)
