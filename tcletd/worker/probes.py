"""Test-only probes: what a worker does instead of its script when a test asks it to prove the
sandbox from inside (a raw ``socket()``+``connect()``, an ``execve``, an allocation burst).

Worker side of the trust boundary, but never reachable by a tclet: a probe is chosen only by
:attr:`tcletd.shared.protocol.WorkerSpec.probe`, which the host sets for no launch request, no
control frame and no API keyword; only tests that drive a :class:`tcletd.host.supervisor.
Supervisor` themselves set it. A probe runs after the whole sandbox is in place, exactly where
the tclet's script would start, prints one line ``PROBE <name> <outcome>`` on stdout and exits 0
(or dies trying: that is a result too).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable


def _connect(args: list[str]) -> str:
    """``connect HOST PORT``: a socket the worker makes itself, connected to a local listener."""
    host, port = args[0], int(args[1])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return f"socket-failed {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    try:
        sock.settimeout(2.0)
        sock.connect((host, port))
    except OSError as exc:
        return f"connect-failed {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    finally:
        sock.close()
    return "connected"


def _exec(args: list[str]) -> str:
    """``exec PATH``: replace the worker with another program."""
    try:
        os.execv(args[0], [args[0]])  # noqa: S606  (the probe is the attempt itself)
    except OSError as exc:
        return f"exec-failed {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def _alloc(args: list[str]) -> str:
    """``alloc BYTES``: allocate and touch BYTES at once, faster than any poll can see."""
    chunks = []
    size = int(args[0])
    step = 16 * 2**20
    for _ in range(0, size, step):
        chunks.append(bytearray(step))  # bytearray(n) zero-fills: every page is touched
    return f"allocated {sum(len(c) for c in chunks)}"


PROBES: dict[str, Callable[[list[str]], str]] = {
    "connect": _connect,
    "exec": _exec,
    "alloc": _alloc,
}


def run(probe: str) -> int:
    """Run ``probe`` (``NAME ARG...``); print its outcome; the worker's exit status."""
    name, *args = probe.split()
    outcome = PROBES[name](args)
    sys.stdout.write(f"PROBE {name} {outcome}\n")
    sys.stdout.flush()
    return 0
