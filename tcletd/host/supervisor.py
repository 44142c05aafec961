"""Worker processes: launching one worker per tclet from the zygote, and ending them.

Host side of the trust boundary. Workers are forked by the zygote (:mod:`tcletd.host.factory`,
:mod:`tcletd.worker.zygote`), which has imported and prepared everything a worker shares. Only
start arguments travel host to worker (a msgpack-encoded
:class:`~tcletd.shared.protocol.WorkerSpec` in a memfd, and the worker's socketpair ends);
nothing comes back that way. A launch never waits for the fork: it makes the worker's
socketpairs and cgroup, sends the Spawn and returns; the worker's pid and pidfd arrive when the
zygote answers (:attr:`WorkerProcess.started`), its exit status when the zygote reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import msgspec

from tcletd.host import factory
from tcletd.host.cgroups import Cgroups, WorkerCgroup
from tcletd.host.quotas import HostFull
from tcletd.shared import cpus
from tcletd.shared import protocol as p
from tcletd.shared.errors import EXIT_TEMPFAIL
from tcletd.shared.states import EXIT_KILLED

_IDLE = os.sched_param(0)


def _pair_or_close(*opened: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A stream socketpair; if it cannot be made, ``opened`` are closed first."""
    try:
        return socket.socketpair()
    except OSError:
        for sock in opened:
            sock.close()
        raise


def _out_of_descriptors(exc: OSError) -> Exception:
    """A launch that failed for want of descriptors is the host being full (try again later),
    said as such; any other OSError is what it is."""
    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return exc
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return HostFull(
        f"the host is out of file descriptors (its limit is {limit}); a tclet costs it 4, and "
        "one more per socket: try again when tclets have ended"
    )


@dataclass
class WorkerProcess:
    """One launched worker and the host's ends of its socketpairs."""

    tclet_id: str
    fdsock: socket.socket
    stdout: socket.socket
    stderr: socket.socket
    started: asyncio.Future[bool]
    """True once the zygote forked the worker (pid and pidfd known), False if it could not."""
    exited: asyncio.Future[int]
    idle: bool = False  # every thread is in SCHED_IDLE (demoted, or started so)
    cgroup: WorkerCgroup | None = None  # None where the host has no cgroups
    oom_kills: int = 0  # the kernel's OOM kills at its cgroup's memory limit, read at its exit
    memory_peak: int = 0  # the most memory its cgroup was charged, read at its exit
    pid: int | None = None  # None until started; kept after the exit (tcletd ps --all)
    pidfd: int = -1  # the host's handle on the process, valid while it is not forgotten
    exitcode: int | None = None  # as the zygote reaped it: -N for a death by signal N
    failure: str | None = None  # why the zygote could not fork it
    doomed: int = 0  # a signal sent before the fork, delivered at once when it comes
    routing: bytes | None = None  # a warm child's routing identity at the hub (None: its id)

    def status(self) -> int | None:
        """The exit status, shell style: 128+N for a death by signal N, None while running."""
        code = self.exitcode
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def alive(self) -> bool:
        """Forked, not yet reaped."""
        return self.pidfd >= 0 and self.exitcode is None

    def signal(self, signum: int) -> None:
        if not self.started.done():
            # SIGKILL outranks TERM: a kill decided while the fork is on its way is not lost.
            self.doomed = signal.SIGKILL if signal.SIGKILL in (signum, self.doomed) else signum
            return
        # Through the pidfd: never another process that was given the pid after this one.
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signum)

    def demote(self) -> bool:
        """Put every thread of the worker in ``SCHED_IDLE`` for good; False if it is gone.

        Idle class, not nice 19: the kernel counts a CPU that runs only idle-class tasks as
        free when it places a waking task, and a waking normal task preempts one at once; a
        nice-19 task keeps its slice. In interleaved runs of bench_isolation.py on 2 cores
        (2026-11-30, no steal), probe echo p99 was 138 us beside an idle-class spinner and
        218 us beside a nice-19 one (118 us alone); beside the hostile set, 265 vs 411 us
        (124 us alone).

        And off the lowest CPU (:mod:`tcletd.shared.cpus`): even idle-class, a worker picked when a
        slice ends runs to the next tick (4 ms here) before a waiting normal task, and 60 of
        them on 2 cores took a neighbour's echo p99 to 17-22 times its p99 alone (perf sched:
        the neighbour runnable 7.4 ms while two idle-class spinners each ran a whole tick).
        """
        if not self.alive() or self.pid is None:
            return False
        if self.cgroup is not None:
            self.cgroup.demote()
        if self.idle:
            # Started so: it put its threads in the class, and off the lowest CPU, at its start.
            return True
        try:
            os.sched_setscheduler(self.pid, os.SCHED_IDLE, _IDLE)
        except OSError:
            return False
        # The policy is per thread: its libzmq and Tcl notifier threads go down too. The
        # sandbox forbids new threads, so the set is the one started before the script ran.
        placement = cpus.placement()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    os.sched_setscheduler(int(tid), os.SCHED_IDLE, _IDLE)
                    if placement.spares():
                        os.sched_setaffinity(int(tid), placement.rest)
        self.idle = True
        return True

    def close_sockets(self) -> None:
        for sock in (self.fdsock, self.stdout, self.stderr):
            sock.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class Supervisor:
    """Launches workers from the zygote and ends them, TERM then KILL."""

    def __init__(
        self, grace: float = 1.0, cgroups: Cgroups | None = None, *, warm: int = 0
    ) -> None:
        """``cgroups``: the host's, active or not (None: none); ``warm``: the zygote's warm
        pool (workers forked ahead)."""
        self.grace = grace
        self.warm = warm
        self.cgroups = cgroups if cgroups is not None else Cgroups(reason="not asked for")
        self.workers: dict[str, WorkerProcess] = {}
        self._zygote: factory.Zygote | None = None
        self._endpoint = ""
        self._placer = ThreadPoolExecutor(1, thread_name_prefix="tcletd-cgroups")

    def start(self, loop: asyncio.AbstractEventLoop, endpoint: str = "") -> None:
        """Take the zygote (started early by :func:`tcletd.host.factory.start`, or now); its
        warm children connect ahead to the hub at ``endpoint`` (none: they do not)."""
        self._endpoint = endpoint
        self._zygote = factory.take(self.warm)
        self._zygote.attach(loop, self.cgroups, endpoint)

    def launch(
        self, spec: p.WorkerSpec, loop: asyncio.AbstractEventLoop, *, demoted: bool = False
    ) -> WorkerProcess:
        """Start a worker; a ``demoted`` one puts itself in the idle class before its threads.
        Returns before the fork: ``started`` says when (and whether) it happened."""
        if demoted:
            spec = msgspec.structs.replace(spec, demoted=True)
        zygote = self._zygote_for(loop)
        # The descriptors first: a host out of them is told so, not that a cgroup failed.
        try:
            host_fd, worker_fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            host_out, worker_out = _pair_or_close(host_fd, worker_fd)
            host_err, worker_err = _pair_or_close(host_fd, worker_fd, host_out, worker_out)
        except OSError as exc:
            raise _out_of_descriptors(exc) from None
        worker = WorkerProcess(
            spec.tclet_id,
            host_fd,
            host_out,
            host_err,
            loop.create_future(),
            loop.create_future(),
            demoted,
        )
        for sock in (host_fd, host_out, host_err):
            sock.setblocking(False)
        self.workers[spec.tclet_id] = worker
        theirs = [sock.detach() for sock in (worker_fd, worker_out, worker_err)]
        encoded = p.encode(spec)
        if not self.cgroups.active:
            self._spawn(worker, zygote, encoded, theirs)
            return worker
        # A warm child's cgroup, made ahead, its limits set now: no thread hop (~0.7 ms).
        warm = zygote.claim(spec.memory, demoted=demoted)
        if warm is not None:
            worker.cgroup = warm
            self._spawn(worker, zygote, encoded, theirs)
            return worker
        # Made on a thread: three mkdirs and their limits cost the kernel ~0.5 ms, which the
        # loop would otherwise stall for at each launch of a burst. One thread, so in order.
        made = loop.run_in_executor(
            self._placer, partial(self.cgroups.create, demoted=demoted), spec.tclet_id, spec.memory
        )
        made.add_done_callback(lambda done: self._placed(worker, zygote, encoded, theirs, done))
        return worker

    def _placed(
        self,
        worker: WorkerProcess,
        zygote: factory.Zygote,
        spec: bytes,
        theirs: list[int],
        made: asyncio.Future[WorkerCgroup],
    ) -> None:
        exc = made.exception()
        if exc is not None:
            for fd in theirs:
                os.close(fd)
            self._failed(worker, f"cannot make its cgroup: {exc}")
            return
        worker.cgroup = made.result()
        if worker.tclet_id not in self.workers:  # forgotten meanwhile
            for fd in theirs:
                os.close(fd)
            self._failed(worker, "forgotten before its start")
            return
        self._spawn(worker, zygote, spec, theirs)

    def _spawn(
        self, worker: WorkerProcess, zygote: factory.Zygote, spec: bytes, theirs: list[int]
    ) -> None:
        try:
            worker.routing = zygote.spawn(
                spec,
                worker.cgroup.procs if worker.cgroup is not None else [],
                theirs,
                lambda pid, pidfd: self._spawned(worker, pid, pidfd),
                lambda why: self._failed(worker, why),
                lambda code: self._exited(worker, code),
            )
        except OSError as exc:  # the spec's memfd: the host is out of descriptors
            self._failed(worker, str(_out_of_descriptors(exc)))

    def _zygote_for(self, loop: asyncio.AbstractEventLoop) -> factory.Zygote:
        """The zygote, a new one if the last was lost (its workers were lost with it)."""
        if self._zygote is None or self._zygote.lost is not None:
            self._zygote = factory.take(self.warm)
            self._zygote.attach(loop, self.cgroups, self._endpoint)
        return self._zygote

    def _spawned(self, worker: WorkerProcess, pid: int, pidfd: int) -> None:
        worker.pid, worker.pidfd = pid, pidfd
        if worker.tclet_id not in self.workers:  # forgotten meanwhile: it has no tclet
            os.close(pidfd)
            worker.pidfd = -1
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still this process
        if not worker.started.done():
            worker.started.set_result(True)
        if worker.doomed:
            worker.signal(worker.doomed)

    def _failed(self, worker: WorkerProcess, why: str) -> None:
        worker.failure = why
        self._release(worker)
        if not worker.started.done():
            worker.started.set_result(False)
        if not worker.exited.done():
            worker.exited.set_result(EXIT_TEMPFAIL)

    def _exited(self, worker: WorkerProcess, exitcode: int) -> None:
        worker.exitcode = exitcode
        if worker.cgroup is not None:
            # Read before the cgroup goes: the death's attribution (a memory-limit OOM kill).
            worker.oom_kills = worker.cgroup.oom_kills()
            worker.memory_peak = worker.cgroup.peak()
        self._release(worker)
        if not worker.exited.done():
            status = worker.status()
            worker.exited.set_result(EXIT_KILLED if status is None else status)

    def _release(self, worker: WorkerProcess) -> None:
        if worker.cgroup is not None:
            self.cgroups.release(worker.cgroup)

    async def end(self, worker: WorkerProcess, grace: float | None = None) -> int:
        """Stop a worker: SIGTERM, then SIGKILL if it is still there after the grace period."""
        if not worker.exited.done():
            await asyncio.shield(worker.started)  # a worker being forked is ended once it is
            worker.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(
                    asyncio.shield(worker.exited), self.grace if grace is None else grace
                )
            except TimeoutError:
                worker.signal(signal.SIGKILL)
        return await worker.exited

    def forget(self, worker: WorkerProcess) -> None:
        self.workers.pop(worker.tclet_id, None)
        worker.close_sockets()
        if worker.cgroup is not None and worker.exitcode is not None:
            self.cgroups.release(worker.cgroup)

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.end(w) for w in list(self.workers.values())))
        for worker in list(self.workers.values()):
            self.forget(worker)
        if self._zygote is not None:
            await self._zygote.close()
            self._zygote = None
        self._placer.shutdown(wait=True)  # a cgroup still being made is made, then released
        self.cgroups.close()

    def follow_memory(self, worker: WorkerProcess, memory: int) -> bool:
        """A granted policy's memory limit moves the worker's cgroup limit with it; False if
        the kernel refused (the old limit stays; the host's RSS poll holds the new one)."""
        if worker.cgroup is None or not worker.alive():
            return False
        return worker.cgroup.set_memory(memory)
