"""Run directories in the temporary directory: made locked, reclaimed once their owner is dead.

Host side of the trust boundary. A host process keeps its private files (the ZeroMQ ``ipc://``
endpoint) in a ``tcletd-*`` directory, and holds an ``flock`` on its ``lock`` file for its life:
the kernel drops the lock when the process dies, however it dies. ``kill -9`` used to leave every
such directory behind (150 of them in this machine's /tmp once); now each new host removes those
whose lock it can take. Only directories of this user's, never through a symlink; the lock file
appears (under its final name) already locked, so a live host's directory is never taken for a
dead one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

PREFIX = "tcletd-"
LOCK = "lock"
# A directory without a lock file is one being made (for microseconds) or one whose owner died
# before it locked it: reclaimed only once it is older than this.
UNLOCKED_AGE = 60.0

log = logging.getLogger(__name__)


class RunDir:
    """A private (0700) directory, locked for as long as this object is open."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.path.chmod(0o700)
        staged = self.path / f".{LOCK}"
        self._lock: int | None = os.open(staged, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(staged, self.path / LOCK)  # seen by reclaimers only once locked

    def close(self) -> None:
        """Remove the directory, then let the lock go."""
        if self._lock is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock)
        self._lock = None


def reclaim(tmp: str | None = None) -> list[Path]:
    """Remove every dead host's run directory in ``tmp`` (default: the temporary directory);
    the ones removed. Never raises: a directory that cannot be examined is left alone."""
    base = Path(tmp or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(base) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = base / name
        try:
            if _dead(path):
                removed.append(path)
        except OSError as exc:  # raced with its owner or another reclaimer: not ours to judge
            log.debug("run directory %s left alone: %s", path, exc)
    return removed


def _answers(path: Path) -> bool:
    """Whether a socket in an unlocked directory (a host older than the lock) still listens."""
    for entry in path.iterdir():
        if stat.S_ISSOCK(entry.lstat().st_mode):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(entry))
                except OSError:
                    continue
                return True
    return False


def _dead(path: Path) -> bool:
    """Remove ``path`` if it is a dead host's run directory of ours; whether it was removed."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False  # a symlink, a file, someone else's
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            lock = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            if time.time() - info.st_mtime < UNLOCKED_AGE or _answers(path):
                return False
            shutil.rmtree(path)
            return True
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its host is alive
            shutil.rmtree(path)  # while holding its lock: no other reclaimer races us
            return True
        finally:
            os.close(lock)
    finally:
        with contextlib.suppress(OSError):
            os.close(dir_fd)
