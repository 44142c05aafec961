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

A warm pool (``python -m tcletd.worker.zygote FD N``) keeps N children forked ahead, each already
in its own empty network namespace and waiting on a socketpair of its own: a Spawn then goes to
a waiting child (its descriptors forwarded as they came), the host hears Spawned at once, and a
new child is forked after the answer. Everything else a worker does (its cgroup, its link, the
sandbox) is done after the Spawn, as in a cold worker: a warm worker differs only in that its
namespace was made before it entered its cgroup, so that namespace's small kernel allocation is
charged to the host's cgroup instead of the worker's.

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

from tcletd.shared import spawn as wire
from tcletd.shared.errors import EXIT_SOFTWARE

# Seconds without a Spawn before the zygote forks the warm pool's replacements, one per quiet
# moment: forking one beside a worker that is starting slowed that worker's start on 2 cores
# (launch to hello p50 18-21 ms with an eager refill, 14 ms without a pool).
REFILL_QUIET = 0.05
# What travels with a Spawn: the spec's memfd, the descriptor channel, stdout, stderr.
SPAWN_FDS = 4


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not all(a.isdigit() for a in argv[1:]):
        sys.stderr.write("usage: python -m tcletd.worker.zygote FD [WARM] (started by the host)\n")
        return 2
    sock = socket.socket(fileno=int(argv[1]))
    warm = int(argv[2]) if len(argv) == 3 else 0
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

    def child(msg: wire.Spawn, fds: list[int], *, isolated: bool = False) -> None:
        spec = _read_all(fds[0])
        os.close(fds[0])
        worker.run(
            spec,
            socket.socket(fileno=fds[1]),
            socket.socket(fileno=fds[2]),
            socket.socket(fileno=fds[3]),
            msg.cgroup_procs,
            prepared,
            isolated=isolated,
        )

    pool = WarmPool(warm, child)
    while pool.refill():
        pass
    busy_until = 0.0
    while True:
        wait = None if pool.full() else max(0.0, busy_until - time.monotonic())
        readable = select.select([sock.fileno(), wake_r], [], [], wait)[0]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap(sock, pool)
        if sock.fileno() in readable:
            if not _serve(sock, child, pool):
                return 0
            busy_until = time.monotonic() + REFILL_QUIET
        elif not readable:
            pool.refill()


class WarmPool:
    """Children forked ahead, each in its own network namespace, waiting for a Spawn."""

    def __init__(self, size: int, child: Any) -> None:
        self.size = size
        self._child = child
        self._waiting: collections.deque[tuple[int, socket.socket]] = collections.deque()

    def full(self) -> bool:
        return len(self._waiting) >= self.size

    def refill(self) -> bool:
        """Fork one more waiting child; False if the pool is full or the fork failed (the
        next Spawn then forks cold, and a later quiet moment tries again)."""
        if self.full():
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return False
        if pid == 0:
            _as_child()
            ours.detach()  # closed with the rest of the zygote's (the worker's first step)
            self._wait(theirs)
        theirs.close()
        self._waiting.append((pid, ours))
        return True

    def take(self) -> tuple[int, socket.socket] | None:
        return self._waiting.popleft() if self._waiting else None

    def forget(self, pid: int) -> bool:
        """A waiting child died (it was not the host's); True if it was one."""
        for entry in self._waiting:
            if entry[0] == pid:
                self._waiting.remove(entry)
                entry[1].close()
                return True
        return False

    def _wait(self, sock: socket.socket) -> None:
        """In a warm child: isolate, then wait for the Spawn the zygote forwards; never returns."""
        from tcletd.worker import netns
        from tcletd.worker.main import die_with_parent

        try:
            die_with_parent()
            netns.enter()
            sock.setblocking(True)
            data, fds, flags, _ = socket.recv_fds(sock, wire.MAX_SPAWN, SPAWN_FDS)
            if not data or len(fds) != SPAWN_FDS or flags & socket.MSG_CTRUNC:
                os._exit(0)  # the zygote is gone, or sent what it should not have
            sock.detach()
            self._child(wire.SPAWN_DECODER.decode(data), fds, isolated=True)
        except BaseException:
            traceback.print_exc()
        os._exit(EXIT_SOFTWARE)


def _as_child() -> None:
    """What a child of the zygote undoes first: the zygote's signal set-up and its streams."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Back to descriptor 2, which the worker makes its stderr socketpair.
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def _serve(sock: socket.socket, child: Any, pool: WarmPool) -> bool:
    """Take one Spawn and fork for it (or hand it to a warm child); False at the end of the
    host's stream."""
    data, fds, flags, _ = socket.recv_fds(sock, wire.MAX_SPAWN, SPAWN_FDS)
    if not data:
        return False
    try:
        msg = wire.SPAWN_DECODER.decode(data)
    except Exception as exc:  # the host is ours, but a message it did not mean ends nothing
        for fd in fds:
            os.close(fd)
        sys.stderr.write(f"tcletd zygote: bad spawn request: {exc}\n")
        return True
    if len(fds) != SPAWN_FDS or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        _send(sock, wire.SpawnFailed(seq=msg.seq, error=f"{len(fds)} descriptors came with it"))
        return True
    pid = _handed(pool, data, fds)
    if pid is None:
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            _send(sock, wire.SpawnFailed(seq=msg.seq, error=f"fork: {exc.strerror}"))
            return True
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
        return True
    try:
        _send(sock, wire.Spawned(seq=msg.seq, pid=pid), pidfd)
    finally:
        os.close(pidfd)
    return True


def _handed(pool: WarmPool, data: bytes, fds: list[int]) -> int | None:
    """The warm child that took the Spawn; None if none could (the caller forks one)."""
    while (waiting := pool.take()) is not None:
        pid, to_child = waiting
        try:
            socket.send_fds(to_child, [data], fds)
        except OSError:  # it died while it waited: its exit is reaped as a stranger's
            continue
        finally:
            to_child.close()
        return pid
    return None


def _reap(sock: socket.socket, pool: WarmPool) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if not pool.forget(pid):
            _send(sock, wire.Exited(pid=pid, exitcode=os.waitstatus_to_exitcode(status)))


def _send(
    sock: socket.socket,
    msg: wire.Ready | wire.Spawned | wire.SpawnFailed | wire.Exited,
    fd: int | None = None,
) -> None:
    data = wire.ENCODER.encode(msg)
    try:
        if fd is None:
            sock.sendall(data)
        else:
            socket.send_fds(sock, [data], [fd])
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
