"""The host's side of the warm pool: a cgroup made ahead for each warm child, and each warm child
the zygote announced (its pid, the host's end of a socketpair to it, a pidfd).

Host side of the trust boundary. :class:`WarmCgroups` makes the pool's cgroups on a thread of
its own (each named to the zygote, whose child enters it before anything else) and hands one to
a launch, its limits set then. :class:`WarmChild` is what :class:`tcletd.host.factory.Zygote`
holds of an announced child once :class:`WarmChildren` checked the announcement as hostile input
(a Unix SEQPACKET socket, a pidfd whose process is the pid named, a cgroup and a routing identity
the host asked a child for): the launch that claims the child's cgroup sends the child its Spawn
itself, and has the hub take the tclet's frames from that identity (the child connected ahead).
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from tcletd.shared import spawn as wire

if TYPE_CHECKING:
    import asyncio

    from tcletd.host.cgroups import Cgroups, WorkerCgroup

# Seconds without a claim before the warm pool's cgroups are made again (as the zygote waits
# before it forks their children).
REFILL_QUIET = 0.05
# Names the warm pool's cgroups uniquely for the host's life (w-warm-N beside w-<tclet id>).
_warm_names = itertools.count(1)


class WarmChild:
    """An announced warm child: its pid, its cgroup's files, the host's end of its socketpair
    (its Spawn goes there) and a pidfd for it."""

    __slots__ = ("end", "ident", "pid", "pidfd", "procs")

    def __init__(
        self, pid: int, procs: tuple[str, ...], end: socket.socket, pidfd: int, ident: str = ""
    ) -> None:
        self.pid, self.procs, self.end, self.pidfd = pid, procs, end, pidfd
        self.ident = ident  # the routing identity it connected to the hub with ("": none)

    def close(self) -> None:
        self.end.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def pidfd_pid(pidfd: int) -> int | None:
    """The pid of the process ``pidfd`` refers to (its fdinfo's ``Pid:``), None if it is no
    pidfd of a live process (fdinfo says -1 for one that was reaped)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as info:
            for line in info:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _parent_of(pid: int) -> int | None:
    """The parent's pid of process ``pid`` (its stat's fourth field), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class WarmChildren:
    """The warm children the host asked the zygote for: cgroups named to it without a child
    announced yet, and the announced children (by cgroup, and by pid) no launch took yet."""

    def __init__(self) -> None:
        # The routing identities named with each cgroup, in order, whose child is not announced.
        self._awaiting: dict[tuple[str, ...], collections.deque[str]] = {}
        self._ready: dict[tuple[str, ...], collections.deque[WarmChild]] = {}
        self.unclaimed: dict[int, WarmChild] = {}

    def named(self, key: tuple[str, ...], ident: str = "") -> None:
        """A child was asked for in the cgroup whose ``cgroup.procs`` files are ``key``, to
        connect ahead as ``ident``."""
        self._awaiting.setdefault(key, collections.deque()).append(ident)

    def lacking(self, size: int) -> int:
        """Without cgroups (every child's key is empty): how many to ask for, for ``size``."""
        return max(0, size - len(self.unclaimed) - len(self._awaiting.get((), ())))

    def unawait(self, key: tuple[str, ...], ident: str | None = None) -> bool:
        """One child fewer awaited in ``key`` (the one named with ``ident``; None: the first
        named); False if none was."""
        idents = self._awaiting.get(key)
        if not idents:
            return False
        if ident is None:
            idents.popleft()
        elif ident in idents:
            idents.remove(ident)
        else:
            return False
        if not idents:
            del self._awaiting[key]  # a key per warm cgroup ever made would stay otherwise
        return True

    def has_child(self, procs: list[str]) -> bool:
        """Whether a warm child announced itself in the cgroup ``procs`` names."""
        return tuple(procs) in self._ready

    def admit(
        self,
        msg: wire.WarmChild,
        end: int,
        pidfd: int,
        parent: int,
        known: Callable[[int], bool],
    ) -> str | None:
        """Hold the child ``msg`` announces (``end`` and ``pidfd`` came with it; ``parent``:
        the zygote's pid; ``known``: a pid the host already has as a worker) if one was asked
        for in its cgroup, else close both (it exits at end of file); why the zygote is broken
        if what came is not what it says (then both are closed too)."""
        try:
            sock = socket.socket(fileno=end)
        except OSError:
            os.close(end)
            os.close(pidfd)
            return "the zygote sent a warm child's end that is not a socket"
        child = WarmChild(msg.pid, tuple(msg.cgroup_procs), sock, pidfd, msg.ident)
        if (
            sock.family != socket.AF_UNIX
            or sock.type != socket.SOCK_SEQPACKET
            or pidfd_pid(pidfd) != msg.pid
            or _parent_of(msg.pid) != parent
            or pidfd_pid(pidfd) != msg.pid  # not reaped (and the pid reused) meanwhile
            or msg.pid in self.unclaimed
            or known(msg.pid)
        ):
            child.close()
            return "the zygote announced a warm child that is not what it says"
        if not self.unawait(child.procs, child.ident):
            child.close()  # not asked for (any more), or not as that identity
            return None
        sock.setblocking(False)
        self._ready.setdefault(child.procs, collections.deque()).append(child)
        self.unclaimed[msg.pid] = child
        return None

    def hand(self, spawn: wire.Spawn, fds: list[int]) -> WarmChild | None:
        """Send ``spawn`` and ``fds`` (closed here once sent) straight to a child waiting in
        its cgroup; the child that took it (its end closed, its pidfd now the caller's), or
        None if none did (none is there, or it died): then a child not announced yet in that
        cgroup is not awaited any more (the zygote forks the Spawn's own into it, and an
        announcement that still comes is let go)."""
        key = tuple(spawn.cgroup_procs)
        while waiting := self._ready.get(key):
            child = waiting[0]
            self._forget(child)
            try:
                socket.send_fds(child.end, [wire.ENCODER.encode(spawn)], fds)
            except OSError:  # it died, or its socket is full (it never reads before this)
                child.close()
                continue
            child.end.close()
            for fd in fds:
                os.close(fd)
            return child
        self.unawait(key)
        return None

    def died(self, pid: int) -> WarmChild | None:
        """The unclaimed child ``pid``, which exited, let go; None if it is none of them."""
        child = self.unclaimed.get(pid)
        if child is not None:
            self._forget(child)
            child.close()
        return child

    def let_go(self) -> None:
        """Close every unclaimed child's end (each exits at end of file, or dies with the
        zygote) and its pidfd; nothing is awaited any more."""
        for child in self.unclaimed.values():
            child.close()
        self.unclaimed.clear()
        self._ready.clear()
        self._awaiting.clear()

    def _forget(self, child: WarmChild) -> None:
        del self.unclaimed[child.pid]
        waiting = self._ready[child.procs]
        waiting.remove(child)
        if not waiting:
            del self._ready[child.procs]


class WarmCgroups:
    """The host's side of the warm pool: a cgroup per warm child, made ahead on a thread of
    its own and named to the zygote, claimed by a launch."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cgroups: Cgroups,
        name_to_zygote: Callable[[list[str]], None],
        has_child: Callable[[list[str]], bool],
    ) -> None:
        # Here, not at the top: concurrent.futures (and logging) held back the zygote's start
        # by ~5 ms when the CLI imports this module first (python -X importtime).
        from concurrent.futures import ThreadPoolExecutor

        self._loop, self._cgroups, self._name = loop, cgroups, name_to_zygote
        self._has_child = has_child
        self.slots: collections.deque[WorkerCgroup] = collections.deque()  # unclaimed
        self._maker = ThreadPoolExecutor(1, thread_name_prefix="tcletd-warm-cgroups")
        self._owed = 0  # to make once launches pause
        self._owed_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def fill(self, count: int) -> None:
        for _ in range(count):
            self._make()

    def claim(self, memory: int, *, demoted: bool = False) -> WorkerCgroup | None:
        """A warm child's cgroup, its limits set for a policy's ``memory`` (and ``demoted``);
        None if none is ready. Its Spawn must name its ``procs``: the child waiting in it takes
        that one."""
        while self.slots:
            # One whose child is announced first: its Spawn goes straight to that child.
            cgroup = next((c for c in self.slots if self._has_child(c.procs)), self.slots[0])
            self.slots.remove(cgroup)
            self._owe()
            # Made without a memory limit: the kernel's unlimited, so no read is needed.
            if cgroup.set_memory(memory, fresh=True) and (not demoted or cgroup.demote()):
                return cgroup
            # Refused (it cannot be below what the child holds: a few MiB under a headroom of
            # 16): the child stays in it unused until the zygote ends, one place fewer.
            self._cgroups.release(cgroup)
        return None

    def holds(self, procs: tuple[str, ...]) -> bool:
        """Whether the unclaimed cgroup ``procs`` names is still the pool's."""
        return any(tuple(c.procs) == procs for c in self.slots)

    def close(self) -> None:
        """The unclaimed cgroups go (now, or with the host's cgroups once their children, which
        die with the zygote, are gone); nothing more is made."""
        self._closed = True
        if self._owed_timer is not None:
            self._owed_timer.cancel()
        slots, self.slots = self.slots, collections.deque()
        for cgroup in slots:
            self._cgroups.release(cgroup)

    def shutdown(self) -> None:
        self._maker.shutdown(wait=True)  # a cgroup still being made goes with the host's

    def _owe(self) -> None:
        """Make a warm cgroup once launches pause for REFILL_QUIET, not beside the start of the
        worker that just claimed one: its mkdirs (~0.5 ms of the kernel's, on a thread that
        also holds the GIL for part of it) compete with that start and the host's loop on 2
        cores (launch to hello p50 6.6-7.8 ms made at once, 6.6-6.8 ms deferred: 3 alternated
        runs of 40), and in a burst with the cold launches' own cgroups."""
        self._owed += 1
        if self._owed_timer is not None:
            self._owed_timer.cancel()
        self._owed_timer = self._loop.call_later(REFILL_QUIET, self._pay)

    def _pay(self) -> None:
        self._owed_timer = None
        owed, self._owed = self._owed, 0
        self.fill(owed)

    def _make(self) -> None:
        if self._closed:
            return
        made = self._loop.run_in_executor(
            self._maker, self._cgroups.create, f"warm-{next(_warm_names)}", 0
        )
        made.add_done_callback(self._made)

    def _made(self, made: asyncio.Future[WorkerCgroup]) -> None:
        if made.cancelled() or made.exception() is not None:
            return  # the pool is one short; the launches past it start cold
        cgroup = made.result()
        if self._closed:
            self._cgroups.release(cgroup)
            return
        self.slots.append(cgroup)
        self._name(cgroup.procs)
