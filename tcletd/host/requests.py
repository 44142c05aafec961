"""One tclet's requests: connect, listen, the accepts on its servers, and policy grants.

Host side of the trust boundary. Everything in a request is the untrusted side's word: the
:class:`Requests` checks the tclet's quotas before its policy (a refused request costs no lookup
and changes nothing), has the broker decide and make the sockets, hands granted ones over, checks
each peer accepted on the tclet's server sockets, and grants a shipped policy by name only when
the master config allows it for the tclet's origin. One request at a time: the worker is
synchronous, so a second one in flight is a protocol violation, and a tclet cannot queue work on
the host. Requests start eagerly (:func:`tcletd.host.broker.start_eagerly`) and never block the
host's loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeAlias

from tcletd.host.audit import TcletRecords
from tcletd.host.broker import Audit, os_error, shut
from tcletd.host.quotas import QuotaRefused, grant_refusal, granted
from tcletd.policy import Decision, load_policy
from tcletd.shared import protocol as p
from tcletd.shared.errors import ConfigError, ProtocolViolation, RequestError

if TYPE_CHECKING:
    from tcletd.host.tclet import Tclet

Request: TypeAlias = p.Connect | p.Listen | p.RequestPolicy
log = logging.getLogger(__name__)


class Requests:
    """Answers one tclet's requests; owned by that :class:`Tclet`."""

    def __init__(
        self,
        tclet: Tclet,
        audit: TcletRecords,
        *,
        policy_fixed: bool,
        overrides: Sequence[str],
    ) -> None:
        """``audit`` writes the tclet's records; ``policy_fixed``: the tclet's policy was chosen
        for it (or already granted), so it may not ask for another; ``overrides`` apply to a
        policy it is granted as to its first."""
        self._tclet = tclet
        self._audit = audit
        self.policy_fixed = policy_fixed
        self._overrides = tuple(overrides)
        self._in_flight = False

    def submit(self, msg: Request) -> None:
        """Take the worker's request; its answer goes back on the hub when it is ready."""
        if self._in_flight:
            self._tclet.violation("a second request while one is in flight")
            return
        self._in_flight = True
        self._tclet.spawn(self._answer(msg))

    async def _answer(self, msg: Request) -> None:
        tclet = self._tclet
        try:
            reply = await self._handle(msg)
        except RequestError as exc:
            reply = p.Denied(req=msg.req, message=exc.message, errorcode=list(exc.errorcode))
            if pause := tclet.quotas.refusal_pause(time.monotonic()):
                await asyncio.sleep(pause)  # still in flight: the worker waits for its answer
        except ProtocolViolation as exc:
            tclet.violation(str(exc))
            return
        except Exception as exc:  # EMFILE from socket(), or a bug: answered, audited, contained
            reply = self._failed(msg, exc)
        finally:
            self._in_flight = False
        if reply is not None and not tclet.services.hub.send(tclet.id, reply):
            tclet.violation("not reading its replies")

    def _failed(self, msg: Request, exc: Exception) -> p.HostMessage:
        """The error reply to a request whose handling raised unexpectedly (audited as
        ``error``): the tclet gets a Tcl error, as Tcl's own ``socket`` gives on EMFILE."""
        try:
            self._audit("error", request=type(msg).__name__.lower(), error=repr(exc)[:400])
        except Exception:  # the log's own trouble (a full disk) must not cost the tclet its reply
            log.exception("audit: recording a failed request failed")
        log.warning("tclet %s: %s request failed: %r", self._tclet.id[:8], type(msg).__name__, exc)
        err = os_error(exc) if isinstance(exc, OSError) else RequestError("internal host error")
        return p.Denied(req=msg.req, message=err.message, errorcode=list(err.errorcode))

    async def _handle(self, msg: Request) -> p.HostMessage | None:
        """The reply to send; None when it already left with a descriptor."""
        tclet = self._tclet
        if isinstance(msg, p.Connect):
            self._admit(msg)
            try:
                sock = await tclet.services.broker.connect(
                    msg, tclet.policy, tclet.origin, self._decided(msg), self
                )
                tclet.quotas.check_revoked()  # a byte quota may have been hit meanwhile
            except BaseException:
                tclet.quotas.free_slot()
                raise
            tclet.sockets.hand_over(sock, lambda sock_id: p.Granted(req=msg.req, sock=sock_id))
            return None
        if isinstance(msg, p.Listen):
            self._admit(msg)
            try:
                socks, sockname = await tclet.services.broker.listen(
                    msg, tclet.policy, tclet.origin, self._decided(msg), self
                )
            except BaseException:
                tclet.quotas.free_slot()
                raise
            sock_id = tclet.sockets.listen(socks, self._accept)
            return p.Listening(req=msg.req, sock=sock_id, sockname=sockname)
        return self._request_policy(msg)

    def _admit(self, msg: p.Connect | p.Listen) -> None:
        """Quotas before the policy: a refused request costs no lookup and changes nothing."""
        quotas = self._tclet.quotas
        try:
            quotas.check_revoked()
            quotas.take_slot()
            if isinstance(msg, p.Connect):
                try:
                    quotas.admit_connect(time.monotonic())
                except QuotaRefused:
                    quotas.free_slot()
                    raise
        except QuotaRefused as exc:
            action = "connect" if isinstance(msg, p.Connect) else "listen"
            host = msg.host if isinstance(msg, p.Connect) else msg.myaddr
            self._audit.refused(exc, action, host, msg.port)
            raise

    def _decided(self, msg: p.Connect | p.Listen) -> Audit:
        action = "connect" if isinstance(msg, p.Connect) else "listen"
        host = msg.host if isinstance(msg, p.Connect) else msg.myaddr

        def decided(d: Decision | None, why: str, lookup_ms: float | None = None) -> None:
            self._audit.decision(action, host, msg.port, d, why, lookup_ms)

        return decided

    def admit_lookup(self, action: str, host: str, port: str) -> None:
        """The broker is about to look a name up for this tclet (its key for the one-lookup-in-
        flight rule is this object): count it against the quota, or audit the refusal."""
        try:
            self._tclet.quotas.admit_lookup(time.monotonic())
        except QuotaRefused as exc:
            self._audit.refused(exc, action, host, port)
            raise

    def _request_policy(self, msg: p.RequestPolicy) -> p.HostMessage:
        tclet, name = self._tclet, msg.name
        if name == tclet.policy.name:
            self.policy_fixed = True
            return granted(msg.req, tclet.policy)
        if self.policy_fixed:
            self._audit("policy", requested=name, decision="refused", why="already loaded")
            raise RequestError(f'security policy "{tclet.policy.name}" already loaded')
        directory = tclet.services.policy_dir
        why = grant_refusal(name, tclet.origin, tclet.services.master, directory)
        if why is not None:
            self._audit("policy", requested=name, decision="refused", why=why)
            raise RequestError(f'permission denied: policy "{name}" not allowed for this origin')
        try:
            policy = load_policy(name, directory).with_overrides(*self._overrides)
        except ConfigError as exc:  # a broken policy file of the operator's: refused, audited
            self._audit("policy", requested=name, decision="refused", why=str(exc))
            raise RequestError(f'policy "{name}" cannot be loaded') from None
        tclet.policy, self.policy_fixed = policy, True
        tclet.quotas.quotas = policy.quotas
        if tclet.worker is not None:  # the kernel's memory limit follows (the RSS poll does)
            tclet.services.supervisor.follow_memory(tclet.worker, int(policy.limits.memory))
        self._audit("policy", requested=name, decision="granted")
        return granted(msg.req, policy)

    def _accept(self, listener_id: int, listener: socket.socket) -> None:
        """Every peer waiting on one of the tclet's servers: the policy, then the quotas."""
        tclet = self._tclet
        broker = tclet.services.broker
        peers, failure = broker.accept_all(listener)
        if failure is None:
            tclet.sockets.accepted(listener)
        elif tclet.sockets.pause_accepting(listener_id, listener):
            self._accept_failed(failure)
        for index, (conn, addr, port) in enumerate(peers):
            decision = broker.check_peer(tclet.policy, tclet.origin, addr, port)
            self._audit.decision("accept", addr, str(port), decision, decision.reason)
            if not decision.allowed:
                shut(conn)
                continue
            try:
                tclet.quotas.check_revoked()
                tclet.quotas.take_slot()
            except QuotaRefused as exc:
                self._audit.refused(exc, "accept", addr, str(port))
                shut(conn)
                continue
            try:
                tclet.sockets.hand_over(
                    conn, partial(p.Accepted, listener_id, peer_host=addr, peer_port=port)
                )
            except ProtocolViolation as exc:
                for rest, _, _ in peers[index + 1 :]:
                    shut(rest)
                tclet.violation(str(exc))
                return

    def _accept_failed(self, exc: OSError) -> None:
        """A shortage began on one of the tclet's servers (audited once as ``error``): its peers
        wait in the backlog while the listener is paused; the tclet is not told."""
        try:
            self._audit("error", request="accept", error=repr(exc)[:400])
        except Exception:  # the log's own trouble must not break the accept path
            log.exception("audit: recording a failed accept failed")
        log.warning("tclet %s: accept failed, pausing its server: %r", self._tclet.id[:8], exc)
