"""Worker processes: the fork server, launching one worker per tclet, and ending them.

Host side of the trust boundary. Workers come from a ``multiprocess`` fork server started before
the host creates any ZeroMQ context, with the worker's modules, tkinter and pyzmq preloaded. Only
start arguments travel host to worker through multiprocess (a msgpack-encoded
:class:`~tcletd.shared.protocol.WorkerSpec` and socket objects); nothing ever comes back that way,
because multiprocess would unpickle it. The host watches each worker's sentinel; the fork server's
children are not the host's children, so there is no SIGCHLD or waitpid to rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tcletd.host import forkserver
from tcletd.host.cgroups import Cgroups, WorkerCgroup
from tcletd.host.quotas import HostFull
from tcletd.shared import protocol as p
from tcletd.shared.errors import EXIT_UNAVAILABLE, TcletdError

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


class CgroupRefused(TcletdError):
    """The host runs workers in cgroups and could not make one for this worker."""

    exit_status = EXIT_UNAVAILABLE


@dataclass
class WorkerProcess:
    """One launched worker and the host's ends of its socketpairs."""

    tclet_id: str
    process: Any
    fdsock: socket.socket
    stdout: socket.socket
    stderr: socket.socket
    exited: asyncio.Future[int] = field(default_factory=asyncio.Future)
    idle: bool = False  # every thread is in SCHED_IDLE (demoted, or started so)
    cgroup: WorkerCgroup | None = None  # None where the host has no cgroups
    oom_kills: int = 0  # the kernel's OOM kills at its cgroup's memory limit, read at its exit
    memory_peak: int = 0  # the most memory its cgroup was charged, read at its exit

    def __post_init__(self) -> None:
        # Kept: the process object is closed when the host forgets the worker, and an ended
        # tclet still shows its pid (tcletd ps --all).
        self._pid = int(self.process.pid)

    @property
    def pid(self) -> int:
        return self._pid

    def status(self) -> int | None:
        """The exit status, shell style: 128+N for a death by signal N, None while running."""
        code = self.process.exitcode
        if code is None:
            return None
        return 128 - int(code) if code < 0 else int(code)

    def signal(self, signum: int) -> None:
        # Not once reaped: its pid may be another process's by now.
        if not self.exited.done() and self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def demote(self) -> bool:
        """Put every thread of the worker in ``SCHED_IDLE`` for good; False if it is gone.

        Idle class, not nice 19: the kernel counts a CPU that runs only idle-class tasks as
        free when it places a waking task, and a waking normal task preempts one at once; a
        nice-19 task keeps its slice. In interleaved runs of bench_isolation.py on 2 cores
        (2026-11-30, no steal), probe echo p99 was 138 us beside an idle-class spinner and
        218 us beside a nice-19 one (118 us alone); beside the hostile set, 265 vs 411 us
        (124 us alone).
        """
        if self.cgroup is not None and self.process.exitcode is None:
            self.cgroup.demote()
        if self.idle:
            return True  # started demoted: its threads inherited the class from the first one
        try:
            os.sched_setscheduler(self.pid, os.SCHED_IDLE, _IDLE)
        except OSError:
            return False
        # The policy is per thread: its libzmq and Tcl notifier threads go down too. The
        # sandbox forbids new threads, so the set is the one started before the script ran.
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    os.sched_setscheduler(int(tid), os.SCHED_IDLE, _IDLE)
        self.idle = True
        return True

    def close_sockets(self) -> None:
        for sock in (self.fdsock, self.stdout, self.stderr):
            sock.close()


class Supervisor:
    """Launches workers from the fork server and ends them, TERM then KILL."""

    def __init__(self, grace: float = 1.0, cgroups: Cgroups | None = None) -> None:
        """``cgroups``: the host's, active or not (None: none)."""
        self.grace = grace
        self.cgroups = cgroups if cgroups is not None else Cgroups(reason="not asked for")
        self._ctx = forkserver.context()
        self.workers: dict[str, WorkerProcess] = {}

    def start(self) -> None:
        """Start the fork server; call this before any ZeroMQ context exists in the host."""
        forkserver.start()

    def launch(
        self, spec: p.WorkerSpec, loop: asyncio.AbstractEventLoop, *, demoted: bool = False
    ) -> WorkerProcess:
        """Start a worker; a ``demoted`` one puts itself in the idle class before its threads."""
        from tcletd.worker import main as worker_main

        if demoted:
            spec = msgspec.structs.replace(spec, demoted=True)
        # The descriptors first: a host out of them is told so, not that a cgroup failed.
        try:
            host_fd, worker_fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            host_out, worker_out = _pair_or_close(host_fd, worker_fd)
            host_err, worker_err = _pair_or_close(host_fd, worker_fd, host_out, worker_out)
        except OSError as exc:
            raise _out_of_descriptors(exc) from None
        pairs = (host_fd, worker_fd, host_out, worker_out, host_err, worker_err)
        cgroup = None
        if self.cgroups.active:
            try:
                cgroup = self.cgroups.create(spec.tclet_id, spec.memory, demoted=demoted)
            except OSError as exc:
                for sock in pairs:
                    sock.close()
                raise CgroupRefused(f"cannot make the worker's cgroup: {exc}") from None
        try:
            process = self._ctx.Process(
                target=worker_main.run,
                # The worker enters its cgroup first thing (tcletd.worker.main.run).
                args=(
                    p.encode(spec),
                    worker_fd,
                    worker_out,
                    worker_err,
                    cgroup.procs if cgroup is not None else [],
                ),
                name=f"tclet-{spec.tclet_id}",
                daemon=False,
            )
            with forkserver.no_main_module():
                process.start()
        except BaseException as exc:
            for sock in (host_fd, host_out, host_err):
                sock.close()
            if cgroup is not None:
                self.cgroups.release(cgroup)
            if isinstance(exc, OSError):
                raise _out_of_descriptors(exc) from None
            raise
        finally:
            for sock in (worker_fd, worker_out, worker_err):
                sock.close()
        for sock in (host_fd, host_out, host_err):
            sock.setblocking(False)
        worker = WorkerProcess(
            spec.tclet_id,
            process,
            host_fd,
            host_out,
            host_err,
            loop.create_future(),
            demoted,
            cgroup,
        )
        self.workers[spec.tclet_id] = worker
        loop.add_reader(process.sentinel, self._on_sentinel, worker, loop)
        return worker

    def _on_sentinel(self, worker: WorkerProcess, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(worker.process.sentinel)
        worker.process.join(0)
        status = worker.status()
        if worker.cgroup is not None:
            # Read before the cgroup goes: the death's attribution (a memory-limit OOM kill).
            worker.oom_kills = worker.cgroup.oom_kills()
            worker.memory_peak = worker.cgroup.peak()
            self.cgroups.release(worker.cgroup)
        if not worker.exited.done():
            worker.exited.set_result(255 if status is None else status)

    async def end(self, worker: WorkerProcess, grace: float | None = None) -> int:
        """Stop a worker: SIGTERM, then SIGKILL if it is still there after the grace period."""
        if not worker.exited.done():
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
        if worker.cgroup is not None and worker.process.exitcode is not None:
            self.cgroups.release(worker.cgroup)
        with contextlib.suppress(Exception):
            worker.process.close()

    async def shutdown(self) -> None:
        await asyncio.gather(*(self.end(w) for w in list(self.workers.values())))
        for worker in list(self.workers.values()):
            self.forget(worker)
        self.cgroups.close()

    def follow_memory(self, worker: WorkerProcess, memory: int) -> bool:
        """A granted policy's memory limit moves the worker's cgroup limit with it; False if
        the kernel refused (the old limit stays; the host's RSS poll holds the new one)."""
        if worker.cgroup is None or worker.process.exitcode is not None:
            return False
        return worker.cgroup.set_memory(memory)
