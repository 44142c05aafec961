"""The host's end of the worker factory: it starts the zygote and asks it for workers.

Host side of the trust boundary. The zygote (:mod:`tcletd.worker.zygote`) is a process of ours
that has imported and prepared everything a worker shares; each worker is one fork of it. The
exchange never blocks the host's loop: a Spawn is one non-blocking ``sendmsg`` (queued when the
zygote's socket is full), and what the zygote says (Spawned with a pidfd, SpawnFailed, Exited)
is read when the loop finds its socket readable, decoded with a bounded, typed decoder, and
routed to the callbacks the launch registered. The zygote holds nothing per worker beyond its
child, so the host's descriptors per tclet are its own three socketpair ends and the pidfd.

With a warm pool of N, the host keeps N cgroups made ahead, one per warm child, and names each
to the zygote (a Warm); the child enters it before anything else, so the threads and memory it
makes ahead are its cgroup's. A launch claims one (:meth:`Zygote.claim`: its memory limit and
weight are set then, before the Spawn that names it goes), and another is made on a thread.
The zygote announces each warm child (a WarmChild: its pid, its cgroup, the host's end of a
socketpair to it and a pidfd), and the host sends that child its Spawn itself: a launch then
wakes only its worker, not the zygote too. What the announcement says is checked as what a
worker says would be: only a cgroup the host named and holds no child for, a socket that is a
Unix SEQPACKET socket, and a pidfd whose process is the pid named; anything else is closed (the
child exits at end of file) or, malformed, ends the zygote.

A zygote can be started before the host's loop exists (:func:`start`, as the CLI does first
thing, so that its start overlaps the host's own imports); the first :class:`Zygote` the host
asks for takes it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from tcletd.shared import cpus

# Not typing.TYPE_CHECKING: typing (~2 ms) would come before the zygote's start too (mypy takes
# any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:  # imported late: the CLI starts a zygote first, before any of its imports
    import asyncio

    from tcletd.host.cgroups import Cgroups, WorkerCgroup
    from tcletd.host.warmpool import REFILL_QUIET, WarmCgroups, WarmChildren
    from tcletd.shared import spawn as wire

OnSpawned = Callable[[int, int], None]  # pid, pidfd (the callee owns the pidfd)
OnFailed = Callable[[str], None]  # why
OnExited = Callable[[int], None]  # exitcode, -N for a death by signal N

# The most workers a zygote keeps forked ahead (each a process, in a namespace of its own).
MAX_WARM = 64
# Messages taken from the zygote per loop wake-up, and the seconds of work that ends a turn
# early (a reaped worker's cgroup is removed here), so that a burst shares the loop.
_READS_PER_TURN = 64
TURN_BUDGET = 0.0005
# Seconds a closing host waits for its zygote to exit before it kills it.
_CLOSE_GRACE = 2.0
# Numbers the warm children's routing identities uniquely for the process's life.
_warm_idents = itertools.count(1)

_spare: Zygote | None = None
# The zygote's command: -c rather than -m tcletd.worker.zygote, whose runpy and second look-up
# of the module cost the zygote's start ~6 ms (20 starts each, this VM).
COMMAND = (sys.executable, "-c", "from tcletd.worker.zygote import entry; entry()")


def start(warm: int = 0) -> None:
    """Start a zygote now, for the next host of this process to take (idempotent)."""
    global _spare
    raise_descriptor_limit()
    if _spare is None:
        _spare = Zygote(warm)


def take(warm: int = 0) -> Zygote:
    """The zygote :func:`start` started (with a warm pool of ``warm``), or a new one."""
    global _spare
    zygote, _spare = _spare, None
    if zygote is not None and (zygote.lost is not None or zygote.warm != warm):
        zygote.process.kill()  # not the one wanted: it dies with its socket, unused
        zygote.process.wait()
        zygote = None
    if zygote is None:
        raise_descriptor_limit()
        zygote = Zygote(warm)
    return zygote


class _Pending:
    __slots__ = ("on_exited", "on_failed", "on_spawned")

    def __init__(self, on_spawned: OnSpawned, on_failed: OnFailed, on_exited: OnExited) -> None:
        self.on_spawned, self.on_failed, self.on_exited = on_spawned, on_failed, on_exited


class Zygote:
    """One zygote process and the host's socket to it."""

    def __init__(self, warm: int = 0) -> None:
        """``warm``: children the zygote keeps forked ahead (its warm pool)."""
        self.warm = warm
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self.process = subprocess.Popen(
                [*COMMAND, str(theirs.fileno()), str(warm), *cpus.placement().argv()],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        ours.setblocking(False)
        self._sock = ours
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = 0
        self._outbox: collections.deque[tuple[bytes, list[int]]] = collections.deque()
        self._pending: dict[int, _Pending] = {}
        self._children: dict[int, OnExited] = {}
        self.ready = False
        self.lost: str | None = None
        """Why the zygote is gone (None while it serves): every later spawn fails with it."""
        self._warm_cgroups: WarmCgroups | None = None  # where the host has cgroups
        self.warm_children: WarmChildren | None = None  # made in attach()
        self._topping: asyncio.TimerHandle | None = None  # the pool's top-up without cgroups
        self._endpoint = ""  # the hub's, which warm children connect to ahead (none: they do not)

    # ---- the host's requests ------------------------------------------------------------------

    def attach(
        self, loop: asyncio.AbstractEventLoop, cgroups: Cgroups | None = None, endpoint: str = ""
    ) -> None:
        """Read what the zygote says from ``loop`` (once, before the first spawn), and fill the
        warm pool, each child in a cgroup of ``cgroups`` where they are active, and connected
        ahead to the hub at ``endpoint`` (none: not)."""
        self._endpoint = endpoint
        # The wire's module binds here, not at import: msgspec's import would hold back the
        # zygote's start, which the CLI makes its first step (every later use follows this).
        global wire, WarmChildren, WarmCgroups, REFILL_QUIET
        from tcletd.host.warmpool import REFILL_QUIET, WarmCgroups, WarmChildren
        from tcletd.shared import spawn as wire

        self.warm_children = WarmChildren()
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)
        if cgroups is not None and cgroups.active and self.warm:
            made = WarmCgroups(loop, cgroups, self._send_warm, self.warm_children.has_child)
            self._warm_cgroups = made
            made.fill(self.warm)
        else:
            self._top_up()

    def claim(self, memory: int, *, demoted: bool = False) -> WorkerCgroup | None:
        """A warm child's cgroup for the next launch (see :meth:`WarmCgroups.claim`); None if
        none is ready (then the launch makes its own)."""
        if self._warm_cgroups is None or self.lost is not None:
            return None
        return self._warm_cgroups.claim(memory, demoted=demoted)

    def _send_warm(self, procs: list[str]) -> None:
        if self.lost is None and self.warm_children is not None:
            # Its own routing identity, never used again: a counter against reuse, and a "~"
            # no tclet's id has (they are hex) against a collision with one.
            ident = f"~warm-{next(_warm_idents)}" if self._endpoint else ""
            self.warm_children.named(tuple(procs), ident)
            self._send(wire.Warm(cgroup_procs=procs, ident=ident, endpoint=self._endpoint))

    def _top_up(self) -> None:
        """Without cgroups: name as many (cgroup-less) children as the pool lacks."""
        self._topping = None
        for _ in range(self.warm_children.lacking(self.warm) if self.warm_children else 0):
            self._send_warm([])

    def _top_up_later(self) -> None:
        """The top-up once launches pause for REFILL_QUIET, as the zygote's forks wait (a child
        forked beside a worker that is starting slows that start on 2 cores)."""
        if self._warm_cgroups is None and self.warm and self._loop is not None:
            if self._topping is not None:
                self._topping.cancel()
            self._topping = self._loop.call_later(REFILL_QUIET, self._top_up)

    def _send(self, msg: wire.Warm | wire.Spawn, fds: list[int] | None = None) -> None:
        self._outbox.append((wire.ENCODER.encode(msg), fds or []))
        if len(self._outbox) == 1:
            self._flush()

    def spawn(
        self,
        spec: bytes,
        cgroup_procs: list[str],
        fds: list[int],
        on_spawned: OnSpawned,
        on_failed: OnFailed,
        on_exited: OnExited,
    ) -> bytes | None:
        """Ask for a worker; ``fds`` (the worker's ends) are the zygote's from here, closed in
        the host once sent. Exactly one of ``on_spawned`` and ``on_failed`` is called later,
        from the loop, never from inside this call; ``on_exited`` after ``on_spawned``. The
        routing identity a warm child that took it connected to the hub with; None if none
        did (the worker connects as its tclet)."""
        assert self._loop is not None, "attach() first"
        memfd = os.memfd_create("tcletd-spec", os.MFD_CLOEXEC)
        try:
            view = memoryview(spec)
            while view:
                view = view[os.write(memfd, view) :]
        except OSError:
            os.close(memfd)
            for fd in fds:
                os.close(fd)
            raise
        self._seq += 1
        seq = self._seq
        self._pending[seq] = _Pending(on_spawned, on_failed, on_exited)
        if self.lost is not None:
            self._outbox.append((b"", [memfd, *fds]))  # closed by _fail_all
            self._loop.call_soon(self._fail_all)
            return None
        self._top_up_later()
        spawn = wire.Spawn(seq=seq, cgroup_procs=cgroup_procs)
        assert self.warm_children is not None
        if (child := self.warm_children.hand(spawn, [memfd, *fds])) is not None:
            self._loop.call_soon(self._handed, seq, child.pid, child.pidfd)
            return child.ident.encode() if child.ident else None
        self._send(spawn, [memfd, *fds])
        return None

    def _handed(self, seq: int, pid: int, pidfd: int) -> None:
        """A warm child took Spawn ``seq``: Spawned, as the zygote would have said it (from the
        loop, after the launch returned; unless the zygote was lost meanwhile)."""
        pending = self._pending.pop(seq, None)
        if pending is None:
            os.close(pidfd)
            return
        self._children[pid] = pending.on_exited
        pending.on_spawned(pid, pidfd)

    async def close(self) -> None:
        """End the zygote: its socket closes, it exits, the workers it still has go with it."""
        import asyncio

        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._sock.fileno())
                self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._let_warm_go()
        if self._warm_cgroups is not None:
            self._warm_cgroups.close()
        for _, fds in self._outbox:
            for fd in fds:
                os.close(fd)
        self._outbox.clear()
        loop = asyncio.get_running_loop()
        try:
            pidfd = os.pidfd_open(self.process.pid)
        except OSError:  # reaped already (it was lost)
            self.process.wait()
            return
        exited: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            # A pidfd is readable once the process exits: no polling, no thread.
            await asyncio.wait_for(exited, _CLOSE_GRACE)
        except TimeoutError:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        self.process.wait()  # it has exited: this only reaps
        if self._warm_cgroups is not None:
            self._warm_cgroups.shutdown()

    # ---- the loop's side ----------------------------------------------------------------------

    def _flush(self) -> None:
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                socket.send_fds(self._sock, [data], fds)
            except BlockingIOError:
                assert self._loop is not None
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
                return
            except OSError as exc:
                self._lose(f"cannot write to the zygote: {exc.strerror}")
                return
            self._outbox.popleft()
            for fd in fds:
                os.close(fd)

    def _on_writable(self) -> None:
        assert self._loop is not None
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    def _on_readable(self) -> None:
        began = time.perf_counter()
        for _ in range(_READS_PER_TURN):
            if time.perf_counter() - began > TURN_BUDGET:
                return  # the rest on the next turn, after everyone else's (the socket is readable)
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, wire.MAX_REPLY, 2)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it died with requests unread
                data, fds, flags = b"", [], 0
            except OSError as exc:
                self._lose(f"cannot read from the zygote: {exc.strerror}")
                return
            if not data:
                code = self.process.poll()
                self._lose("the zygote exited" + (f" with {code}" if code is not None else ""))
                return
            try:
                msg = wire.ZYGOTE_DECODER.decode(data)
            except wire.DecodeError as exc:
                for fd in fds:
                    os.close(fd)
                self._lose(f"the zygote said something undecodable: {exc}")
                return
            if flags & socket.MSG_CTRUNC or len(fds) != wire.CARRIED.get(type(msg), 0):
                for fd in fds:
                    os.close(fd)
                self._lose("the zygote sent a descriptor its message did not name")
                return
            if isinstance(msg, wire.WarmChild):
                assert self.warm_children is not None
                why = self.warm_children.admit(
                    msg, fds[0], fds[1], self.process.pid, self._children.__contains__
                )
                if why is not None:
                    self._lose(why)
                    return
                continue
            self._route(msg, fds[0] if fds else -1)

    def _route(self, msg: wire.ZygoteMessage, fd: int) -> None:
        if isinstance(msg, wire.Ready):
            self.ready = True
        elif isinstance(msg, wire.Spawned):
            pending = self._pending.pop(msg.seq, None)
            if pending is None:
                os.close(fd)
                return
            self._children[msg.pid] = pending.on_exited
            pending.on_spawned(msg.pid, fd)
        elif isinstance(msg, wire.SpawnFailed):
            failed = self._pending.pop(msg.seq, None)
            if failed is not None:
                failed.on_failed(msg.error)
        elif isinstance(msg, wire.Exited):
            on_exited = self._children.pop(msg.pid, None)
            if on_exited is not None:
                on_exited(msg.exitcode)
            elif self.warm_children is not None and (
                (died := self.warm_children.died(msg.pid)) is not None
            ):
                # A warm child died before any launch took it: another into its cgroup.
                if self._warm_cgroups is None:
                    self._top_up_later()
                elif self._warm_cgroups.holds(died.procs):
                    self._send_warm(list(died.procs))

    def _let_warm_go(self) -> None:
        """Close every unclaimed warm child's end (each exits at end of file, or dies with the
        zygote) and its pidfd."""
        if self._topping is not None:
            self._topping.cancel()
            self._topping = None
        if self.warm_children is not None:
            self.warm_children.let_go()

    def _lose(self, why: str) -> None:
        """The zygote is gone or broken: every worker it had is killed with it (their parent
        death signal), and every spawn not answered fails."""
        if self.lost is not None:
            return
        self.lost = why
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self._let_warm_go()
        if self._warm_cgroups is not None:
            self._warm_cgroups.close()
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._sock.fileno())
                self._loop.remove_writer(self._sock.fileno())
        self._fail_all()

    def _fail_all(self) -> None:
        assert self.lost is not None
        for _, fds in self._outbox:
            for fd in fds:
                os.close(fd)
        self._outbox.clear()
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.on_failed(self.lost)
        children, self._children = self._children, {}
        for on_exited in children.values():
            on_exited(-signal.SIGKILL)


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now.

    A host holds four descriptors per tclet (its three socketpair ends and the worker's pidfd)
    and one per socket: the usual soft limit of 1024 would stop a host near 250 tclets. Raising
    the soft limit to the hard one needs no privilege. Workers are not affected: each sets its
    own limit from its socket quota (:mod:`tcletd.worker.sandbox`), and its descriptors are
    numbered from the bottom (:mod:`tcletd.worker.main`).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
