"""The host's ROUTER treats workers as hostile: token, hello-first, and undecodable frames.

An in-process Hub and a DEALER standing in for a worker (tcletd.host.hub); a malformed frame
from a real worker is in host/test_containment.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
import zmq
from support.waiting import until

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
        await until(
            lambda: len(violations) + len(messages) >= len(frames),
            timeout=5,
            interval=0.01,
            message=lambda: f"the hub answered only {violations} {messages}",
        )
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
