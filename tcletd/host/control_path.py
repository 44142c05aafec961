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
from pathlib import Path

from tcletd.shared.errors import TcletdError

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
        raise TcletdError(f"{path}: a tcletd host is already serving there") from None
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: its host is gone
        else:
            os.close(lock)
            raise TcletdError(f"{path}: a tcletd host is already serving there")
        finally:
            probe.close()
    _LOCKS[path] = lock


def release(path: Path) -> None:
    """Remove the socket's path and drop its lock (the next host may claim it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if (lock := _LOCKS.pop(path, None)) is not None:
        os.close(lock)
