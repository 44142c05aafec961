"""The zygote: the process every worker is forked from.

On the host's side of the trust boundary, although it lives with the worker's code: no tclet
code runs in it, only in its children, after the fork. The host starts it
(``python -m tcletd.worker.zygote FD``) with one end of a SOCK_SEQPACKET socketpair
(:mod:`tcletd.shared.spawn` is the wire). It imports everything a worker runs, prepares the
interpreter every tclet shares (:func:`tcletd.worker.tclrt.prepare_interp`: the Safe Base's
set-up, most of a worker's own start), freezes the collector's view of all of it
(``gc.freeze()``: a child's collections then never walk, and so never copy, the zygote's
pages), says Ready, and serves Spawns one at a time: a fork each, the child going straight into
:func:`tcletd.worker.main.run`, which puts it in its cgroup, namespace and sandbox before the
tclet's first command. The zygote reaps its children and reports each exit, and sends the host a
pidfd for each child, so that the host signals the process it means even after the pid is reused.

Fork safety, checked rather than assumed: the zygote has one thread when it forks (it exits if
not; neither pyzmq, which starts threads with its first context, nor Tcl, whose notifier thread
starts at the first event-loop pass, has started one), so no lock can be held by a thread that
the child would not have. Tcl 8.6 also registers ``pthread_atfork`` handlers that reset its
notifier in the child. The zygote's descriptors 1 and 2 are a socket, as a worker's are, so that
the standard channels Tcl makes while the interpreter is prepared are socket channels, as they
were when each worker made its own interpreter on its output socketpair.

A warm pool (``python -m tcletd.worker.zygote FD N``) keeps children forked ahead, one per Warm
the host sends (at most N queued), which names the cgroup the host made for that child alone.
The child does ahead everything that does not depend on its tclet
(:class:`tcletd.worker.main.Ahead`): it enters that cgroup first (through ``tasks`` while it has
one thread, so every thread and page it makes from then on is the cgroup's), its own empty
network namespace, makes its link's ZeroMQ context and DEALER, connects it to the host's ROUTER
as the routing identity the Warm names (the host's choice, never used again: the host takes
nothing from it and sends it nothing until a launch claims the child, and then nothing before
its hello with that launch's token) and starts Tcl's notifier, then waits on a socketpair of
its own. The zygote gives the host its end of that socketpair and a pidfd for the child (a
WarmChild) and keeps nothing of it but the duty to reap it: the host sends
the child's Spawn to the child itself, without waking the zygote (traced on 2 cores, 30
launches each, alternated: from the host's send to the child's first instruction 0.7-0.9 ms
through the zygote, 0.3-0.5 ms straight; and the host's Spawned no longer competes with the
worker's start). The zygote reports every child's exit, a warm one's too (the host, which
knows whether it took it, asks for another in its cgroup if not). A Spawn the zygote does get
that names a warm cgroup (its child not forked yet, announced too late, or dead) is forked cold
into that cgroup, and the queued slot is dropped.
What stays after the Spawn: the interpreter's fitting, the rlimits and the seccomp filter (and
the connect, for a child of a host without a hub endpoint to give).

The zygote dies with the host (SIGKILL on its parent's death, or end of file on its socket), and
its workers die with it.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from tcletd.shared import cpus
from tcletd.shared import spawn as wire
from tcletd.shared.errors import EXIT_SOFTWARE

# Seconds without a Spawn before the zygote forks the warm pool's replacements, one per quiet
# moment: forking one beside a worker that is starting slowed that worker's start on 2 cores
# (launch to hello p50 18-21 ms with an eager refill, 14 ms without a pool).
REFILL_QUIET = 0.05
# What travels with a Spawn: the spec's memfd, the descriptor channel, stdout, stderr.
SPAWN_FDS = 4
# What _serve took: the end of the host's stream, a Spawn, anything else.
_END, _SPAWNED, _OTHER = object(), object(), object()
# A warm child's place: the cgroup.procs files of the cgroup the host made for it.
Slot = tuple[str, ...]


def main(argv: list[str]) -> int:
    usage = "usage: python -m tcletd.worker.zygote FD [WARM [CPUS REST]] (started by the host)"
    if len(argv) not in (2, 3, 5) or not all(a.isdigit() for a in argv[1:3]):
        sys.stderr.write(f"{usage}\n")
        return 2
    try:
        placement = cpus.Placement.from_argv(*argv[3:]) if len(argv) == 5 else cpus.placement()
    except ValueError as exc:
        sys.stderr.write(f"{usage}: {exc}\n")
        return 2
    sock = socket.socket(fileno=int(argv[1]))
    warm = int(argv[2]) if len(argv) >= 3 else 0
    # On every CPU, whichever thread of a host kept off one started it: its children start
    # there (a crowd's starts too), and its forks go where they can. Kept off it with its host,
    # 500 tclets of one site took 6.1-6.8 s to be up instead of 3.2-3.3.
    cpus.place(placement.behaving)
    from tcletd.worker import main as worker

    worker.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is the host's to handle
    _quiet_standard_streams()
    from tcletd.worker import seccomp
    from tcletd.worker.channels import probe
    from tcletd.worker.tclrt import prepare_interp

    prepared = prepare_interp()
    seccomp.prepare()  # the filter compiled once; a worker only writes its pid in
    with contextlib.suppress(Exception):  # a worker that cannot bind says so itself
        probe(prepared)  # binds the Tcl C API once, for every worker
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        sys.stderr.write(f"tcletd zygote: {threads} threads before forking; refusing\n")
        return EXIT_SOFTWARE
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select through wake_w
    _send(sock, wire.Ready(pid=os.getpid()))

    def child(msg: wire.Spawn, fds: list[int], ahead: worker.Ahead | None = None) -> None:
        spec = _read_all(fds[0])
        os.close(fds[0])
        worker.run(
            spec,
            socket.socket(fileno=fds[1]),
            socket.socket(fileno=fds[2]),
            socket.socket(fileno=fds[3]),
            msg.cgroup_procs,
            prepared,
            ahead=ahead,
            placement=placement,
        )

    def announce(pid: int, warm: wire.Warm, end: int, pidfd: int) -> None:
        announced = wire.WarmChild(pid=pid, cgroup_procs=warm.cgroup_procs, ident=warm.ident)
        _send(sock, announced, end, pidfd)

    pool = WarmPool(warm, child, prepared, announce)
    busy_until = 0.0
    while True:
        wait = None if pool.full() else max(0.0, busy_until - time.monotonic())
        readable = select.select([sock.fileno(), wake_r], [], [], wait)[0]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() in readable:
            served = _serve(sock, child, pool)
            if served is _END:
                return 0
            if served is _SPAWNED:
                busy_until = time.monotonic() + REFILL_QUIET
        elif not readable:
            pool.refill()


class WarmPool:
    """Children forked ahead, each in the cgroup the host made for it (a :class:`~tcletd.shared.
    spawn.Warm` names it) and in its own network namespace, its link's threads started; each is
    announced to the host with its socketpair end (a WarmChild) and waits for the host's Spawn."""

    def __init__(self, size: int, child: Any, prepared: Any, announce: Any) -> None:
        """``announce(pid, warm, end, pidfd)``: hand a child forked for ``warm`` to the host."""
        self.size = size
        self._child = child
        self._prepared = prepared
        self._announce = announce
        self._slots: collections.deque[wire.Warm] = collections.deque()  # to fork, in order

    def full(self) -> bool:
        """Nothing to fork."""
        return not self._slots

    def add(self, warm: wire.Warm) -> None:
        """A cgroup (and routing identity) for one more child (ignored past the pool's size of
        slots not forked yet: the host names one per child it does not hold)."""
        if len(self._slots) < self.size:
            self._slots.append(warm)

    def refill(self) -> bool:
        """Fork one more waiting child and announce it; False if there is no slot to fill or
        the fork failed (the slot's Spawn then forks cold, and a later quiet moment tries
        again)."""
        if not self._slots:
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return False
        warm = self._slots.popleft()
        if pid == 0:
            _as_child()
            self._wait(theirs, warm)
        theirs.close()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # out of descriptors: the host gets its exit (its Spawn forks cold)
            os.kill(pid, signal.SIGKILL)
            ours.close()
            return False
        try:
            self._announce(pid, warm, ours.fileno(), pidfd)
        finally:
            ours.close()
            os.close(pidfd)
        return True

    def take(self, slot: Slot) -> None:
        """A Spawn came for ``slot``: its child is not forked later (the Spawn's own child
        takes the cgroup)."""
        for warm in self._slots:
            if tuple(warm.cgroup_procs) == slot:
                self._slots.remove(warm)
                return

    def _wait(self, sock: socket.socket, warm: wire.Warm) -> None:
        """In a warm child: start what does not depend on the tclet
        (:class:`tcletd.worker.main.Ahead`), then wait for the Spawn the host sends; never
        returns. End of file (the host let it go, or is gone): exit."""
        from tcletd.worker.main import Ahead

        try:
            ahead = Ahead(sock.fileno(), warm, self._prepared)
            sock.setblocking(True)
            data, fds, flags, _ = socket.recv_fds(sock, wire.MAX_SPAWN, SPAWN_FDS)
            if not data or len(fds) != SPAWN_FDS or flags & socket.MSG_CTRUNC:
                os._exit(0)  # the host is gone, or sent what it should not have
            sock.close()
            self._child(wire.SPAWN_DECODER.decode(data), fds, ahead)
        except BaseException:
            traceback.print_exc()
        os._exit(EXIT_SOFTWARE)


def _as_child() -> None:
    """What a child of the zygote undoes first: the zygote's signal set-up and its streams."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Back to descriptor 2, which the worker makes its stderr socketpair.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _serve(sock: socket.socket, child: Any, pool: WarmPool) -> object:
    """Take one message: a Spawn, forked for (or handed to a warm child), or a Warm; _END at
    the end of the host's stream."""
    data, fds, flags, _ = socket.recv_fds(sock, wire.MAX_SPAWN, SPAWN_FDS)
    if not data:
        return _END
    try:
        msg = wire.HOST_DECODER.decode(data)
    except Exception as exc:  # the host is ours, but a message it did not mean ends nothing
        for fd in fds:
            os.close(fd)
        sys.stderr.write(f"tcletd zygote: bad spawn request: {exc}\n")
        return _OTHER
    if isinstance(msg, wire.Warm):
        for fd in fds:
            os.close(fd)
        pool.add(msg)
        return _OTHER
    if len(fds) != SPAWN_FDS or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        _send(sock, wire.SpawnFailed(seq=msg.seq, error=f"{len(fds)} descriptors came with it"))
        return _SPAWNED
    pool.take(tuple(msg.cgroup_procs))
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, wire.SpawnFailed(seq=msg.seq, error=f"fork: {exc.strerror}"))
        return _SPAWNED
    if pid == 0:
        try:
            _as_child()
            child(msg, fds)
        except BaseException:
            traceback.print_exc()
        os._exit(EXIT_SOFTWARE)  # run() never returns
    for fd in fds:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as exc:  # not reaped yet, so it exists: only a lack of descriptors
        os.kill(pid, signal.SIGKILL)
        _send(sock, wire.SpawnFailed(seq=msg.seq, error=f"pidfd_open: {exc.strerror}"))
        return _SPAWNED
    try:
        _send(sock, wire.Spawned(seq=msg.seq, pid=pid), pidfd)
    finally:
        os.close(pidfd)
    return _SPAWNED


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, wire.Exited(pid=pid, exitcode=os.waitstatus_to_exitcode(status)))


def _send(sock: socket.socket, msg: wire.ZygoteMessage, *fds: int) -> None:
    data = wire.ENCODER.encode(msg)
    try:
        if not fds:
            sock.sendall(data)
        else:
            socket.send_fds(sock, [data], list(fds))
    except BrokenPipeError:
        os._exit(0)  # the host is gone; the workers follow (their parent-death signal)


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _quiet_standard_streams() -> None:
    """Descriptor 0 from /dev/null, 1 and 2 a socket (see the module's docstring); the zygote's
    own messages go to the host's stderr through a descriptor of their own."""
    diagnostics = os.dup(2)
    os.set_inheritable(diagnostics, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    ours, other = socket.socketpair()
    os.dup2(ours.fileno(), 1)
    os.dup2(ours.fileno(), 2)
    ours.close()
    other.detach()  # kept open: a write to 1 or 2 must not raise EPIPE
    sys.stderr = open(diagnostics, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115


def entry() -> None:
    """The zygote's process (``python -c`` from the host, :data:`tcletd.host.factory.COMMAND`,
    or ``python -m tcletd.worker.zygote FD [WARM]``): :func:`main`, then out without the
    interpreter's teardown. The zygote has nothing to remove and its stderr is line-buffered,
    while freeing its heap (Tcl's interpreter, every import) took 11 ms after the host's end of
    file (strace), and a closing host waits for its zygote's exit."""
    try:
        status = main(sys.argv)
    except (BrokenPipeError, ConnectionResetError):
        # The host closed our socket on its way out (a serve refused at start, in CI under
        # load, closed it before the zygote said Ready): its stderr is the user's, and no
        # traceback of ours belongs there.
        from tcletd.worker.link import EXIT_HOST_GONE

        os._exit(EXIT_HOST_GONE)
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
