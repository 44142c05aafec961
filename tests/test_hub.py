"""The host's ROUTER treats workers as hostile: token, hello-first, and undecodable frames."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from tcletd.host.hub import Hub, Peer
from tcletd.shared import protocol as p

pytestmark = pytest.mark.timeout(30)


async def _exchange(tmp_path: Path, frames: list[bytes]) -> tuple[list[str], list[object]]:
    loop = asyncio.get_running_loop()
    hub = Hub(f"ipc://{tmp_path}/hub", loop)
    violations: list[str] = []
    messages: list[object] = []
    hub.register(Peer("t1", "secret", messages.append, violations.append))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"t1")
    dealer.connect(hub.endpoint)
    try:
        for frame in frames:
            dealer.send(frame)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(violations) + len(messages) >= len(frames):
                break
    finally:
        dealer.close(linger=0)
        ctx.term()
        hub.close()
    return violations, messages


def test_hello_with_token_then_requests_are_delivered(tmp_path: Path) -> None:
    frames = [p.encode(p.Hello(token="secret", pid=1)), p.encode(p.Close(sock=3))]
    violations, messages = asyncio.run(_exchange(tmp_path, frames))
    assert violations == []
    assert messages == [p.Hello(token="secret", pid=1), p.Close(sock=3)]


@pytest.mark.parametrize(
    "frames",
    [
        [p.encode(p.Close(sock=3))],
        [p.encode(p.Hello(token="wrong", pid=1))],
        [b"\xff\x00garbage"],
        [p.encode(p.Hello(token="secret", pid=1)), p.encode(p.Hello(token="secret", pid=1))],
        [p.encode(p.Hello(token="secret", pid=1)), p.encode(p.Stop(reason="x", status=1))],
        [
            p.encode(p.Hello(token="secret", pid=1)),
            msgspec.msgpack.encode({"type": "Connect", "req": 1, "host": "x" * 5000, "port": "1"}),
        ],
    ],
    ids=["no-hello", "wrong-token", "garbage", "second-hello", "host-message", "oversized-word"],
)
def test_protocol_violations_are_reported(tmp_path: Path, frames: list[bytes]) -> None:
    violations, _ = asyncio.run(_exchange(tmp_path, frames))
    assert len(violations) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decoder_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        p.WORKER_DECODER.decode(data)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        p.Connect,
        req=st.integers(0, 2**53),
        host=st.text(max_size=50),
        port=st.text(max_size=10),
        myaddr=st.text(max_size=10),
        myport=st.text(max_size=5),
        asynchronous=st.booleans(),
    )
)
def test_messages_round_trip(msg: p.Connect) -> None:
    assert p.WORKER_DECODER.decode(p.encode(msg)) == msg


def test_a_malformed_frame_ends_that_worker_and_the_host_goes_on() -> None:
    from tcletd.api import Host

    quiet = {"on_stdout": lambda _b: None, "on_stderr": lambda _b: None}

    async def scenario() -> tuple[object, object]:
        async with Host() as host:
            victim = host.launch("after 20000 {exit 0}", policy="trusted", **quiet)
            await asyncio.sleep(0.5)  # past its hello
            assert host._services is not None
            # Through the hub's own path: frames as the ROUTER delivers them from that worker.
            host._services.hub._deliver([victim.id.encode(), b"\xc1 not msgpack"])
            ended = await asyncio.wait_for(victim.wait(), 5)
            after = await host.run_tclet("puts ok", policy="trusted", **quiet)
            return ended, after

    ended, after = asyncio.run(scenario())
    assert ended.status == 137  # type: ignore[attr-defined]
    assert ended.reason.startswith("protocol violation: undecodable message")  # type: ignore[attr-defined]
    assert (after.status, after.reason) == (0, "exit")  # type: ignore[attr-defined]
