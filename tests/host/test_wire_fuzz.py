"""Fuzzing the worker -> host wire: arbitrary bytes and well-framed msgpack messages (random tags,
fields, types and sizes) thrown at a real host's ROUTER as if from a worker.

An in-process :class:`~tcletd.api.Host` on a loop of its own. Each example launches a real
tclet and, before its worker can connect, a DEALER takes the tclet's routing id (the ROUTER
refuses a second peer with an id in use), then says hello with the tclet's real launch token,
with a wrong one, or not at all, and throws its frames; or it throws them from a routing id the
host never launched. The tclet's policy can reach nothing: ``home`` with an origin whose name
only the tests' DNS server on 127.0.0.1 answers (NXDOMAIN), so no fuzzed request connects
anywhere or asks the machine's resolver. Afterwards the host must still serve another tclet (a
real one does a round trip with a loopback echo server) and its resident memory (this process)
must stay bounded relative to before the first example.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import msgspec
import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.dns import DnsServer
from support.hosting import quiet
from support.net import TcpServer, echo_handler
from support.waiting import until

from tcletd.api import Host
from tcletd.host.tclet import Tclet
from tcletd.shared import protocol as p
from tcletd.shared.states import TcletState

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
MAXMSGSIZE = 64 * 1024  # the hub's ROUTER's
GROWTH = 48 * MIB  # over the whole run: a leak of a frame or a tclet per example shows here
ORIGIN = "http://fuzz.invalid/"  # home: connect back to fuzz.invalid only, which never resolves
SHIPPED = {"home", "trusted", "inside", "outside"}  # no fuzzed `policy NAME` may widen the policy


class _Faults(logging.Handler):
    """Keeps the host's own errors: ERROR and up, and a request that raised (a WARNING)."""

    def __init__(self, faults: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.faults = faults

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.ERROR or "request failed" in text:
            self.faults.append(f"{record.levelname} {record.name}: {text[:300]}")


@contextlib.contextmanager
def forks_held(host: Host) -> Iterator[None]:
    """Hold the host's zygote (SIGSTOP), so that a tclet launched meanwhile has no worker yet
    that could connect, and the fuzzing DEALER always takes the tclet's routing id. Resumed on
    leaving: the host ends a tclet once its worker is forked."""
    assert host._services is not None
    zygote = host._services.supervisor._zygote
    assert zygote is not None and zygote.ready
    os.kill(zygote.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(zygote.process.pid, signal.SIGCONT)


class Fuzzed:
    """The host under fuzz, its loop (run only while an example runs), and the checks."""

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop, echo: TcpServer) -> None:
        self.host = host
        self.loop = loop
        self.echo = echo
        self.ctx = zmq.Context()
        self.examples = 0
        self.arrived = 0  # examples whose frames all reached the hub, from the fuzzer's DEALER
        self.baseline = 0
        assert host._services is not None
        hub = host._services.hub
        self.delivered: list[list[bytes]] = []  # every frame the hub was handed, in order
        deliver = hub._deliver

        def spy(frames: list[bytes]) -> None:
            self.delivered.append(list(frames))
            deliver(frames)

        hub._deliver = spy  # type: ignore[method-assign]
        # What would be the host's fault: an exception its loop caught (a callback that raised),
        # a request whose handling raised, an error it logged (a refused state transition).
        self.faults: list[str] = []
        loop.set_exception_handler(lambda _loop, ctx: self.faults.append(str(ctx)))
        self.log = _Faults(self.faults)
        logging.getLogger("tcletd").addHandler(self.log)

    @property
    def endpoint(self) -> str:
        assert self.host._services is not None
        return self.host._services.hub.endpoint

    def rss(self) -> int:
        return int(psutil.Process(os.getpid()).memory_info().rss)

    def throw(self, who: str, ident: bytes, messages: list[list[bytes]]) -> None:
        self.loop.run_until_complete(asyncio.wait_for(self._throw(who, ident, messages), 30))

    async def _throw(self, who: str, ident: bytes, messages: list[list[bytes]]) -> None:
        with forks_held(self.host):
            tclet = await self._launched(who, ident, messages)
        if tclet is not None:
            await tclet.end("example over")
            await asyncio.wait_for(tclet.wait(), 10)

    async def _launched(self, who: str, ident: bytes, messages: list[list[bytes]]) -> Tclet | None:
        """Throw ``messages`` as ``who``; the tclet launched for it, if one was."""
        tclet: Tclet | None = None
        if who != "stranger":
            tclet = self.host.launch(
                "after 20000 {exit 0}", policy="home", origin=ORIGIN, **quiet()
            )
            ident = tclet.id.encode()
        sent = list(messages)
        if tclet is not None and who == "token":
            sent.insert(0, [p.encode(p.Hello(token=tclet.spec.token, pid=os.getpid()))])
        elif who == "wrong token":
            sent.insert(0, [p.encode(p.Hello(token="0" * 64, pid=os.getpid()))])
        # libzmq drops the connection at a part over MAXMSGSIZE: nothing after it arrives.
        arriving = next((i for i, m in enumerate(sent) if max(map(len, m)) > MAXMSGSIZE), None)
        expected = [[ident, *m] for m in sent[:arriving]]
        # The zygote is held: the worker is not even forked.
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, ident)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.endpoint)
        mark = len(self.delivered)
        try:
            for frames in sent:
                dealer.send_multipart(frames, zmq.NOBLOCK)

            def mine() -> list[list[bytes]]:
                return [f for f in self.delivered[mark:] if f[:1] == [ident]]

            with contextlib.suppress(AssertionError):
                await until(lambda: len(mine()) >= len(expected), timeout=5, interval=0.002)
            if mine()[: len(expected)] == expected:
                self.arrived += 1
            return tclet
        finally:
            dealer.close(linger=0)

    def still_serves(self, every: int = 5) -> None:
        self.examples += 1
        assert not self.faults, self.faults
        if self.examples % every == 0:
            self.round_trip()
        grown = self.rss() - self.baseline
        if os.environ.get("FUZZ_RSS"):
            print(f"example {self.examples}: +{grown / MIB:.1f} MiB")
        assert grown < GROWTH, f"host grew by {grown} bytes over {self.examples} examples"

    def round_trip(self) -> None:
        out: list[bytes] = []
        script = (
            f"set s [socket 127.0.0.1 {self.echo.port}]\nfconfigure $s -buffering line\n"
            "puts $s hello\nputs [gets $s]\nclose $s\n"
        )

        async def run() -> tuple[int, str]:
            result = await self.host.run_tclet(
                script, policy="trusted", on_stdout=out.append, on_stderr=lambda _b: None
            )
            return result.status, result.reason

        status, reason = self.loop.run_until_complete(asyncio.wait_for(run(), 30))
        assert (status, reason, b"".join(out)) == (0, "exit", b"hello\n")


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    loop = asyncio.new_event_loop()
    with DnsServer() as dns, TcpServer(echo_handler, "echo") as echo:
        host = Host(grace=0.05, nameservers=[dns.address], cgroups=False, penalty=0)
        loop.run_until_complete(host.__aenter__())
        try:
            target = Fuzzed(host, loop, echo)
            target.round_trip()  # warm-up: the zygote's first worker is not the fuzz's
            target.throw("token", b"", [[b"\xc1"]])
            target.baseline, target.arrived = target.rss(), 0
            yield target
            target.round_trip()
            print(
                f"examples {target.examples}, all frames reached the hub in {target.arrived}, "
                f"RSS growth {(target.rss() - target.baseline) / MIB:.1f} MiB"
            )
            # The fuzzer's DEALER, not the worker, was the tclet's peer (nearly) every time.
            assert target.arrived >= target.examples * 9 // 10
            assert all(n.rstrip(".").endswith("fuzz.invalid") for n, _ in dns.queries), dns.queries
        finally:
            logging.getLogger("tcletd").removeHandler(target.log)
            target.ctx.term()
            loop.run_until_complete(host.close())
            loop.close()


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

WHO = st.sampled_from(["token", "token", "wrong token", "no hello", "stranger"])
# A ROUTER routing id: 1-255 bytes, not starting with a zero byte (libzmq reserves those).
IDENTS = st.binary(min_size=1, max_size=255).filter(lambda b: b[0] != 0)


@FUZZ
@given(WHO, IDENTS, st.lists(st.lists(st.binary(max_size=2048), min_size=1, max_size=3),
                             min_size=1, max_size=4))  # fmt: skip
def test_arbitrary_bytes(
    fuzzed: Fuzzed, who: str, ident: bytes, messages: list[list[bytes]]
) -> None:
    fuzzed.throw(who, ident, messages)
    fuzzed.still_serves()


TAGS = st.sampled_from(
    ["Hello", "Connect", "Listen", "Close", "RequestPolicy", "Heartbeat", "LimitHit", "Granted",
     "Stop", "Denied", "", "hello", "connect"]
) | st.text(max_size=12)  # fmt: skip
FIELDS = st.sampled_from(
    ["type", "req", "host", "port", "myaddr", "myport", "asynchronous", "sock", "name", "state",
     "commands", "waiting", "limit", "detail", "token", "pid", "reason", "status"]
) | st.text(max_size=8)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.integers(min_value=0, max_value=70_000).map(lambda n: "x" * n)  # past MAX_WORD, MAXMSGSIZE
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
POLICY_NAMES = st.sampled_from(["strict", "nope", "../trusted", "home"]) | st.text(max_size=16)


@st.composite
def random_message(draw: st.DrawFn) -> bytes:
    """A msgpack map with a tag and fields of any name and type."""
    body: dict[str, Any] = draw(st.dictionaries(FIELDS, VALUES, max_size=6))
    if draw(st.booleans()):
        body["type"] = draw(TAGS)
    top = draw(st.sampled_from(["map", "map", "list", "scalar"]))
    value: Any = body if top == "map" else list(body.values()) if top == "list" else draw(VALUES)
    return msgspec.msgpack.encode(value)


STATES = st.sampled_from(["script", "idle", "busy", ""]) | st.text(max_size=8)
WORDS = st.text(max_size=30) | st.sampled_from(["fuzz.invalid", "127.0.0.1", "::1", "1025", "0"])
VALID = st.one_of(
    st.builds(p.Connect, req=st.integers(0, 2**53), host=WORDS, port=WORDS, myaddr=WORDS,
              myport=WORDS, asynchronous=st.booleans()),
    st.builds(p.Listen, req=st.integers(0, 2**53), port=WORDS, myaddr=WORDS),
    st.builds(p.Close, sock=st.integers(0, 2**53)),
    st.builds(p.RequestPolicy, req=st.integers(0, 2**53),
              name=POLICY_NAMES.filter(lambda n: n not in SHIPPED - {"home"})),
    st.builds(
        p.Heartbeat, state=STATES, commands=st.integers(0, 2**63 - 1), waiting=st.booleans()
    ),
    st.builds(p.LimitHit, limit=st.sampled_from(["commands", "cpu", ""]) | st.text(max_size=8),
              detail=st.text(max_size=40)),
    st.builds(p.Hello, token=st.text(max_size=70), pid=st.integers(-(2**31), 2**31)),
).map(p.encode)  # fmt: skip


@FUZZ
@given(WHO, IDENTS, st.lists(st.one_of(random_message(), VALID), min_size=1, max_size=6))
def test_well_framed_messages(
    fuzzed: Fuzzed, who: str, ident: bytes, messages: list[bytes]
) -> None:
    fuzzed.throw(who, ident, [[m] for m in messages])
    fuzzed.still_serves()


async def impostor(fuzzed: Fuzzed) -> tuple[Tclet, zmq.Socket[bytes]]:
    """A tclet and a DEALER that said its hello before its worker was forked: the DEALER is
    the tclet's peer (the worker, forked after, finds its routing id taken)."""
    dealer = fuzzed.ctx.socket(zmq.DEALER)
    with forks_held(fuzzed.host):
        tclet = fuzzed.host.launch("after 20000 {exit 0}", policy="home", origin=ORIGIN, **quiet())
        dealer.setsockopt(zmq.IDENTITY, tclet.id.encode())
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(fuzzed.endpoint)
        dealer.send(p.encode(p.Hello(token=tclet.spec.token, pid=os.getpid())))
        await until(lambda: tclet.state is not TcletState.STARTING, timeout=10)
    return tclet, dealer


def test_a_hello_with_the_real_token_reaches_the_tclet(fuzzed: Fuzzed) -> None:
    """The harness's premise: the fuzzing DEALER, not the worker, is the tclet's peer (its
    undecodable frame ends that tclet as a protocol violation)."""
    ended: list[str] = []

    async def scenario() -> None:
        tclet, dealer = await impostor(fuzzed)
        try:
            dealer.send(b"\xc1 not msgpack")
            result = await asyncio.wait_for(tclet.wait(), 10)
            ended.append(result.reason)
        finally:
            dealer.close(linger=0)

    fuzzed.loop.run_until_complete(scenario())
    assert ended[0].startswith("protocol violation: undecodable message"), ended


def test_a_legitimate_request_sequence_is_answered(fuzzed: Fuzzed) -> None:
    """Through the fuzzing DEALER, a well-formed request gets its answer (a denial: the
    policy reaches nothing), so fuzzed requests do reach the host's request path."""
    answers: list[p.HostMessage] = []

    async def scenario() -> None:
        tclet, dealer = await impostor(fuzzed)
        try:
            dealer.send(p.encode(p.Connect(req=7, host="10.1.2.3", port="1025")))

            def answered() -> bool:
                with contextlib.suppress(zmq.Again):
                    answers.append(p.HOST_DECODER.decode(dealer.recv(zmq.NOBLOCK)))
                return bool(answers)

            await until(answered, timeout=10, message="no answer to the connect")
            await tclet.end("example over")
            await asyncio.wait_for(tclet.wait(), 10)
        finally:
            dealer.close(linger=0)

    fuzzed.loop.run_until_complete(scenario())
    assert isinstance(answers[0], p.Denied) and answers[0].req == 7, answers
