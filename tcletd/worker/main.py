"""Worker process entry: the first code that runs in a worker the zygote just forked.

Worker side of the trust boundary. It wires the process up before any tclet code runs: the
worker dies with the zygote (which dies with the host), stdout/stderr become the host's output
socketpairs, the worker enters its cgroup and its own empty network namespace
(:mod:`tcletd.worker.netns`: while it has one thread, since a namespace belongs to a thread),
the link to the host is made, the Tcl runtime is fitted to the tclet, the sandbox
(:mod:`tcletd.worker.sandbox`, ending with the seccomp filter) closes the process down, then
the runtime runs the tclet. A warm worker did the part that does not depend on its tclet
before its Spawn came (:class:`Ahead`). The zygote (:mod:`tcletd.worker.zygote`) imports this
module, so its imports are paid once, not per worker (none is imported later in a worker).
"""

from __future__ import annotations

import _tkinter
import contextlib
import ctypes
import os
import signal
import socket
import sys
import tkinter
from collections.abc import Callable, Sequence

import msgspec
import zmq  # noqa: F401  (imported once, in the zygote)

from tcletd.shared import cpus
from tcletd.shared import protocol as p
from tcletd.shared import spawn as wire
from tcletd.shared.errors import EXIT_SOFTWARE
from tcletd.worker import netns, sandbox
from tcletd.worker.channels import ChannelFactory
from tcletd.worker.link import EXIT_HOST_GONE, Link, LinkStart
from tcletd.worker.tclrt import TclRuntime

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (a worker's is the zygote,
    the zygote's the host); exit at once if the parent is gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or parent == 1:
        os._exit(EXIT_HOST_GONE)  # the parent died before the request took effect


def _redirect_output(out: socket.socket, err: socket.socket) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    out.close()
    err.close()


class Ahead:
    """What a warm worker did before its Spawn came, none of it the tclet's: it entered the
    cgroup the host made for it, closed what it inherited from the zygote, entered its own
    network namespace (its kernel memory then charged to that cgroup), made its link's ZeroMQ
    context and DEALER, connected it to the host as the routing identity the host chose for
    this child (its ``Warm``'s), and started Tcl's notifier: every thread it has was made in
    its cgroup (moving a thread in later, by its id, takes the kernel's global threadgroup
    lock: 6-16 ms measured here). It also makes its runtime's channel factory
    (:class:`EarlyChannels`: the runtime's construction ~0.65 instead of ~0.8 ms, traced) and
    rehearses the sandbox's reads (:func:`tcletd.worker.sandbox.rehearse`: ~25 of ~225 page
    faults between the Spawn and the hello gone). Launch to hello, traced on a quiet VM: ~9.1
    ms before, ~7.0 ms with the cgroup, namespace, link and notifier made ahead."""

    def __init__(self, keep: int, warm: wire.Warm, prepared: tkinter.Tk) -> None:
        die_with_parent()
        _enter_cgroup(warm.cgroup_procs)  # first: every page it touches from here is charged
        self.cgroup_procs = tuple(warm.cgroup_procs)
        _close_inherited(keep)
        netns.enter()
        self.link = LinkStart()
        if warm.ident:
            # Connected ahead, as the identity the host chose for this child: the host ignores
            # its frames and sends it nothing until a launch claims it, and then still takes
            # nothing from it before its hello with that launch's token.
            self.link.connect(warm.endpoint, warm.ident)
            if not self.link.settle():
                os._exit(EXIT_HOST_GONE)
        prepared.dooneevent(_tkinter.DONT_WAIT)  # Tcl's notifier thread, as runtime.prime()
        self.channels = EarlyChannels(prepared)
        sandbox.rehearse()


class EarlyChannels:
    """A :class:`~tcletd.worker.channels.ChannelFactory` made before its runtime: a warm
    worker makes it ahead (its eventfd, the channel commands and their Tcl procedure), and the
    :class:`~tcletd.worker.tclrt.TclRuntime` that takes it gets its closes. Measured in forks
    of a prepared interpreter: the runtime's construction went from ~0.6 ms (216 page faults)
    to ~0.35-0.45 ms (83) with the factory made ahead."""

    def __init__(self, tk: tkinter.Tk) -> None:
        self._deliver: Callable[[int], None] | None = None
        self.factory = ChannelFactory(tk, self._closed)

    def take(self, deliver: Callable[[int], None]) -> ChannelFactory:
        self._deliver = deliver
        return self.factory

    def _closed(self, sock_id: int) -> None:
        if self._deliver is not None:  # none closes before the runtime takes the factory
            self._deliver(sock_id)


def _close_inherited(keep: int) -> None:
    """Close every descriptor above the standard streams but ``keep``."""
    os.closerange(3, keep)
    os.closerange(keep + 1, _fd_ceiling())


def _own_descriptors_only(fdsock: socket.socket) -> socket.socket:
    """Close every descriptor the worker inherited but its standard streams and ``fdsock``, and
    move ``fdsock`` to the lowest free number; the socket object for it.

    The zygote's own descriptors (its link to the host) are not the tclet's to hold. And a parent
    that held a descriptor per live worker (multiprocess's fork server did) would have a worker
    forked while a thousand run inherit, and receive its own socketpair at, numbers above a
    thousand. Tcl 8.6's notifier
    watches with ``select()``, which aborts the process (glibc's "bit out of range 0 -
    FD_SETSIZE") for a descriptor of 1024 or more: the link's socketpair is watched, and every
    socket the host hands over would land above the inherited ones. After this, a worker's
    descriptors are numbered from the bottom whatever the number of its siblings.
    """
    keep = fdsock.fileno()
    _close_inherited(keep)
    low = os.dup(keep)  # the lowest free number: 3
    moved = socket.socket(fileno=low)
    fdsock.close()
    return moved


def _fd_ceiling() -> int:
    """One past the highest descriptor this process holds (closerange's end)."""
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _thread_ids() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def _enter_cgroup(procs: Sequence[str]) -> None:
    """Move this process into the cgroup the host made for it, and read the move back from the
    kernel; exit rather than go on outside it. Done first, before any thread or allocation of
    the worker's own, so all of them count against the cgroup's limits (and no host round trip
    is needed to hold the script back until the worker is placed).

    While the process has one thread, cgroup v1 moves it through ``tasks`` (``0``: the caller):
    a ``cgroup.procs`` write takes the kernel's global threadgroup lock, whose first taker after
    a quiet spell waits out an RCU grace period. Measured on this VM with launches 150 ms apart:
    the cpu hierarchy's move p50 14.3 ms through ``cgroup.procs``, 0.4 ms through ``tasks``.
    """
    pid = str(os.getpid()).encode()
    try:
        alone = bool(procs) and len(os.listdir("/proc/self/task")) == 1
    except OSError:
        alone = False
    for path in procs:
        tasks = path[: -len("cgroup.procs")] + "tasks"
        by_task = alone and os.path.exists(tasks)
        try:
            fd = os.open(tasks if by_task else path, os.O_WRONLY)
            try:
                os.write(fd, b"0" if by_task else pid)
            finally:
                os.close(fd)
            with open(path, "rb") as listed:
                placed = pid in listed.read().split()
        except OSError as exc:
            placed, why = False, str(exc)
        else:
            why = "its pid is not listed after the move"
        if not placed:
            os.write(2, f"tcletd worker: cannot enter its cgroup {path}: {why}\n".encode())
            os._exit(EXIT_SOFTWARE)


def run(
    spec_bytes: bytes,
    fdsock: socket.socket,
    out: socket.socket,
    err: socket.socket,
    cgroup_procs: Sequence[str] = (),
    prepared: tkinter.Tk | None = None,
    *,
    ahead: Ahead | None = None,
    placement: cpus.Placement | None = None,
) -> None:
    """Run one tclet and exit with its status; never returns. ``cgroup_procs``: the
    ``cgroup.procs`` files of the worker's cgroup (none where the host has no cgroups);
    ``prepared``: the zygote's interpreter (:func:`tcletd.worker.tclrt.prepare_interp`);
    ``ahead``: a warm worker's start, made before the Spawn (then ``fdsock`` is numbered low
    already: it came after the zygote's descriptors were closed); ``placement``: the host's
    CPUs (:mod:`tcletd.shared.cpus`; None: it stays where it was forked)."""
    die_with_parent()
    # The host's signals are for the host; a worker ends on SIGTERM at once (no Python cleanup).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _redirect_output(out, err)
    if ahead is None:
        fdsock = _own_descriptors_only(fdsock)
    if ahead is None or ahead.cgroup_procs != tuple(cgroup_procs):
        # A warm worker's threads exist: with more than one, this moves the whole process
        # (cgroup.procs), slow but never outside its cgroup. The host hands a Spawn only to
        # the child announced in the cgroup named, so this does not happen.
        _enter_cgroup(cgroup_procs)
    # After the cgroup (the namespace's kernel memory is then charged to it) and before any
    # thread exists (libzmq's, Tcl's notifier), so that all of them are in it.
    if ahead is None:
        netns.enter()
    try:
        spec = p.SPEC_DECODER.decode(spec_bytes)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        os.write(2, f"tcletd worker: bad start arguments: {exc}\n".encode())
        os._exit(EXIT_SOFTWARE)
    if spec.demoted:
        # Before the link and Tcl start their threads, so that every thread inherits the class
        # (a warm worker's exist already: each is put in it by its id).
        for tid in [0] if ahead is None else _thread_ids():
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        if placement is not None:
            # And off the CPU left to tclets that behave, start and all: a launch storm's
            # starts, idle class though they are, each ran to a tick there (see cpus).
            with contextlib.suppress(OSError):
                cpus.place(placement.rest)
    link = Link(spec, fdsock, ahead.link if ahead is not None else None)
    runtime = TclRuntime(
        spec,
        link,
        prepared=prepared,
        channels_from=ahead.channels.take if ahead is not None else None,
    )
    link.attach(runtime)
    # Every thread (libzmq's, Tcl's notifier) must exist before the sandbox forbids new ones,
    # and so must the link's socket, which libzmq's I/O thread makes in its own time.
    runtime.prime()
    # A test's probe never says hello (its endpoint may be no host at all): it need not wait.
    if not spec.probe and not link.wait_connected():
        os.write(2, b"tcletd worker: cannot reach the host\n")
        os._exit(EXIT_HOST_GONE)
    sandbox.apply(spec)
    runtime.on_policy = lambda grant: sandbox.follow(grant.nofile, grant.memory, grant.cpu)
    if spec.probe:
        from tcletd.worker import probes

        sys.stdout.flush()
        os._exit(probes.run(spec.probe))
    link.hello()
    status = runtime.run()
    # None when the host was started with its own stdout closed (`tcletd run t.tcl >&-`): the
    # zygote, and so every worker, then has no Python-level stdout, only fd 1 (ours).
    if sys.stdout is not None:
        sys.stdout.flush()
    # Deliver what is still queued (a LimitHit, the last Closes) before the process goes.
    link.shutdown()
    os._exit(status)
