"""The worker's OS sandbox: resource limits and process flags a worker puts on itself.

Worker side of the trust boundary. :func:`apply` runs in the worker once its Tcl interpreter,
Tcl's notifier thread and its ZeroMQ context (with libzmq's threads) exist, and before the
tclet's script runs: libzmq *aborts* (an assertion, not an error) when it creates a thread under a
small ``RLIMIT_AS`` (measured: 32 MiB aborts, 64 MiB and up work), and no thread may be created
once ``RLIMIT_NPROC`` is 0.
Hard limits are the most that any policy this tclet may still be granted allows (``policy NAME``;
:func:`ceiling`), soft limits its current policy's; a grant moves the soft limits (:func:`follow`).
Under a fixed policy soft = hard (except CPU), so nothing in the process can raise them.

What it applies (the host watches RSS, CPU and descriptors itself and acts first; these are the
backstops for when it cannot be fast enough):

- ``RLIMIT_CORE`` 0 and ``PR_SET_DUMPABLE`` 0: no core dump, no ptrace attach by same-uid
  processes. (Side effect the host must know: a non-root host cannot list ``/proc/PID/fd`` of
  a non-dumpable worker; ``/proc/PID/stat``, ``statm`` and ``status`` stay readable.)
- ``RLIMIT_FSIZE`` 0 with ``SIGXFSZ`` ignored: any write to a regular file fails with ``EFBIG``.
  stdout/stderr are sockets, so they are not affected.
- No child processes. What actually stops them is the Safe Base: ``exec``, ``open`` (so
  ``open |cmd``) and ``load`` are hidden in the tclet and in every interpreter it creates, and
  nothing reaches Python. Belt and braces: ``RLIMIT_NPROC`` 0 (fork and thread creation fail
  with ``EAGAIN`` for a non-root uid; root is exempt) and ``PR_SET_NO_NEW_PRIVS`` (an exec
  could never gain privileges).
- ``RLIMIT_NOFILE`` when ``spec.nofile`` > 0: the limit is chosen so that exactly
  ``spec.nofile + FD_HEADROOM`` descriptor slots are free when it is applied (everything the
  worker holds at that moment stays usable). ``spec.nofile`` is therefore the number of
  descriptors the *tclet* may hold (its socket quota); ``FD_HEADROOM`` covers the runtime's
  own transient needs (Tcl reading a package or encoding file).
- ``RLIMIT_AS`` when ``spec.memory`` > 0: the current ``VmSize`` plus ``AS_HEADROOM`` times
  ``spec.memory`` bytes. It is a backstop under the host's resident-size watch, not the limit:
  with only ``spec.memory`` of room, a doubling allocation fails while the resident size is
  still half the limit, and the tclet would see a catchable "out of memory" instead of being
  ended for its memory limit. Allocation failure makes Tcl panic (``SIGABRT``; no core).
- ``RLIMIT_CPU`` when ``spec.cpu`` > 0: soft ``ceil(cpu) + 1`` s (``SIGXCPU``), hard
  ``ceil(cpu) + 2`` s (``SIGKILL``), counted over the process's whole CPU time.
- Last, the seccomp filter (:mod:`tcletd.worker.seccomp`), on every thread. The network
  namespace (:mod:`tcletd.worker.netns`) was entered at the worker's start, before any thread
  existed; :class:`Applied` reports both as the kernel confirmed them.

:func:`selftest` (and ``python -m tcletd.worker.sandbox``) applies a sample sandbox in a forked
child and returns what it applied and what the kernel then reports: for ``tcletd doctor``.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
from dataclasses import dataclass, field
from typing import Any

from tcletd.shared.protocol import WorkerSpec
from tcletd.worker import netns, seccomp

__all__ = [
    "FD_HEADROOM",
    "Applied",
    "apply",
    "ceiling",
    "descriptors",
    "follow",
    "nofile_limit",
    "open_fds",
    "read_limits",
    "selftest",
    "vm_size",
]

FD_HEADROOM = 8
"""Descriptor slots left free beyond the tclet's quota, for the runtime's own transient use."""

AS_HEADROOM = 2
"""The address-space backstop allows this many times the memory limit (see the docstring)."""

_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39

# /proc/self/limits row names, for reading back what the kernel holds.
_LIMIT_NAMES = {
    "core": resource.RLIMIT_CORE,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
}


@dataclass
class Applied:
    """What :func:`apply` did: the limits it set (``name -> (soft, hard)``) and the flags."""

    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    dumpable: bool = True
    no_new_privs: bool = False
    notes: list[str] = field(default_factory=list)
    network: netns.Layer | None = None
    filter: netns.Layer | None = None

    def describe(self) -> list[str]:
        """One line per setting, for ``tcletd doctor`` and logs."""
        lines = [f"rlimit {name}: soft={s} hard={h}" for name, (s, h) in self.limits.items()]
        lines.append(f"dumpable: {int(self.dumpable)}")
        lines.append(f"no_new_privs: {int(self.no_new_privs)}")
        lines.extend(f"note: {n}" for n in self.notes)
        if self.network is not None:
            lines.append(self.network.line("network namespace"))
        if self.filter is not None:
            lines.append(self.filter.line("seccomp"))
        return lines


def descriptors() -> dict[int, int]:
    """Each descriptor open in this process (not the one used to list them), with its inode: a
    number reused for another file shows another (eventfds all share one)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.fstat(int(name)).st_ino
        except OSError:  # the directory descriptor os.listdir used, closed since
            continue
    return out


def open_fds() -> list[int]:
    """Descriptors open in this process (without the one used to list them)."""
    return sorted(descriptors())


def vm_size() -> int:
    """This process's virtual size in bytes (``VmSize``), 0 if unknown."""
    try:
        # statm's first field, in pages, with one read: status and a file object cost a worker
        # ~0.1 ms more. No codec to import either (it may no longer be readable at this point).
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            return int(os.read(fd, 256).split()[0]) * _PAGE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0


def nofile_limit(fds: list[int], free: int) -> int:
    """The smallest RLIMIT_NOFILE that leaves ``free`` slots unused below it, given ``fds``.

    New descriptors take the lowest free numbers below the limit; descriptors already open at
    or above it stay valid but take no slot, so the count is over numbers below the limit.
    """
    taken = set(fds)
    limit = 0
    unused = 0
    while unused < free:
        if limit not in taken:
            unused += 1
        limit += 1
    return limit


def _prctl(option: int, arg: int) -> int:
    return int(seccomp.LIBC.prctl(option, arg, 0, 0, 0))


def _set(applied: Applied, name: str, soft: int, hard: int) -> None:
    kind = _LIMIT_NAMES[name]
    _cur_soft, cur_hard = resource.getrlimit(kind)
    # An unprivileged process cannot raise its hard limit: never ask for more than it has.
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    try:
        resource.setrlimit(kind, (soft, hard))
    except (OSError, ValueError) as exc:
        applied.notes.append(f"rlimit {name} not set: {exc}")
        return
    applied.limits[name] = (soft, hard)


def apply(spec: WorkerSpec) -> Applied:
    """Apply the sandbox to this process, per ``spec``; returns what was applied.

    Irreversible: call it only in a worker, after Tcl's notifier thread and the ZeroMQ context
    exist, before any tclet code runs.
    """
    applied = Applied()
    _set(applied, "core", 0, 0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death on a file write
    _set(applied, "fsize", 0, 0)
    # What the runtime itself holds when the sandbox goes on: a later policy's limits are
    # counted on top of the same (:func:`follow`).
    _held["fds"], _held["vm"] = open_fds(), vm_size()
    softs = _backstops(spec.nofile, spec.memory, spec.cpu)
    hards = _backstops(*ceiling(spec))
    for name, soft in softs.items():
        hard = hards[name]
        if name == "cpu" and hard != resource.RLIM_INFINITY:
            hard += 1  # SIGKILL a second after SIGXCPU, at the most a policy may allow
        if soft != resource.RLIM_INFINITY or hard != resource.RLIM_INFINITY:
            _set(applied, name, soft, hard)
    # Last among the limits: from here on, not even a thread can be created (non-root).
    _set(applied, "nproc", 0, 0)
    if os.geteuid() == 0:
        applied.notes.append("running as root: RLIMIT_NPROC does not bind")
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1) == 0:
        applied.no_new_privs = _prctl(_PR_GET_NO_NEW_PRIVS, 0) == 1
    else:
        applied.notes.append(f"PR_SET_NO_NEW_PRIVS failed: errno {ctypes.get_errno()}")
    if _prctl(_PR_SET_DUMPABLE, 0) != 0:
        applied.notes.append(f"PR_SET_DUMPABLE failed: errno {ctypes.get_errno()}")
    applied.dumpable = _prctl(_PR_GET_DUMPABLE, 0) != 0  # what the kernel says, not what we asked
    applied.network = netns.state
    if spec.probe.split()[:1] == [seccomp.SKIP_WORD]:
        applied.filter = netns.Layer(False, "skipped by a test probe")
    else:
        applied.filter = seccomp.load()  # last: after NO_NEW_PRIVS, every thread exists
    return applied


def rehearse() -> None:
    """Run ahead, in a warm worker, the reads :func:`apply` makes (descriptors, size, every
    thread's seccomp status): their first run in a fork copies the pages their code and objects
    share with the zygote, which a warm worker then does before its launch, not after it."""
    open_fds()
    vm_size()
    seccomp.rehearse()


def follow(nofile: int, memory: int, cpu: float) -> Applied:
    """A new policy is in force: move the soft limits to its values (0: none), under the hard
    ceilings :func:`apply` set for every policy this tclet may be granted."""
    applied = Applied()
    for name, soft in _backstops(nofile, memory, cpu).items():
        _soft, hard = resource.getrlimit(_LIMIT_NAMES[name])
        if name == "cpu" and hard != resource.RLIM_INFINITY:
            soft = min(soft, hard - 1)  # SIGXCPU before the hard limit's SIGKILL
        _set(applied, name, soft, hard)
    return applied


def ceiling(spec: WorkerSpec) -> tuple[int, int, float]:
    """The most any policy this tclet may be granted allows: ``(nofile, memory, cpu)``, 0 for
    no limit (a ``-1`` in the spec: no other policy, the current limit is the ceiling)."""
    return (
        spec.nofile if spec.nofile_max < 0 else spec.nofile_max,
        spec.memory if spec.memory_max < 0 else spec.memory_max,
        spec.cpu if spec.cpu_max < 0 else spec.cpu_max,
    )


# Descriptors and address space the runtime held when the sandbox went on (this process only).
_held: dict[str, Any] = {"fds": [], "vm": 0}


def _backstops(nofile: int, memory: int, cpu: float) -> dict[str, int]:
    """Each backstop's limit for these values (RLIM_INFINITY for 0: none)."""
    none = resource.RLIM_INFINITY
    return {
        "nofile": nofile_limit(_held["fds"], nofile + FD_HEADROOM) if nofile > 0 else none,
        "as": _held["vm"] + AS_HEADROOM * memory if memory > 0 else none,
        "cpu": math.ceil(cpu) + 1 if cpu > 0 else none,
    }


def read_limits(pid: int | str = "self") -> dict[str, tuple[str, str]]:
    """``/proc/PID/limits`` as ``name -> (soft, hard)`` for the limits this module sets."""
    rows = {
        "Max core file size": "core",
        "Max file size": "fsize",
        "Max processes": "nproc",
        "Max open files": "nofile",
        "Max address space": "as",
        "Max cpu time": "cpu",
    }
    out: dict[str, tuple[str, str]] = {}
    with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
        for line in limits:
            for title, name in rows.items():
                if line.startswith(title):
                    soft, hard = line[len(title) :].split()[:2]
                    out[name] = (soft, hard)
    return out


def selftest() -> list[str]:
    """Apply a sample sandbox in a forked child and return what it and the kernel report.

    The child is made like a worker: it enters its network namespace while it has one thread,
    starts a thread (as libzmq and Tcl do, to show the filter reaches every thread), then
    applies the sandbox. It reports over a pipe: once sandboxed it could not write to a regular
    file, and this process's stdout may be one.
    """
    spec = WorkerSpec(
        tclet_id="selftest",
        token="",
        endpoint="",
        script="",
        script_name="",
        argv=[],
        embed_args={},
        policy="",
        hidden_options=[],
        nofile=16,
        memory=256 * 2**20,
        cpu=10.0,
    )
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        try:
            netns.enter()
            import threading

            release = threading.Event()
            threading.Thread(target=release.wait, daemon=True).start()
            lines = apply(spec).describe()
            release.set()
            lines += [f"kernel {n}: soft={s} hard={h}" for n, (s, h) in read_limits().items()]
            os.write(wfd, "\n".join(lines).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    while data := os.read(rfd, 65536):
        chunks.append(data)
    os.close(rfd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode().splitlines()


if __name__ == "__main__":
    print("\n".join(selftest()))
