"""One tclet as the host sees it: its policy, its origin, its sockets, its worker and its output.

Host side of the trust boundary. A Tclet answers its worker's requests (one at a time: the worker
is synchronous, so a second request in flight is a protocol violation), hands granted sockets
over, accepts on the tclet's server sockets and checks each peer, streams the worker's output to
the embedder, and cleans every host-side resource up when the worker ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tcletd import protocol as p
from tcletd.errors import ProtocolViolation, RequestError
from tcletd.host.audit import AuditLog
from tcletd.host.broker import Audit, Broker, FdChannel, shut
from tcletd.host.hub import Hub, Peer
from tcletd.host.supervisor import Supervisor, WorkerProcess
from tcletd.policy import Decision, Origin, Policy, load_policy
from tcletd.policyfile import MasterConfig

OutputSink = Callable[[bytes], None]
READ_CHUNK = 65536


@dataclass(frozen=True)
class TcletResult:
    """How a tclet ended: its exit status and why."""

    status: int
    reason: str


@dataclass
class Services:
    """The host's shared parts that every Tclet uses."""

    loop: asyncio.AbstractEventLoop
    hub: Hub
    broker: Broker
    supervisor: Supervisor
    audit: AuditLog
    master: MasterConfig


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
    ) -> None:
        self.s = services
        self.id = spec.tclet_id
        self.spec = spec
        self.policy = policy
        self.origin = origin
        self.policy_fixed = policy_fixed
        self._on_out = {"stdout": on_stdout, "stderr": on_stderr}
        self.sockets: dict[int, socket.socket] = {}
        self.listeners: dict[int, list[socket.socket]] = {}
        self._next_sock = 1
        self._busy = False
        self._reason = ""
        self._eof: dict[str, asyncio.Future[None]] = {}
        self.worker: WorkerProcess | None = None
        self._fds: FdChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ----------------------------------------------------------------------------

    def launch(self) -> None:
        self.s.hub.register(Peer(self.id, self.spec.token, self._on_message, self.violation))
        self.worker = self.s.supervisor.launch(self.spec, self.s.loop)
        self._fds = FdChannel(self.worker.fdsock)
        for name, sock in (("stdout", self.worker.stdout), ("stderr", self.worker.stderr)):
            self._eof[name] = self.s.loop.create_future()
            self.s.loop.add_reader(sock.fileno(), self._read_output, name, sock)
        self._audit("launch", pid=self.worker.pid, script=self.spec.script_name)

    async def wait(self) -> TcletResult:
        """Wait for the worker to end and its output to drain, then release everything."""
        assert self.worker is not None
        status = await self.worker.exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._eof.values()), 2.0)
        self.release()
        reason = self._reason or ("exit" if status < 128 else f"signal {status - 128}")
        self._audit("exit", status=status, reason=reason)
        return TcletResult(status, reason)

    async def end(self, reason: str, status: int = 143) -> None:
        """The host ends the tclet: ask, then TERM, then KILL."""
        if self.worker is None or self.worker.exited.done():
            return
        self._reason = self._reason or reason
        self.s.hub.send(self.id, p.Stop(reason=reason, status=status))
        self._audit("kill", reason=reason)
        await self.s.supervisor.end(self.worker)

    def violation(self, why: str) -> None:
        """A worker broke the protocol: end it at once; the host goes on."""
        self._reason = f"protocol violation: {why}"
        self._audit("violation", detail=why)
        if self.worker is not None:
            self.worker.signal(9)

    def release(self) -> None:
        self.s.hub.unregister(self.id)
        for sock in self.sockets.values():
            shut(sock)
        self.sockets.clear()
        for socks in self.listeners.values():
            for sock in socks:
                self._stop_accepting(sock)
        self.listeners.clear()
        for task in self._tasks:
            task.cancel()
        if self.worker is not None:
            for sock in (self.worker.stdout, self.worker.stderr):
                with contextlib.suppress(ValueError, OSError):
                    self.s.loop.remove_reader(sock.fileno())
            self.s.supervisor.forget(self.worker)

    # ---- output -------------------------------------------------------------------------------

    def _read_output(self, name: str, sock: socket.socket) -> None:
        try:
            data = sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.s.loop.remove_reader(sock.fileno())
            if not self._eof[name].done():
                self._eof[name].set_result(None)
            return
        self._on_out[name](data)

    # ---- requests -----------------------------------------------------------------------------

    def _on_message(self, msg: p.WorkerMessage) -> None:
        if isinstance(msg, p.Close):
            self._close(msg.sock)
        elif isinstance(msg, p.Heartbeat | p.Hello):
            return
        else:
            if self._busy:
                self.violation("a second request while one is in flight")
                return
            self._busy = True
            task = self.s.loop.create_task(self._answer(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: p.Connect | p.Listen | p.RequestPolicy) -> None:
        try:
            reply = await self._handle(msg)
        except RequestError as exc:
            reply = p.Denied(req=msg.req, message=exc.message, errorcode=list(exc.errorcode))
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
            sock = await self.s.broker.connect(msg, self.policy, self.origin, self._decided(msg))
            self._hand_over(sock, lambda sock_id: p.Granted(req=msg.req, sock=sock_id))
            return None
        if isinstance(msg, p.Listen):
            socks, sockname = await self.s.broker.listen(
                msg, self.policy, self.origin, self._decided(msg)
            )
            sock_id = self._new_id()
            self.listeners[sock_id] = socks
            for sock in socks:
                self.s.loop.add_reader(sock.fileno(), self._accept, sock_id, sock)
            return p.Listening(req=msg.req, sock=sock_id, sockname=sockname)
        return self._request_policy(msg)

    def _request_policy(self, msg: p.RequestPolicy) -> p.HostMessage:
        name = msg.name
        if name == self.policy.name:
            self.policy_fixed = True
            return p.PolicyGranted(msg.req, name, list(self.policy.hidden_options))
        if self.policy_fixed:
            self._audit("policy", requested=name, decision="refused", why="already loaded")
            raise RequestError(f'security policy "{self.policy.name}" already loaded')
        if not self.s.master.allows(name, self.origin):
            self._audit("policy", requested=name, decision="refused", why="master config")
            raise RequestError(f'permission denied: policy "{name}" not allowed for this origin')
        policy = load_policy(name)
        self.policy, self.policy_fixed = policy, True
        self._audit("policy", requested=name, decision="granted")
        return p.PolicyGranted(msg.req, name, list(policy.hidden_options))

    def _new_id(self) -> int:
        sock_id = self._next_sock
        self._next_sock += 1
        return sock_id

    def _hand_over(
        self, sock: socket.socket, message: Callable[[int], p.Granted | p.Accepted]
    ) -> int:
        """Give the worker ``sock`` with the message naming it; the host keeps a duplicate."""
        assert self._fds is not None
        sock_id = self._new_id()
        try:
            self._fds.hand_over(message(sock_id), sock)
        except OSError as exc:
            shut(sock)
            raise ProtocolViolation(f"not taking its descriptors ({exc})") from None
        self.sockets[sock_id] = sock
        return sock_id

    def _close(self, sock_id: int) -> None:
        sock = self.sockets.pop(sock_id, None)
        if sock is not None:
            shut(sock)
            return
        for listener in self.listeners.pop(sock_id, []):
            self._stop_accepting(listener)

    def _stop_accepting(self, sock: socket.socket) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.s.loop.remove_reader(sock.fileno())
        shut(sock)

    def _accept(self, listener_id: int, listener: socket.socket) -> None:
        for conn, addr, port in self.s.broker.accept_all(listener):
            decision = self.s.broker.check_peer(self.policy, self.origin, addr, port)
            self._audit_decision("accept", addr, str(port), decision, decision.reason)
            if not decision.allowed:
                shut(conn)
                continue
            try:
                self._hand_over(
                    conn, partial(p.Accepted, listener_id, peer_host=addr, peer_port=port)
                )
            except ProtocolViolation as exc:
                self.violation(str(exc))
                return

    # ---- audit --------------------------------------------------------------------------------

    def _decided(self, msg: p.Connect | p.Listen) -> Audit:
        action = "connect" if isinstance(msg, p.Connect) else "listen"
        host = msg.host if isinstance(msg, p.Connect) else msg.myaddr
        return lambda d, why: self._audit_decision(action, host, msg.port, d, why)

    def _audit_decision(
        self, action: str, host: str, port: str, d: Decision | None, why: str
    ) -> None:
        if not self.s.audit.enabled:
            return
        self._audit(
            "decision",
            action=action,
            host=host,
            port=port,
            canonical_host=d.canonical_host if d else None,
            addresses=[str(a) for a in d.checked] if d else [],
            decision="allowed" if d and d.allowed else "denied",
            rules=list(d.rules) if d else [],
            reason=why,
        )

    def _audit(self, event: str, **fields: object) -> None:
        self.s.audit.record(
            event, tclet=self.id, origin=self.origin.url, policy=self.policy.name, **fields
        )
