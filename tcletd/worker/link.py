"""The worker's link to the host: one ZeroMQ DEALER for requests and events, one Unix
SOCK_SEQPACKET socketpair on which the host hands over socket descriptors, each with the message
(Granted or Accepted) that names it.

Worker side of the trust boundary: this code is ours but shares a process with the untrusted
tclet, so it holds nothing the tclet could use against the host (no host state, no other
tclet's anything). It implements the runtime's :class:`~tcletd.worker.tclrt.HostLink` with
synchronous requests, the way Tcl's own ``socket`` blocks: the Tcl event loop does not run while
a request is in flight, and events that arrive meanwhile are queued and dispatched from the loop.

zmq.FD is edge-triggered, and any libzmq call can swallow the edge (measured under Tcl's
notifier: a handler reading one message per wake-up left messages stuck; a send, or merely
reading ``EVENTS``, between an arrival and the next loop turn lost the wake-up): so every wake-up
drains until ``zmq.Again``, and every send is followed by a check of ``EVENTS`` that schedules a
drain (a request's send by the check its wait makes before it blocks, which drains itself).

Under the sandbox's ``RLIMIT_NOFILE`` a descriptor the host hands over may not fit: the kernel
then drops it (``MSG_CTRUNC``) and the message arrives alone. The link answers the tclet's
request as refused with ``EMFILE`` (Tcl's "too many open files") and tells the host it closed
that socket, so the host drops its duplicate.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import zmq

from tcletd.shared import protocol as p
from tcletd.shared.errors import RequestError
from tcletd.worker.sandbox import descriptors

if TYPE_CHECKING:
    from tcletd.worker.tclrt import TclRuntime

# The status a worker exits with when its host is gone (fail closed, like Deno's broker loss).
EXIT_HOST_GONE = 75
# Seconds a worker waits for its connection to the host before it gives up (the host is gone).
CONNECT_TIMEOUT = 10.0
# Seconds the worker waits for libzmq to close the connect monitor's descriptors.
MONITOR_CLOSE_TIMEOUT = 1.0
# Plain ints: pyzmq's enum flags cost a few microseconds per use on the request path.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
# Room for the one descriptor a host message carries (and a few more, which are closed).
_FD_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)
# Received descriptors are close-on-exec from the start (no fcntl per grant afterwards).
_RECV_FLAGS: int = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class Link:
    """The worker's half of the control plane and the descriptor channel."""

    def __init__(
        self, spec: p.WorkerSpec, fdsock: socket.socket, started: LinkStart | None = None
    ) -> None:
        """``started``: the tclet-independent part, made ahead (a warm worker's); None: now."""
        self._spec = spec
        self._fdsock = fdsock
        # socket.recv_fds ignores its flags on Python < 3.12; a non-blocking socket is simpler.
        fdsock.setblocking(False)
        started = started if started is not None else LinkStart()
        self._start = started
        self._ctx, self._dealer = started.ctx, started.dealer
        if started.endpoint is None:
            # The routing identity is the tclet's, set before the connect: the host's ROUTER
            # knows a worker by it from the connection's first frame.
            started.connect(spec.endpoint, spec.tclet_id)
        elif started.endpoint != spec.endpoint:
            # Connected ahead to another host: this one would never hear of the tclet.
            os.write(2, b"tcletd worker: connected ahead to another host\n")
            os._exit(EXIT_HOST_GONE)
        # A request waits in poll(2) on the DEALER's zmq.FD and the socketpair, not zmq.Poller:
        # zmq_poll reads EVENTS before and after it blocks, and each look is libzmq's poll(2)
        # and getpid(2)s. With the looks after the send and after the reply, a request took four;
        # it takes one now (strace of a tclet's connect-read-close loop: 35 system calls per
        # grant in the worker before, 10 of them poll and 11 getpid; 24 after, 6 and 7).
        zfd = self._dealer.getsockopt(zmq.FD)
        assert isinstance(zfd, int)
        self._wait = select.poll()
        self._wait.register(zfd, select.POLLIN)
        self._wait.register(fdsock.fileno(), select.POLLIN)
        self._fdsock_fd = fdsock.fileno()
        self._next_req = 1
        self._fds: dict[int, int] = {}
        self._events: deque[p.HostMessage] = deque()
        self._replies: dict[int, p.HostMessage] = {}
        self._runtime: TclRuntime | None = None
        self._drain_scheduled = False
        self._token = spec.token

    def wait_connected(self, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Until the connection to the host exists; False if it did not within ``timeout``.

        libzmq makes the connection's socket in its I/O thread, some time after ``connect``
        returned. The sandbox refuses new sockets, so it must not come first: a worker sandboxed
        before its I/O thread made the socket could never reach the host, and waited for ever
        before its hello (about one launch in a hundred in a burst of fifty).
        """
        return self._start.settle(timeout)

    def hello(self) -> None:
        """The first message: the tclet's script starts now. Sent after the runtime is built and
        the sandbox applied, so the host's first look at a spinner (HOG_WINDOW into the script)
        sees the script, not the worker's own start-up, which sleeps."""
        self._send(p.Hello(token=self._token, pid=os.getpid()))

    # ---- wiring into the Tcl event loop --------------------------------------------------

    def attach(self, runtime: TclRuntime) -> None:
        """Register the link's descriptors with the runtime's Tcl notifier."""
        import tkinter

        self._runtime = runtime
        tk = runtime.tk
        zfd = self._dealer.getsockopt(zmq.FD)
        assert isinstance(zfd, int)
        tk.createfilehandler(zfd, tkinter.READABLE, lambda *_: self._pump())
        tk.createfilehandler(self._fdsock.fileno(), tkinter.READABLE, lambda *_: self._pump())
        self._pump()

    def _schedule_drain(self) -> None:
        if self._runtime is not None and not self._drain_scheduled:
            self._drain_scheduled = True
            self._runtime.tk.after(0, self._pump)

    def _pump(self) -> None:
        """Read everything available, then dispatch queued events to the runtime."""
        self._drain_scheduled = False
        self._read_fds()
        self._drain()
        while self._events and self._runtime is not None:
            self._dispatch(self._events.popleft())

    def _dispatch(self, msg: p.HostMessage) -> None:
        assert self._runtime is not None
        if isinstance(msg, p.Accepted):
            fd = self._take_fd(msg.sock)
            self._runtime.accepted(msg.listener, msg.sock, fd, msg.peer_host, msg.peer_port)
        elif isinstance(msg, p.QuotaExceeded):
            self._runtime.quota_exceeded(msg.quota, msg.message)
        elif isinstance(msg, p.Stop):
            self._runtime.stop(msg.status)

    # ---- raw I/O ---------------------------------------------------------------------------

    def _send(self, msg: msgspec.Struct, flags: int = 0) -> None:
        self._dealer.send(p.encode(msg), flags)
        if int(self._dealer.getsockopt(_EVENTS)) & _POLLIN:
            self._schedule_drain()

    def _drain(self) -> None:
        # EVENTS rather than recv until zmq.Again: the exception costs more than the look.
        while int(self._dealer.getsockopt(_EVENTS)) & _POLLIN:
            try:
                raw = self._dealer.recv(_NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = p.HOST_DECODER.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # the host is trusted; a frame we cannot read is a version skew
            self._route(msg)

    def _route(self, msg: p.HostMessage) -> None:
        if isinstance(msg, p.Accepted | p.QuotaExceeded | p.Stop):
            self._events.append(msg)
        else:
            self._replies[msg.req] = msg

    def _read_fds(self, *, one: bool = False) -> None:
        """Take every message waiting on the socketpair (``one``: the first only; the socket
        stays readable for the rest), stashing its descriptor."""
        recvmsg = self._fdsock.recvmsg
        while True:
            try:
                data, ancdata, _flags, _addr = recvmsg(p.FD_MESSAGE_MAX, _FD_SPACE, _RECV_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                os._exit(EXIT_HOST_GONE)
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % fds.itemsize
                    fds.frombytes(payload[:usable])
            if not data and not fds:
                os._exit(EXIT_HOST_GONE)  # the host is gone: fail closed
            try:
                msg = p.HOST_DECODER.decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                msg = None
            if isinstance(msg, p.Granted | p.Accepted) and len(fds) == 1:
                self._fds[msg.sock] = fds[0]
                self._route(msg)
            else:
                for fd in fds:
                    os.close(fd)
                if isinstance(msg, p.Granted | p.Accepted) and not fds:
                    self._no_room(msg)
            if one:
                return

    def _no_room(self, msg: p.Granted | p.Accepted) -> None:
        """The descriptor of ``msg`` did not fit under RLIMIT_NOFILE (the kernel dropped it)."""
        self._send(p.Close(sock=msg.sock))
        if isinstance(msg, p.Granted):
            text = os.strerror(errno.EMFILE).lower()
            self._route(
                p.Denied(
                    req=msg.req,
                    message=f"couldn't open socket: {text}",
                    errorcode=["POSIX", "EMFILE", text],
                )
            )

    def _take_fd(self, sock: int) -> int:
        # The descriptor arrived in the same socketpair message as the Granted/Accepted.
        return self._fds.pop(sock)

    def _request(self, build: Callable[[int], msgspec.Struct]) -> p.HostMessage:
        req = self._next_req
        self._next_req += 1
        replies, dealer, fdsock_fd = self._replies, self._dealer, self._fdsock_fd
        # No EVENTS look after this send (as _send has): the loop's comes first thing.
        dealer.send(p.encode(build(req)))
        while req not in replies:
            # zmq.FD is edge-triggered: EVENTS before every block, which also takes the
            # mailbox's signal (a wake-up with no message does not spin). The socketpair is
            # level-triggered: one message per wake-up (a grant's reply is one), no recvmsg
            # ending in EAGAIN; what is left is found by the next poll or pump.
            if int(dealer.getsockopt(_EVENTS)) & _POLLIN:
                self._drain()
                continue
            for fd, _ in self._wait.poll():
                if fd == fdsock_fd:
                    self._read_fds(one=True)
        # No EVENTS look here either: the last one found nothing or was followed by a drain
        # (events it read are queued), and what arrived since left the mailbox's signal unread,
        # so zmq.FD stays readable for the Tcl notifier.
        if self._events:
            self._schedule_drain()
        reply = self._replies.pop(req)
        if isinstance(reply, p.Denied):
            raise RequestError(reply.message, tuple(reply.errorcode))
        return reply

    def shutdown(self) -> None:
        """Hand every queued message to the kernel (bounded by the linger), then close."""
        self._dealer.close(linger=500)
        self._ctx.term()

    # ---- the runtime's HostLink ------------------------------------------------------------

    @staticmethod
    def _check_words(*words: str) -> None:
        # The host ends a worker whose message breaks the wire bounds, so a tclet's oversized
        # argument must fail here as an ordinary Tcl error instead.
        for word in words:
            if len(word) > p.MAX_WORD:
                raise RequestError(
                    f"argument too long ({len(word)} characters, limit {p.MAX_WORD})"
                )

    def connect(
        self, host: str, port: str, myaddr: str, myport: str, asynchronous: bool
    ) -> tuple[int, int]:
        self._check_words(host, port, myaddr, myport)
        reply = self._request(
            lambda req: p.Connect(
                req=req,
                host=host,
                port=port,
                myaddr=myaddr,
                myport=myport,
                asynchronous=asynchronous,
            )
        )
        assert isinstance(reply, p.Granted)
        return reply.sock, self._take_fd(reply.sock)

    def listen(self, port: str, myaddr: str) -> tuple[int, list[list[str]]]:
        self._check_words(port, myaddr)
        reply = self._request(lambda req: p.Listen(req=req, port=port, myaddr=myaddr))
        assert isinstance(reply, p.Listening)
        return reply.sock, reply.sockname

    def close(self, sock_id: int) -> None:
        self._send(p.Close(sock=sock_id))

    def request_policy(self, name: str) -> p.PolicyGranted:
        self._check_words(name)
        reply = self._request(lambda req: p.RequestPolicy(req=req, name=name))
        assert isinstance(reply, p.PolicyGranted)
        return reply

    def heartbeat(self, state: str, commands: int, waiting: bool = False) -> None:
        # Never block the tclet's event loop on liveness: if the host is not reading (HWM
        # reached), this beat is dropped and its silence says the same thing. A dropped
        # ``waiting`` report leaves the host calling the tclet busy until its next wake.
        with contextlib.suppress(zmq.Again):
            self._send(p.Heartbeat(state=state, commands=commands, waiting=waiting), zmq.NOBLOCK)

    def limit_hit(self, limit: str, detail: str) -> None:
        self._send(p.LimitHit(limit=limit[: p.MAX_WORD], detail=detail[: p.MAX_WORD]))


class LinkStart:
    """The part of a link that does not depend on the tclet: the ZeroMQ context, its DEALER
    (its first socket starts libzmq's I/O thread and reaper) and the connect monitor; for a
    warm worker, the connection too (:meth:`connect`). A warm worker makes it ahead, once in
    its cgroup (a thread moved in later, by its id, takes the kernel's global threadgroup
    lock: 6-16 ms measured here), which saves the ~1.3 ms it costs out of a launch."""

    def __init__(self) -> None:
        self.ctx = zmq.Context(io_threads=1)
        self.dealer: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        # Bounded linger: a Close sent just before exit should still leave, but never hang exit.
        self.dealer.setsockopt(zmq.LINGER, 200)
        # Watched from before the connect, so that its event cannot come before we listen.
        before = descriptors()
        self.monitor: zmq.Socket[bytes] | None = self.dealer.get_monitor_socket(zmq.EVENT_CONNECTED)
        # The monitor's own descriptors (a mailbox per PAIR socket), to see them closed later.
        self.monitor_fds = {fd: ino for fd, ino in descriptors().items() if fd not in before}
        self.endpoint: str | None = None  # where it connected (None: not yet)

    def connect(self, endpoint: str, ident: str) -> None:
        """Connect to the host's ROUTER at ``endpoint`` as ``ident``: the routing identity the
        host knows this worker by, its tclet's id, or the one the host chose for a warm child,
        which connects ahead (traced before: ~1-2 ms from the link's making to connected, and
        0.4-1.1 ms more for the host to read the hello of a new connection; launch to hello
        from a warm pool of 4, p50 of 40, 4 runs alternated on 2 cores: 4.6-5.7 ms connected
        after the Spawn, 3.4-4.6 ms connected ahead)."""
        self.dealer.setsockopt(zmq.IDENTITY, ident.encode())
        self.dealer.connect(endpoint)
        self.endpoint = endpoint

    def settle(self, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Until the connection exists, then the monitor is gone; False if it did not within
        ``timeout`` (see :meth:`Link.wait_connected`). At once if settled before."""
        monitor = self.monitor
        if monitor is None:
            return True
        try:
            connected = bool(monitor.poll(round(timeout * 1000)))
        finally:
            self.dealer.disable_monitor()
            monitor.close(linger=0)
            self.monitor = None
            _await_closed(self.monitor_fds, MONITOR_CLOSE_TIMEOUT)
        return connected


def _await_closed(fds: dict[int, int], timeout: float) -> None:
    """Until none of ``fds`` is open on the same file, for at most ``timeout`` seconds.

    libzmq closes a socket's descriptors in its reaper thread, some time after ``close``
    returns. The sandbox sizes RLIMIT_NOFILE from the descriptors open when it is applied, so a
    mailbox still open then and closed later would give the tclet one more socket than its
    quota says, on a loaded machine only.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still = descriptors()
        if not any(still.get(fd) == ino for fd, ino in fds.items()):
            return
        time.sleep(0.001)
