"""One tclet as the host sees it: its lifecycle, from launch to the release of its last resource.

Host side of the trust boundary. A :class:`Tclet` owns its worker, its policy, its origin, its
sockets and its output, and is one explicit state machine (:data:`TRANSITIONS`): it starts the
worker, routes the worker's messages, knows its liveness from heartbeats, decides its ending once
(:class:`Ending`: the first decision wins), and cleans every host-side resource up when the
worker ends. Nothing a worker says moves a tclet outside the table, and the host never takes a
reported state once it decided the end. Its two other roles are its parts:
:class:`tcletd.host.requests.Requests` answers the worker's requests, and
:class:`tcletd.host.enforcement.Enforcer` holds it to its limits and quotas.

Fairness: a tclet cannot make the host work for it without bound. Requests: one in flight per
worker. Output: bounded reads, no queue, paced while a demoted worker has neighbours
(:mod:`tcletd.host.output`). Watchdog looks: bounded by the tclet's socket quota
(:mod:`tcletd.host.watchdog`). A worker that hogs a core or the host's reading is demoted; one
ended for exhausting a resource puts its site in the watchdog's PenaltyBox for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcletd.host.audit import AuditLog, TcletRecords
from tcletd.host.broker import Broker, start_eagerly
from tcletd.host.crowds import SiteCrowds
from tcletd.host.enforcement import Enforcer
from tcletd.host.hub import Hub, Peer
from tcletd.host.output import OutputRelay, OutputSink
from tcletd.host.outputlog import OutputLog
from tcletd.host.quotas import HostTotals, TcletQuotas
from tcletd.host.requests import Requests
from tcletd.host.sockets import SocketTable
from tcletd.host.supervisor import Supervisor, WorkerProcess
from tcletd.host.watchdog import PenaltyBox
from tcletd.policy import Origin, Policy
from tcletd.policy.master import MasterConfig
from tcletd.shared import protocol as p
from tcletd.shared.errors import EXIT_TEMPFAIL
from tcletd.shared.states import BUSY_AFTER, EXIT_KILLED, EXIT_TERMINATED, TcletResult, TcletState

log = logging.getLogger(__name__)

_S = TcletState
# The states that may follow each state. The host's own moves: BUSY when heartbeats stop, ENDING
# when it decides the end, ENDED when the worker is gone (from any state: a worker may exit by
# itself, even before its hello). The worker's: its hello (SCRIPT), and SCRIPT or IDLE from its
# heartbeats while it lives, taken as said (they are for display; limits come from measures);
# a heartbeat saying it rests stops the BUSY clock until the next one.
# A move outside the table is a host bug: logged and refused, never raised into the loop.
TRANSITIONS: Mapping[TcletState, frozenset[TcletState]] = {
    _S.STARTING: frozenset({_S.SCRIPT, _S.ENDING, _S.ENDED}),
    _S.SCRIPT: frozenset({_S.IDLE, _S.BUSY, _S.ENDING, _S.ENDED}),
    _S.IDLE: frozenset({_S.SCRIPT, _S.BUSY, _S.ENDING, _S.ENDED}),
    _S.BUSY: frozenset({_S.SCRIPT, _S.IDLE, _S.ENDING, _S.ENDED}),
    _S.ENDING: frozenset({_S.ENDED}),
    _S.ENDED: frozenset(),
}


@dataclass
class Services:
    """The host's shared parts that every Tclet uses."""

    loop: asyncio.AbstractEventLoop
    hub: Hub
    broker: Broker
    supervisor: Supervisor
    audit: AuditLog
    master: MasterConfig
    totals: HostTotals
    penalties: PenaltyBox = field(default_factory=PenaltyBox)
    crowds: SiteCrowds = field(default_factory=SiteCrowds)
    # The operator's policies (NAME.toml), known before the shipped ones by name: to launches
    # and to a tclet's own ``policy NAME`` alike.
    policy_dir: Path | None = None
    # Running tclets by id: the watchdog looks at these; a tclet leaves when it is released.
    tclets: dict[str, Tclet] = field(default_factory=dict)
    # Told of each tclet's end as it leaves ``tclets``, in the same step (the host's table of
    # ended tclets: a tclet is always findable by id in one or the other).
    on_ended: Callable[[Tclet, TcletResult], None] | None = None


@dataclass(frozen=True)
class Ending:
    """Why and with which status the host ends a tclet: decided once, the first decision wins."""

    reason: str
    status: int


class Tclet:
    """The host-side state of one running tclet, and its lifecycle."""

    def __init__(
        self,
        services: Services,
        spec: p.WorkerSpec,
        policy: Policy,
        origin: Origin,
        *,
        policy_fixed: bool,
        on_stdout: OutputSink | None,
        on_stderr: OutputSink | None,
        overrides: Sequence[str] = (),
        log: OutputLog | None = None,
    ) -> None:
        """``on_stdout``/``on_stderr``: where its output goes besides its ``log`` (None: only
        there, a detached tclet's)."""
        self.services = services
        self.id = spec.tclet_id
        self.spec = spec
        self.policy = policy  # a granted policy replaces it (Requests)
        self.origin = origin
        self._audit = TcletRecords(services.audit, self.id, origin.url, lambda: self.policy.name)
        self.quotas = TcletQuotas(policy.quotas, services.totals)
        self.sockets = SocketTable(services.loop, self.quotas)
        self.requests = Requests(self, self._audit, policy_fixed=policy_fixed, overrides=overrides)
        self.enforcer = Enforcer(self, self._audit)
        self.log = log if log is not None else OutputLog()
        self.output = OutputRelay(
            services.loop,
            self.quotas,
            {
                "stdout": self.log.tee("stdout", on_stdout),
                "stderr": self.log.tee("stderr", on_stderr),
            },
            on_over_quota=self.enforcer.over_output_quota,
            on_hog=self.enforcer.output_hog,
            crowded=lambda: len(services.tclets) > 1,
        )
        self.state = TcletState.STARTING
        self.ending: Ending | None = None
        self.launched_at = time.monotonic()
        self._last_beat = self.launched_at
        self._commands = 0  # the worker's last reported ``info cmdcount``
        self._waiting = False  # the worker said it rests in its event loop (no beats meanwhile)
        self.worker: WorkerProcess | None = None  # None until launched
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Task[TcletResult] | None = None

    @property
    def demoted(self) -> bool:
        """Its worker is in the idle class (a hog, or its origin's penalty)."""
        return self.enforcer.demoted

    # ---- launch and end -----------------------------------------------------------------------

    def launch(self, **audit: object) -> None:
        """Start the worker; ``audit`` fields go into the launch record (a client's pid, uid)."""
        services = self.services
        services.hub.register(Peer(self.id, self.spec.token, self._on_message, self.violation))
        boxed = services.penalties.holds(self.origin.site, time.monotonic())
        crowded = services.crowds.join(self.origin, self.id)
        try:
            self.worker = services.supervisor.launch(
                self.spec, services.loop, demoted=bool(boxed or crowded)
            )
        except BaseException:
            services.hub.unregister(self.id)
            services.crowds.leave(self.origin, self.id)
            raise
        if self.worker.routing is not None:
            # A warm child took it, connected ahead as the identity the host chose for it.
            services.hub.reroute(self.id, self.worker.routing)
        # The age and the wall clock run from here, though the fork comes later (the first
        # launch of a host also waits for its zygote's start).
        self.launched_at = self._last_beat = time.monotonic()
        services.totals.workers += 1
        services.totals.starting += 1
        services.tclets[self.id] = self
        self.sockets.attach(self.worker.fdsock)
        self.worker.started.add_done_callback(lambda _: self._started(boxed, crowded, audit))
        self._finished = services.loop.create_task(self._finish(), name=f"tclet-{self.id[:8]}")

    def when_started(self, then: Callable[[int | None], object]) -> None:
        """Call ``then`` with the worker's pid once the zygote forked it (None if it could not),
        before any of its output is read."""
        worker = self.worker
        assert worker is not None, "launch() first"
        worker.started.add_done_callback(lambda _: then(worker.pid))

    def _started(self, boxed: float, crowded: int, audit: dict[str, object]) -> None:
        """The zygote forked the worker (or could not): measures, output and the launch record
        start from here. Its output is read only from here on, so that whoever waits on
        ``worker.started`` (a client's ``started`` frame) hears of it before any output."""
        worker = self.worker
        assert worker is not None
        self.services.totals.starting -= 1
        self._last_beat = time.monotonic()
        self._audit("launch", pid=worker.pid, script=self.spec.script_name, **audit)
        if worker.failure is not None:
            self._decide(Ending(f"cannot start its worker: {worker.failure}", EXIT_TEMPFAIL))
            return
        assert worker.pid is not None
        self.enforcer.attach(worker.pid)
        self.output.start(worker.stdout, worker.stderr)
        if boxed:
            self.enforcer.demote(origin_penalty=round(boxed, 1))
        elif crowded:
            self.enforcer.demote(site_crowd=self.services.crowds.running(self.origin))

    async def wait(self) -> TcletResult:
        """The tclet's result, once its worker has ended and the host has released it."""
        assert self._finished is not None
        return await asyncio.shield(self._finished)

    async def _finish(self) -> TcletResult:
        """Wait for the worker to end and its output to drain, then release everything."""
        assert self.worker is not None
        status = await self.worker.exited
        await self.output.drained(2.0)
        await self._last_words(status)
        self.release()
        if self.ending is None:
            found = self.enforcer.death_breach(status)
            if found is not None:
                # Decided as the worker is found dead: straight to ENDED, no ENDING in between.
                self._decide(Ending(found.reason, found.status))
        if self.ending is not None:
            reason, status = self.ending.reason, self.ending.status
        else:
            reason = "exit" if status < 128 else f"signal {status - 128}"
        self._move(TcletState.ENDED)
        self._audit("exit", status=status, reason=reason)
        result = TcletResult(status, reason, by_host=self.ending is not None)
        if self.services.on_ended is not None:
            self.services.on_ended(self, result)
        return result

    async def _last_words(self, status: int) -> None:
        """Take the messages a worker sent just before it exited: the sentinel can beat its last
        frames (a LimitHit before its exit), flushed but one I/O-thread hop behind."""
        self.services.hub.drain()
        assert self.worker is not None
        # Exited by itself with 137 (not SIGKILLed): the status a worker gives after a LimitHit.
        waiting = status == EXIT_KILLED and self.worker.exitcode == EXIT_KILLED
        for _ in range(20):
            if not waiting or self.ending is not None:
                return
            await asyncio.sleep(0.01)
            self.services.hub.drain()

    async def end(self, reason: str, status: int = EXIT_TERMINATED) -> None:
        """The host ends the tclet: ask, then TERM, then KILL after the grace."""
        if self.worker is None or self.worker.exited.done():
            return
        self._decide_end(reason, status)
        await self.services.supervisor.end(self.worker)

    def end_soon(self, reason: str, status: int, *, after: float = 0.0) -> None:
        """End the tclet from a callback: decide now, stop the worker in a task.

        The reason is recorded even when the worker has just exited by itself: a LimitHit can
        arrive after the worker's sentinel.
        """
        if self.worker is None or not self._decide_end(reason, status):
            return
        if not self.worker.exited.done():
            self.spawn(self._stop_worker(after))

    async def _stop_worker(self, after: float) -> None:
        assert self.worker is not None
        if after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.worker.exited), after)
        await self.services.supervisor.end(self.worker)

    def _decide_end(self, reason: str, status: int) -> bool:
        """Decide to end the tclet and tell its worker; False if its end was already decided."""
        if not self._decide(Ending(reason, status)):
            return False
        self._move(TcletState.ENDING)
        self.services.hub.send(self.id, p.Stop(reason=reason, status=status))
        self._audit("kill", reason=reason, status=status)
        return True

    def violation(self, why: str) -> None:
        """A worker broke the protocol: end it at once; the host goes on."""
        if self._decide(Ending(f"protocol violation: {why}", EXIT_KILLED)):
            self._move(TcletState.ENDING)
        self._audit("violation", detail=why)
        if self.worker is not None:
            self.worker.signal(signal.SIGKILL)

    def _decide(self, ending: Ending) -> bool:
        """Record the tclet's ending; False (and no change) if one was decided before."""
        if self.ending is not None:
            return False
        self.ending = ending
        return True

    def release(self) -> None:
        services = self.services
        if services.tclets.pop(self.id, None) is not None:
            services.totals.workers -= 1
        services.hub.unregister(self.id)
        services.crowds.leave(self.origin, self.id)
        self.enforcer.detach()
        self.sockets.release()
        self.quotas.free_all()
        for task in self._tasks:
            task.cancel()
        self.output.stop()
        if self.worker is not None:
            services.supervisor.forget(self.worker)

    def spawn(self, coro: Coroutine[None, None, None]) -> None:
        """Run ``coro`` for this tclet, eagerly; what is left of it is cancelled at its release."""
        task = start_eagerly(self.services.loop, coro)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- state --------------------------------------------------------------------------------

    def _move(self, state: TcletState) -> None:
        if state is self.state:
            return
        if state not in TRANSITIONS[self.state]:
            log.error(
                "tclet %s: no transition from %s to %s (refused)",
                self.id[:8],
                self.state.value,
                state.value,
                stack_info=True,
            )
            return
        previous, self.state = self.state, state
        self._audit("state", state=state.value, previous=previous.value)

    def _report(self, state: TcletState) -> None:
        """A state the worker reports: taken only while its end is not decided."""
        if self.ending is None and self.state is not TcletState.ENDED:
            self._move(state)

    @property
    def active(self) -> bool:
        """Worth the watchdog's close look every tick: its worker does not rest, or (whatever it
        said) its CPU time moved at the last look; never once its end is decided."""
        return self.ending is None and (not self._waiting or self.enforcer.moving)

    def check(self, now: float, *, sweep: bool = False) -> None:
        """One watchdog look: the Enforcer's steps (count bytes, byte quotas, measure, limits,
        hog), then liveness; nothing once the tclet's end is decided. ``sweep``: the light
        look every tclet gets once per SWEEP (no hog window)."""
        if self.ending is None and self.enforcer.check(now, sweep=sweep):
            self._update_liveness(now)

    def _update_liveness(self, now: float) -> None:
        # A resting worker sends nothing until its loop wakes, and says so first: its silence
        # is not a busy one.
        live = self.state in (TcletState.SCRIPT, TcletState.IDLE) and not self._waiting
        if live and now - self._last_beat > BUSY_AFTER:
            self._move(TcletState.BUSY)

    def status(self) -> dict[str, object]:
        """What an operator sees of the tclet (``Host.status()``, SIGUSR1 of ``tcletd run``), as
        of the watchdog's last look: no /proc and no TCP_INFO read per request (measuring every
        tclet per request let 20,000 status frames block the loop ~15 s)."""
        usage = self.enforcer.usage()
        return {
            "id": self.id,
            "pid": self.worker.pid if self.worker is not None else None,
            "policy": self.policy.name,
            "state": self.state.value,
            "sockets": self.quotas.open,
            "bytes_sent": self.quotas.bytes_sent,
            "bytes_received": self.quotas.bytes_received,
            "cpu": round(usage.cpu, 3) if usage is not None else 0.0,
            "rss": usage.rss if usage is not None else 0,
            "age": round(time.monotonic() - self.launched_at, 3),
            "demoted": self.demoted,
            "output": self.quotas.output,
        }

    # ---- the worker's messages ----------------------------------------------------------------

    def _on_message(self, msg: p.WorkerMessage) -> None:
        # The hub lets a Hello through first and only once.
        if isinstance(msg, p.Close):
            self.sockets.close(msg.sock)
        elif isinstance(msg, p.Heartbeat):
            self._heartbeat(msg)
        elif isinstance(msg, p.Hello):
            self._last_beat = time.monotonic()
            self._waiting = False
            self.enforcer.script_started()
            self._report(TcletState.SCRIPT)
        elif isinstance(msg, p.LimitHit):
            self.enforcer.limit_hit(msg, self._commands)
        else:
            self.requests.submit(msg)

    def _heartbeat(self, msg: p.Heartbeat) -> None:
        if msg.state not in (TcletState.SCRIPT.value, TcletState.IDLE.value):
            self.violation(f"heartbeat with state {msg.state[:40]!r}")
            return
        self._last_beat = time.monotonic()
        self._commands = msg.commands
        woke, self._waiting = self._waiting and not msg.waiting, msg.waiting
        if woke:
            self.enforcer.woke()
        self._report(TcletState(msg.state))
