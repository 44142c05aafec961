"""The worker's half of a socket grant: the link's wait for its reply (a descriptor that arrives
close-on-exec, a refusal over ZeroMQ, what else is waiting left for the pump), and the channel
made straight in the tclet's interpreter (blocking, usable, reported when it cannot get there).

Real ZeroMQ over ``ipc://`` (the test plays the host's ROUTER), a real SEQPACKET socketpair, real
TCP on 127.0.0.1 and a real Tcl interpreter.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import threading
import time
import tkinter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support.net import HOST, TcpServer, echo_handler
from support.runtime import make_spec

from tcletd.shared import protocol as p
from tcletd.shared.errors import RequestError
from tcletd.worker.channels import ChannelClosed, ChannelFactory
from tcletd.worker.link import Link

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def echo() -> Iterator[TcpServer]:
    with TcpServer(echo_handler, "echo") as srv:
        yield srv


class FakeHost:
    """The host's ROUTER and its end of the socketpair; answers one request per call."""

    def __init__(self, tmp_path: Path) -> None:
        self.endpoint = f"ipc://{tmp_path}/hub"
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.bind(self.endpoint)
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def answer(self, reply: str, sock: socket.socket | None = None) -> threading.Thread:
        """In a thread: take one request, answer ``granted`` (with ``sock``) or ``denied``."""

        def run() -> None:
            ident, raw = self.router.recv_multipart()
            msg = p.WORKER_DECODER.decode(raw)
            assert isinstance(msg, p.Connect)
            if reply == "granted":
                assert sock is not None
                granted = p.encode(p.Granted(req=msg.req, sock=5))
                socket.send_fds(self.ours, [granted], [sock.fileno()])
                # An event behind the reply: left for the pump, not lost.
                event = p.encode(p.Accepted(listener=9, sock=6, peer_host=HOST, peer_port=1))
                socket.send_fds(self.ours, [event], [sock.fileno()])
            else:
                denied = p.Denied(req=msg.req, message="permission denied", errorcode=["X"])
                self.router.send_multipart([ident, p.encode(denied)])

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.router.close(linger=0)
        self.ctx.term()
        self.ours.close()


def test_a_grant_arrives_close_on_exec_and_a_refusal_as_the_tclets_error(
    tmp_path: Path, echo: TcpServer
) -> None:
    host = FakeHost(tmp_path)
    link = Link(make_spec("", endpoint=host.endpoint, tclet_id="t1"), host.theirs)
    try:
        assert link.wait_connected(timeout=10)
        with socket.create_connection((HOST, echo.port)) as sock:
            thread = host.answer("granted", sock)
            sock_id, fd = link.connect(HOST, str(echo.port), "", "", False)
            thread.join(10)
            assert sock_id == 5
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            os.close(fd)
            # The event behind the reply is still waiting on the socketpair for the pump.
            data, _, _, _ = host.theirs.recvmsg(p.FD_MESSAGE_MAX, socket.CMSG_SPACE(4))
            assert isinstance(p.HOST_DECODER.decode(data), p.Accepted)
        thread = host.answer("denied")
        with pytest.raises(RequestError) as refused:
            link.connect(HOST, "1", "", "", False)
        thread.join(10)
        assert (refused.value.message, refused.value.errorcode) == ("permission denied", ("X",))
    finally:
        link.shutdown()
        host.close()


def _event_then_grant(host: FakeHost, sock: socket.socket, gap: float) -> threading.Thread:
    """In a thread: take one request, send an event over ZeroMQ, ``gap`` seconds later the
    grant on the socketpair."""

    def run() -> None:
        ident, raw = host.router.recv_multipart()
        msg = p.WORKER_DECODER.decode(raw)
        assert isinstance(msg, p.Connect)
        event = p.QuotaExceeded(quota="bytes_sent", message="over")
        host.router.send_multipart([ident, p.encode(event)])
        time.sleep(gap)
        socket.send_fds(host.ours, [p.encode(p.Granted(req=msg.req, sock=5))], [sock.fileno()])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("gap", [0.0, 0.2])
def test_an_event_that_comes_during_a_request_is_kept_for_the_pump(
    tmp_path: Path, echo: TcpServer, gap: float
) -> None:
    """The request's wait reads no EVENTS after its reply: an event it drained is queued, and
    one it did not read left zmq.FD readable, so the Tcl notifier wakes the pump for it."""
    host = FakeHost(tmp_path)
    link = Link(make_spec("", endpoint=host.endpoint, tclet_id="t1"), host.theirs)
    try:
        assert link.wait_connected(timeout=10)
        with socket.create_connection((HOST, echo.port)) as sock:
            thread = _event_then_grant(host, sock, gap)
            sock_id, fd = link.connect(HOST, str(echo.port), "", "", False)
            thread.join(10)
            os.close(fd)
        assert sock_id == 5
        zfd = link._dealer.getsockopt(zmq.FD)
        assert isinstance(zfd, int)
        queued = list(link._events) or select.select([zfd], [], [], 5)[0]
        assert queued, "the event is neither queued nor signalled on zmq.FD"
        link._pump()  # what the notifier's wake-up runs (no runtime: it only reads)
        events = list(link._events)
        assert events == [p.QuotaExceeded(quota="bytes_sent", message="over")]
    finally:
        link.shutdown()
        host.close()


def _factory() -> tuple[tkinter.Tk, ChannelFactory, list[int]]:
    tk = tkinter.Tcl()
    closed: list[int] = []
    factory = ChannelFactory(tk, closed.append)
    tk.call("interp", "create", "tclet")
    return tk, factory, closed


def test_a_granted_channel_is_made_in_the_tclets_interpreter(echo: TcpServer) -> None:
    tk, factory, closed = _factory()
    try:
        sock = socket.create_connection((HOST, echo.port))
        sock.setblocking(False)  # as the host hands it over
        name = factory.make(sock.detach(), 3, "tclet")
        assert name in str(tk.call("interp", "eval", "tclet", "chan names"))
        assert name not in str(tk.call("chan", "names"))  # never the master's
        assert tk.call("interp", "eval", "tclet", f"fconfigure {name} -blocking") in (1, "1")
        script = f"puts {name} hello; flush {name}; gets {name}"
        assert tk.call("interp", "eval", "tclet", script) == "hello"
        tk.call("interp", "eval", "tclet", f"close {name}")
        factory.closes.drain()
        assert closed == [3]
    finally:
        factory.close()


def test_a_channel_that_cannot_reach_its_interpreter_is_closed_and_reported(
    echo: TcpServer,
) -> None:
    tk, factory, closed = _factory()
    try:
        sock = socket.create_connection((HOST, echo.port))
        fd = sock.detach()
        with pytest.raises(ChannelClosed):
            factory.make(fd, 4, "nosuch")
        factory.closes.drain()
        assert closed == [4]  # reported by its close handler, once
        with pytest.raises(OSError):
            os.fstat(fd)  # Tcl closed the descriptor with the channel
        assert not [c for c in str(tk.call("chan", "names")).split() if c.startswith("sock")]
    finally:
        factory.close()


def test_closes_in_a_row_wake_the_loop_once() -> None:
    _, factory, closed = _factory()
    queue = factory.closes
    try:
        for sock_id in (1, 2, 3):
            queue.push(sock_id)
        assert os.eventfd_read(queue._fd) == 1  # one write for the three
        queue.drain()
        assert closed == [1, 2, 3]
        queue._on_ready(None, None)  # the loop took the wake-up: the next close wakes it again
        queue.push(4)
        assert os.eventfd_read(queue._fd) == 1
    finally:
        factory.close()
