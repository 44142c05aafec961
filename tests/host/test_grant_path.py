"""The host's half of a socket grant, taken apart: the connect's completion check, the remembered
decisions on address literals (still audited and refused every time), the hand-over, and a
tclet's close (its slot free at once, the host's duplicate closed by the end of the loop turn).

Real TCP on 127.0.0.1, a real SEQPACKET socketpair, the host's own Broker and SocketTable.
"""

from __future__ import annotations

import array
import asyncio
import errno
import os
import socket
from collections.abc import Iterator

import pytest
from support.net import HOST, TcpServer, silent_handler

from tcletd.host.broker import LITERAL_DECISIONS, Broker
from tcletd.host.quotas import HostTotals, TcletQuotas
from tcletd.host.resolver import Resolver
from tcletd.host.sockets import SocketTable
from tcletd.policy import Decision, Origin, Policy, load_policy
from tcletd.policy.files import build_policy_document
from tcletd.shared import protocol as p
from tcletd.shared.errors import RequestError

pytestmark = pytest.mark.timeout(60)

ORIGIN = Origin.parse("http://tclets.example:8080/t.tcl")


def _policy(connect: list[str], disallow: list[str] | None = None) -> Policy:
    doc = {"connect": {"allow": connect, "disallow": disallow or []}}
    return Policy(build_policy_document(doc, {}, "test.toml", "test", None))


class Audited:
    def __init__(self) -> None:
        self.calls: list[tuple[Decision | None, str, float | None]] = []

    def __call__(self, d: Decision | None, why: str, lookup_ms: float | None = None) -> None:
        self.calls.append((d, why, lookup_ms))


@pytest.fixture
def server() -> Iterator[TcpServer]:
    with TcpServer(silent_handler, "grant") as srv:
        yield srv


def _broker(loop: asyncio.AbstractEventLoop) -> Broker:
    # No lookup is made here (every host is a literal); 127.0.0.1:9 would refuse one anyway.
    return Broker(loop, Resolver(["127.0.0.1:9"], loop=loop))


def _connect(port: int, *, asynchronous: bool = False) -> p.Connect:
    return p.Connect(
        req=1, host=HOST, port=str(port), myaddr="", myport="", asynchronous=asynchronous
    )


def test_a_connect_is_connected_when_it_returns_and_a_refusal_is_worded_as_tcl(
    server: TcpServer,
) -> None:
    async def main() -> None:
        broker = _broker(asyncio.get_running_loop())
        try:
            trusted = load_policy("trusted")
            sock = await broker.connect(_connect(server.port), trusted, ORIGIN, Audited())
            with sock:
                assert sock.getpeername() == (HOST, server.port)
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            # A port nobody listens on: the second connect() reports the refusal itself.
            closed = socket.create_server((HOST, 0))
            port = closed.getsockname()[1]
            closed.close()
            with pytest.raises(RequestError) as refused:
                await broker.connect(_connect(port), load_policy("trusted"), ORIGIN, Audited())
            assert refused.value.message == "couldn't open socket: connection refused"
            assert refused.value.errorcode[:2] == ("POSIX", "ECONNREFUSED")
        finally:
            await broker.close()

    asyncio.run(main())


def test_remembered_decisions_are_audited_and_refused_every_time() -> None:
    async def main() -> None:
        broker = _broker(asyncio.get_running_loop())
        allow, deny = _policy(["127.0.0.1 *"]), _policy(["*.example *"])
        try:
            for _ in range(3):
                audit = Audited()
                d = await broker.decide("connect", HOST, "8080", allow, ORIGIN, audit)
                assert d.allowed and [str(a) for a in d.usable] == [HOST]
                assert [(c[0], c[1]) for c in audit.calls] == [(d, d.reason)]
            # The same words under another policy are that policy's decision, denied each time.
            for _ in range(3):
                audit = Audited()
                with pytest.raises(RequestError, match=r"permission denied for host 127\.0\.0\.1 "):
                    await broker.decide("connect", HOST, "8080", deny, ORIGIN, audit)
                ((decision, _, _),) = audit.calls
                assert decision is not None and not decision.allowed
            # An empty host is the origin's: remembered per origin, never across them.
            home, away = (Origin.parse(f"http://{a}:8080/t.tcl") for a in (HOST, "127.0.0.2"))
            for _ in range(2):
                assert (await broker.decide("connect", "", "8080", allow, home, Audited())).allowed
                with pytest.raises(RequestError, match=r"for host 127\.0\.0\.2 port 8080"):
                    await broker.decide("connect", "", "8080", allow, away, Audited())
            # Bounded whatever a tclet sends: many distinct literals keep at most the limit.
            for port in range(1, LITERAL_DECISIONS + 50):
                await broker.decide("connect", HOST, str(port), allow, ORIGIN, Audited())
            assert len(broker._literal) <= LITERAL_DECISIONS
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_closed_grant_frees_its_slot_at_once_and_its_duplicate_within_the_turn(
    server: TcpServer,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        totals = HostTotals(max_workers=10, max_sockets=10)
        quotas = TcletQuotas(load_policy("trusted").quotas, totals)
        table = SocketTable(loop, quotas)
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        table.attach(host_end)
        try:
            quotas.take_slot()
            sock = socket.create_connection((HOST, server.port))
            sock_id = table.hand_over(sock, lambda i: p.Granted(req=7, sock=i))
            data, anc, _, _ = worker_end.recvmsg(p.FD_MESSAGE_MAX, socket.CMSG_SPACE(4))
            assert p.HOST_DECODER.decode(data) == p.Granted(req=7, sock=sock_id)
            fds = array.array("i")
            fds.frombytes(anc[0][2])
            socket.socket(fileno=fds[0]).close()  # the tclet's end: the host's still holds it
            table.close(sock_id)
            assert (quotas.open, totals.sockets) == (0, 0)  # free for the next request now
            assert sock.fileno() != -1  # ... closed after this turn's requests
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert sock.fileno() == -1
            table.close(sock_id)  # a second close of the same id frees nothing
            assert (quotas.open, totals.sockets) == (0, 0)
        finally:
            table.release()
            host_end.close()
            worker_end.close()

    asyncio.run(main())


def test_a_tclet_ending_with_closes_pending_closes_their_duplicates(server: TcpServer) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        quotas = TcletQuotas(load_policy("trusted").quotas, HostTotals(10, 10))
        table = SocketTable(loop, quotas)
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        table.attach(host_end)
        try:
            socks = [socket.create_connection((HOST, server.port)) for _ in range(3)]
            ids = [table.hand_over(s, lambda i: p.Granted(req=1, sock=i)) for s in socks]
            table.close(ids[0])
            table.release()  # before the loop turned: nothing is left open
            assert all(s.fileno() == -1 for s in socks)
        finally:
            host_end.close()
            worker_end.close()

    asyncio.run(main())


def test_refused_connects_leave_no_descriptor_behind() -> None:
    async def main() -> None:
        broker = _broker(asyncio.get_running_loop())
        closed = socket.create_server((HOST, 0))
        port = closed.getsockname()[1]
        closed.close()
        before = len(os.listdir("/proc/self/fd"))
        try:
            for _ in range(20):
                with pytest.raises(RequestError) as refused:
                    await broker.connect(_connect(port), load_policy("trusted"), ORIGIN, Audited())
                assert refused.value.errorcode[1] == errno.errorcode[errno.ECONNREFUSED]
            assert len(os.listdir("/proc/self/fd")) == before
        finally:
            await broker.close()

    asyncio.run(main())
