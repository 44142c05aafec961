"""One tclet as the host sees it: its policy, its origin, its sockets, its worker and its output.

Host side of the trust boundary. A Tclet answers its worker's requests (one at a time: the worker
is synchronous, so a second request in flight is a protocol violation), checks its quotas before
its policy, hands granted sockets over, accepts on the tclet's server sockets and checks each
peer, streams the worker's output to the embedder, knows its liveness state from heartbeats, ends
it at a limit, and cleans every host-side resource up when the worker ends.

Fairness: a tclet cannot make the host work for it without bound. Requests: one in flight per
worker. Output: bounded reads, no queue, paced while a demoted worker has neighbours
(:mod:`tcletd.host.output`). Watchdog looks: bounded by the tclet's socket quota
(:mod:`tcletd.host.watchdog`). A worker that hogs a core or the host's reading is demoted; one
ended for exhausting a resource puts its site in the watchdog's PenaltyBox for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial

from tcletd.host.audit import AuditLog, TcletRecords
from tcletd.host.broker import Audit, Broker, shut, start_eagerly
from tcletd.host.hub import Hub, Peer
from tcletd.host.output import OutputRelay, OutputSink
from tcletd.host.quotas import HostTotals, QuotaRefused, TcletQuotas, granted, output_reason
from tcletd.host.sockets import SocketTable
from tcletd.host.supervisor import Supervisor, WorkerProcess
from tcletd.host.watchdog import (
    HOG_WINDOW,
    OFFENCES,
    Breach,
    Meter,
    PenaltyBox,
    breach,
    breach_from_death,
    check_limits,
)
from tcletd.policy import Origin, Policy, known_policies, load_policy
from tcletd.policy.master import MasterConfig
from tcletd.shared import protocol as p
from tcletd.shared.errors import ConfigError, ProtocolViolation, RequestError
from tcletd.shared.states import BUSY_AFTER, EXIT_KILLED, EXIT_TERMINATED, TcletResult, TcletState


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
    # Running tclets by id: the watchdog looks at these; a tclet leaves when it is released.
    tclets: dict[str, Tclet] = field(default_factory=dict)


class Tclet:
    """The host-side state of one running tclet."""

    def __init__(
        self,
        services: Services,
        spec: p.WorkerSpec,
        policy: Policy,
        origin: Origin,
        *,
        policy_fixed: bool,
        on_stdout: OutputSink,
        on_stderr: OutputSink,
        overrides: Sequence[str] = (),
    ) -> None:
        self.s = services
        self.id = spec.tclet_id
        self.spec = spec
        self.policy = policy
        self.origin = origin
        self.policy_fixed = policy_fixed
        self._audit = TcletRecords(services.audit, self.id, origin.url, lambda: self.policy.name)
        self._overrides = tuple(overrides)
        self.quotas = TcletQuotas(policy.quotas, services.totals)
        self.sockets = SocketTable(services.loop, self.quotas)
        self.output = OutputRelay(
            services.loop,
            self.quotas,
            {"stdout": on_stdout, "stderr": on_stderr},
            on_over_quota=self._over_output_quota,
            on_hog=self._output_hog,
            crowded=lambda: len(services.tclets) > 1,
        )
        self.state = TcletState.STARTING
        self.demoted = False  # its worker is in the idle class (a hog, or its origin's penalty)
        self.launched_at = time.monotonic()
        self._last_beat = self.launched_at
        self._commands = 0  # the worker's last reported ``info cmdcount`` (display only)
        self._busy = False
        # (reason, status) once the host has decided to end the tclet; the first decision wins.
        self._ended: tuple[str, int] | None = None
        self.worker: WorkerProcess | None = None
        self._meter: Meter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Task[TcletResult] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def launch(self, **audit: object) -> None:
        """Start the worker; ``audit`` fields go into the launch record (a client's pid, uid)."""
        self.s.hub.register(Peer(self.id, self.spec.token, self._on_message, self.violation))
        boxed = self.s.penalties.holds(self.origin.site, time.monotonic())
        try:
            self.worker = self.s.supervisor.launch(self.spec, self.s.loop, demoted=bool(boxed))
        except BaseException:
            self.s.hub.unregister(self.id)
            raise
        # The wall clock runs from the worker's start (the first launch waits for the fork server).
        self.launched_at = self._last_beat = time.monotonic()
        self.s.totals.workers += 1
        self.s.tclets[self.id] = self
        self._meter = Meter(self.worker.pid)
        self.sockets.attach(self.worker.fdsock)
        self.output.start(self.worker.stdout, self.worker.stderr)
        self._audit("launch", pid=self.worker.pid, script=self.spec.script_name, **audit)
        if boxed:
            self._demote(origin_penalty=round(boxed, 1))
        self._finished = self.s.loop.create_task(self._finish(), name=f"tclet-{self.id[:8]}")

    async def wait(self) -> TcletResult:
        """The tclet's result, once its worker has ended and the host has released it."""
        assert self._finished is not None
        return await asyncio.shield(self._finished)

    async def _finish(self) -> TcletResult:
        """Wait for the worker to end and its output to drain, then release everything."""
        assert self.worker is not None and self._meter is not None
        status = await self.worker.exited
        await self.output.drained(2.0)
        await self._last_words(status)
        self.release()
        if self._ended is None:
            found = breach_from_death(
                self.policy.limits, status, self._meter.usage, self.output.stderr_tail
            )
            if found is not None:
                self._breached(found)
                self._ended = (found.reason, found.status)
        if self._ended is not None:
            reason, status = self._ended
        else:
            reason = "exit" if status < 128 else f"signal {status - 128}"
        self._set_state(TcletState.ENDED)
        self._audit("exit", status=status, reason=reason)
        return TcletResult(status, reason, by_host=self._ended is not None)

    async def _last_words(self, status: int) -> None:
        """Take the messages a worker sent just before it exited: the sentinel can beat its last
        frames (a LimitHit before its exit), flushed but one I/O-thread hop behind."""
        self.s.hub.drain()
        assert self.worker is not None
        # Exited by itself with 137 (not SIGKILLed): the status a worker gives after a LimitHit.
        waiting = status == EXIT_KILLED and self.worker.process.exitcode == EXIT_KILLED
        for _ in range(20):
            if not waiting or self._ended is not None:
                return
            await asyncio.sleep(0.01)
            self.s.hub.drain()

    async def end(self, reason: str, status: int = EXIT_TERMINATED) -> None:
        """The host ends the tclet: ask, then TERM, then KILL after the grace."""
        if self.worker is None or self.worker.exited.done():
            return
        self._decide_end(reason, status)
        await self.s.supervisor.end(self.worker)

    def _end_soon(self, reason: str, status: int, *, after: float = 0.0) -> None:
        """End the tclet from a callback: decide now, stop the worker in a task.

        The reason is recorded even when the worker has just exited by itself: a LimitHit can
        arrive after the worker's sentinel.
        """
        if self.worker is None or not self._decide_end(reason, status):
            return
        if not self.worker.exited.done():
            self._spawn(self._stop_worker(after))

    async def _stop_worker(self, after: float) -> None:
        assert self.worker is not None
        if after:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.worker.exited), after)
        await self.s.supervisor.end(self.worker)

    def _decide_end(self, reason: str, status: int) -> bool:
        """Record why and with which status the host ends the tclet; False if it already is."""
        if self._ended is not None:
            return False
        self._ended = (reason, status)
        self._set_state(TcletState.ENDING)
        self.s.hub.send(self.id, p.Stop(reason=reason, status=status))
        self._audit("kill", reason=reason, status=status)
        return True

    def violation(self, why: str) -> None:
        """A worker broke the protocol: end it at once; the host goes on."""
        if self._ended is None:
            self._ended = (f"protocol violation: {why}", EXIT_KILLED)
            self._set_state(TcletState.ENDING)
        self._audit("violation", detail=why)
        if self.worker is not None:
            self.worker.signal(signal.SIGKILL)

    def release(self) -> None:
        if self.s.tclets.pop(self.id, None) is not None:
            self.s.totals.workers -= 1
        self.s.hub.unregister(self.id)
        self.sockets.release()
        self.quotas.free_all()
        for task in self._tasks:
            task.cancel()
        self.output.stop()
        if self.worker is not None:
            self.s.supervisor.forget(self.worker)

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = start_eagerly(self.s.loop, coro)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ---- watchdog -----------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """One watchdog look: count bytes, byte quotas, measure, limits, liveness."""
        if self._meter is None or self._ended is not None:
            return
        self.quotas.poll()
        self._enforce_byte_quotas()
        usage = self._meter.measure()
        found = check_limits(self.policy.limits, usage, now - self.launched_at)
        if found is not None:
            self._breached(found)
            self._end_soon(found.reason, found.status)
            return
        self._demote_if_hog(now)
        self._update_liveness(now)

    def _demote_if_hog(self, now: float) -> None:
        assert self._meter is not None
        if self.demoted:
            return  # for life: no need to keep sampling its window
        share = self._meter.hogging(now)
        if share:
            self._demote(cpu_share=round(share, 2))

    def _first_look(self) -> None:
        """One look HOG_WINDOW into the script, off the tick: a spinner relaunched in a loop is
        demoted ~0.1 s into each life instead of up to two ticks (measured 170-220 ms)."""
        if self._meter is not None and self._ended is None and self.s.tclets.get(self.id) is self:
            self._meter.measure()
            self._demote_if_hog(time.monotonic())

    def _demote(self, **why: object) -> None:
        """Idle class for the rest of the worker's life, and its output paced."""
        if not self.demoted and self.worker is not None and self.worker.demote():
            self.demoted = True
            self.output.pace()
            self._audit("demoted", **why, sched="idle")

    def _breached(self, found: Breach) -> None:
        self._audit.breach(found)
        if found.limit in OFFENCES:
            self._offend(found.reason)

    def _offend(self, why: str) -> None:
        """Put the origin's site in the penalty box (audited as it enters), or keep it there."""
        if self.s.penalties.offend(self.origin.site, time.monotonic()):
            self._audit("penalty", site=self.origin.site, seconds=self.s.penalties.seconds, why=why)

    def _enforce_byte_quotas(self) -> None:
        over = self.quotas.over_bytes()
        if over is None:
            return
        quota, limit, value = over
        self._audit("quota", quota=quota, limit=limit, value=value, action="sockets shut down")
        self.quotas.shut_down()
        # Listening sockets live in the host: stop accepting; the slot stays until the close.
        self.sockets.stop_accepting()
        self.s.hub.send(self.id, p.QuotaExceeded(quota=quota, message=self.quotas.revoked))

    def _update_liveness(self, now: float) -> None:
        live = self.state in (TcletState.SCRIPT, TcletState.IDLE)
        if live and now - self._last_beat > BUSY_AFTER:
            self._set_state(TcletState.BUSY)

    def _set_state(self, state: TcletState) -> None:
        if state is not self.state:
            previous, self.state = self.state, state
            self._audit("state", state=state.value, previous=previous.value)

    def status(self) -> dict[str, object]:
        """What an operator sees of the tclet (``Host.status()``, SIGUSR1 of ``tcletd run``)."""
        usage = self._meter.measure() if self._meter is not None else None
        if self._ended is None:
            self.quotas.poll()
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

    # ---- output -------------------------------------------------------------------------------

    def _over_output_quota(self) -> None:
        if self._ended is None:
            limit = self.quotas.quotas.output_bytes
            self._audit(
                "quota", quota="output_bytes", limit=limit, value=self.quotas.output, action="ended"
            )
            self._end_soon(output_reason(limit), EXIT_KILLED)
            self._offend(output_reason(limit))

    def _output_hog(self, window_bytes: int) -> None:
        self._demote(output_bytes=window_bytes)

    # ---- requests -----------------------------------------------------------------------------

    def _on_message(self, msg: p.WorkerMessage) -> None:
        if isinstance(msg, p.Close):
            self.sockets.close(msg.sock)
        elif isinstance(msg, p.Heartbeat):
            self._heartbeat(msg)
        elif isinstance(msg, p.Hello):
            self._last_beat = time.monotonic()
            if self._meter is not None:
                self._meter.restart()
                self.s.loop.call_later(HOG_WINDOW, self._first_look)
            if self._ended is None:
                self._set_state(TcletState.SCRIPT)
        elif isinstance(msg, p.LimitHit):
            self._limit_hit(msg)
        else:
            if self._busy:
                self.violation("a second request while one is in flight")
                return
            self._busy = True
            self._spawn(self._answer(msg))

    def _heartbeat(self, msg: p.Heartbeat) -> None:
        if msg.state not in (TcletState.SCRIPT.value, TcletState.IDLE.value):
            self.violation(f"heartbeat with state {msg.state[:40]!r}")
            return
        self._last_beat = time.monotonic()
        self._commands = msg.commands
        if self._ended is None:
            self._set_state(TcletState(msg.state))

    def _limit_hit(self, msg: p.LimitHit) -> None:
        """The worker reached a limit it enforces itself and is exiting; make sure it does."""
        limits = self.policy.limits  # a granted policy moved the worker's limits with it
        maxima = {"commands": limits.commands, "memory": limits.memory, "cpu": limits.cpu}
        maximum = maxima.get(msg.limit)
        if not maximum:
            self.violation(f"limit hit for a limit it was not given: {msg.limit[:40]!r}")
            return
        # The host cannot see inside the interpreter: the value is what the worker reports.
        value = max(self._commands, maximum) if msg.limit == "commands" else maximum
        found = breach(msg.limit, maximum, value, "worker")
        if self._ended is None:
            self._breached(found)
        self._end_soon(found.reason, found.status, after=self.s.supervisor.grace)

    async def _answer(self, msg: p.Connect | p.Listen | p.RequestPolicy) -> None:
        try:
            reply = await self._handle(msg)
        except RequestError as exc:
            reply = p.Denied(req=msg.req, message=exc.message, errorcode=list(exc.errorcode))
            if pause := self.quotas.refusal_pause(time.monotonic()):
                await asyncio.sleep(pause)  # still in flight: the worker waits for its answer
        except ProtocolViolation as exc:
            self.violation(str(exc))
            return
        finally:
            self._busy = False
        if reply is not None and not self.s.hub.send(self.id, reply):
            self.violation("not reading its replies")

    async def _handle(self, msg: p.Connect | p.Listen | p.RequestPolicy) -> p.HostMessage | None:
        """The reply to send; None when it already left with a descriptor."""
        if isinstance(msg, p.Connect):
            self._admit(msg)
            try:
                sock = await self.s.broker.connect(
                    msg, self.policy, self.origin, self._decided(msg)
                )
                self.quotas.check_revoked()  # a byte quota may have been hit meanwhile
            except BaseException:
                self.quotas.free_slot()
                raise
            self.sockets.hand_over(sock, lambda sock_id: p.Granted(req=msg.req, sock=sock_id))
            return None
        if isinstance(msg, p.Listen):
            self._admit(msg)
            try:
                socks, sockname = await self.s.broker.listen(
                    msg, self.policy, self.origin, self._decided(msg)
                )
            except BaseException:
                self.quotas.free_slot()
                raise
            sock_id = self.sockets.listen(socks, self._accept)
            return p.Listening(req=msg.req, sock=sock_id, sockname=sockname)
        return self._request_policy(msg)

    def _admit(self, msg: p.Connect | p.Listen) -> None:
        """Quotas before the policy: a refused request costs no lookup and changes nothing."""
        try:
            self.quotas.check_revoked()
            self.quotas.take_slot()
            if isinstance(msg, p.Connect):
                try:
                    self.quotas.admit_connect(time.monotonic())
                except QuotaRefused:
                    self.quotas.free_slot()
                    raise
        except QuotaRefused as exc:
            action = "connect" if isinstance(msg, p.Connect) else "listen"
            host = msg.host if isinstance(msg, p.Connect) else msg.myaddr
            self._audit.refused(exc, action, host, msg.port)
            raise

    def _request_policy(self, msg: p.RequestPolicy) -> p.HostMessage:
        name = msg.name
        if name == self.policy.name:
            self.policy_fixed = True
            return granted(msg.req, self.policy)
        if self.policy_fixed:
            self._audit("policy", requested=name, decision="refused", why="already loaded")
            raise RequestError(f'security policy "{self.policy.name}" already loaded')
        # Only a shipped policy, by name: never a path, whatever the master config's globs say.
        shipped = name in known_policies()
        if not shipped or not self.s.master.allows(name, self.origin):
            why = "master config" if shipped else "unknown policy"
            self._audit("policy", requested=name, decision="refused", why=why)
            raise RequestError(f'permission denied: policy "{name}" not allowed for this origin')
        try:
            policy = load_policy(name).with_overrides(*self._overrides)
        except ConfigError as exc:  # a broken policy file of the operator's: refused, audited
            self._audit("policy", requested=name, decision="refused", why=str(exc))
            raise RequestError(f'policy "{name}" cannot be loaded') from None
        self.policy, self.policy_fixed = policy, True
        self.quotas.quotas = policy.quotas
        self._audit("policy", requested=name, decision="granted")
        return granted(msg.req, policy)

    def _accept(self, listener_id: int, listener: socket.socket) -> None:
        for conn, addr, port in self.s.broker.accept_all(listener):
            decision = self.s.broker.check_peer(self.policy, self.origin, addr, port)
            self._audit.decision("accept", addr, str(port), decision, decision.reason)
            if not decision.allowed:
                shut(conn)
                continue
            try:
                self.quotas.check_revoked()
                self.quotas.take_slot()
            except QuotaRefused as exc:
                self._audit.refused(exc, "accept", addr, str(port))
                shut(conn)
                continue
            try:
                self.sockets.hand_over(
                    conn, partial(p.Accepted, listener_id, peer_host=addr, peer_port=port)
                )
            except ProtocolViolation as exc:
                self.violation(str(exc))
                return

    # ---- audit --------------------------------------------------------------------------------

    def _decided(self, msg: p.Connect | p.Listen) -> Audit:
        action = "connect" if isinstance(msg, p.Connect) else "listen"
        host = msg.host if isinstance(msg, p.Connect) else msg.myaddr
        return lambda d, why: self._audit.decision(action, host, msg.port, d, why)
