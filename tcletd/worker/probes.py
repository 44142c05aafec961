"""Test-only probes: what a worker does instead of its script when a test asks it to prove the
sandbox from inside (a raw ``socket()``+``connect()``, an ``execve``, an allocation burst).

Worker side of the trust boundary, but never reachable by a tclet: a probe is chosen only by
:attr:`tcletd.shared.protocol.WorkerSpec.probe`, which the host sets for no launch request, no
control frame and no API keyword; only tests that drive a :class:`tcletd.host.supervisor.
Supervisor` themselves set it. A probe runs after the whole sandbox is in place, exactly where
the tclet's script would start, prints one line ``PROBE <name> <outcome>`` on stdout and exits 0
(or dies trying: that is a result too). A probe that starts with
:data:`tcletd.worker.seccomp.SKIP_WORD` runs without the seccomp filter, to prove the layers
under it alone.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable

from tcletd.worker.seccomp import SKIP_WORD


def _errname(exc: OSError) -> str:
    return str(errno.errorcode.get(exc.errno or 0, exc.errno))


def _dial(family: socket.AddressFamily, address: str | tuple[str, int]) -> str:
    """Make a socket of ``family`` and connect it to ``address``; the outcome."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        return f"socket-failed {_errname(exc)}"
    try:
        sock.settimeout(2.0)
        sock.connect(address)
    except OSError as exc:
        return f"connect-failed {_errname(exc)}"
    finally:
        sock.close()
    return "connected"


def _connect(args: list[str]) -> str:
    """``connect HOST PORT``: a socket the worker makes itself, connected to a local listener."""
    host, port = args[0], int(args[1])
    return _dial(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))


def _unix(args: list[str]) -> str:
    """``unix PATH``: a Unix socket the worker makes itself, connected to a pathname socket."""
    return _dial(socket.AF_UNIX, args[0])


def _exec(args: list[str]) -> str:
    """``exec PATH``: replace the worker with another program."""
    try:
        os.execv(args[0], [args[0]])  # noqa: S606  (the probe is the attempt itself)
    except OSError as exc:
        return f"exec-failed {_errname(exc)}"


def _kill(args: list[str]) -> str:
    """``kill PID|self``: signal 0 (existence and permission only) to a process."""
    pid = os.getpid() if args[0] == "self" else int(args[0])
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return f"kill-failed {_errname(exc)}"
    return "killed"


def _layers(_args: list[str]) -> str:
    """``layers``: this worker's network namespace (inode) and seccomp state, from the kernel."""
    status = {}
    with open("/proc/self/status", "rb") as lines:
        for line in lines:
            key, _, value = line.decode("ascii", "replace").partition(":")
            status[key] = value.strip()
    ns = os.stat("/proc/self/ns/net").st_ino
    # How the filter was made: compiled once in the zygote (a template) or by this worker.
    from tcletd.worker import seccomp

    made = "once" if "compiled once" in seccomp.state.detail else "here"
    return (
        f"netns={ns} seccomp={status.get('Seccomp')} filters={status.get('Seccomp_filters')} "
        f"compiled={made}"
    )


def _alloc(args: list[str]) -> str:
    """``alloc BYTES``: allocate and touch BYTES at once, faster than any poll can see."""
    chunks = []
    size = int(args[0])
    step = 16 * 2**20
    for _ in range(0, size, step):
        chunks.append(bytearray(step))  # bytearray(n) zero-fills: every page is touched
    return f"allocated {sum(len(c) for c in chunks)}"


def _threads(args: list[str]) -> str:
    """``threads N``: start up to N threads that sleep; how many started and how many the
    process ran before (its runtime's own), or the error that stopped it."""
    import threading

    before = len(os.listdir("/proc/self/task"))
    stop = threading.Event()
    started = 0
    outcome = "all"
    try:
        for _ in range(int(args[0])):
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except (RuntimeError, OSError) as exc:  # "can't start new thread": EAGAIN from clone()
        outcome = f"failed {type(exc).__name__}"
    finally:
        stop.set()
    return f"started {started} before {before} {outcome}"


def _cgroup(_args: list[str]) -> str:
    """``cgroup``: this process's cgroups as the kernel lists them (``/proc/self/cgroup``)."""
    with open("/proc/self/cgroup", encoding="ascii") as f:
        return " ".join(line.strip() for line in f)


PROBES: dict[str, Callable[[list[str]], str]] = {
    "threads": _threads,
    "cgroup": _cgroup,
    "connect": _connect,
    "exec": _exec,
    "unix": _unix,
    "kill": _kill,
    "layers": _layers,
    "alloc": _alloc,
}


def run(probe: str) -> int:
    """Run ``probe`` (``NAME ARG...``); print its outcome; the worker's exit status."""
    name, *args = probe.split()
    if name == SKIP_WORD:
        name, *args = args
    outcome = PROBES[name](args)
    sys.stdout.write(f"PROBE {name} {outcome}\n")
    sys.stdout.flush()
    return 0
