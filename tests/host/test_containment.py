"""One tclet cannot reach another through the host: not its channels, not by breaking the wire
(a malformed frame ends only the worker that sent it). Real in-process Host, real workers."""

from __future__ import annotations

import asyncio

import pytest
from support.hosting import quiet
from support.net import TcpServer, echo_handler
from support.waiting import until

from tcletd.api import Host
from tcletd.shared.states import TcletResult, TcletState

pytestmark = pytest.mark.timeout(60)


def test_tclets_cannot_touch_each_others_channels() -> None:
    async def scenario() -> tuple[str, str]:
        out_a: list[bytes] = []
        out_b: list[bytes] = []
        with TcpServer(echo_handler) as echo:
            async with Host() as host:
                a = host.launch(
                    f"set s [socket 127.0.0.1 {echo.port}]\nputs $s\nflush stdout\n"
                    "after 3000 {exit 0}\n",
                    policy="trusted",
                    on_stdout=out_a.append,
                    on_stderr=lambda _b: None,
                )
                await until(lambda: out_a, timeout=5, message="tclet a printed no channel name")
                name = b"".join(out_a).decode().strip()
                b = await host.run_tclet(
                    f"puts [catch {{puts {name} intruder}} m]; puts $m",
                    policy="trusted",
                    on_stdout=out_b.append,
                    on_stderr=lambda _b: None,
                )
                assert b.status == 0
                await a.end("test over")
                await a.wait()
        return name, b"".join(out_b).decode()

    name, b_out = asyncio.run(scenario())
    assert name.startswith("sock")
    assert b_out.splitlines() == ["1", f'can not find channel named "{name}"']


def test_a_malformed_frame_ends_that_worker_and_the_host_goes_on() -> None:
    async def scenario() -> tuple[TcletResult, TcletResult]:
        async with Host() as host:
            victim = host.launch("after 20000 {exit 0}", policy="trusted", **quiet())
            await until(lambda: victim.state is not TcletState.STARTING)  # past its hello
            assert host._services is not None
            # Through the hub's own path: frames as the ROUTER delivers them from that worker.
            host._services.hub._deliver([victim.id.encode(), b"\xc1 not msgpack"])
            ended = await asyncio.wait_for(victim.wait(), 5)
            after = await host.run_tclet("puts ok", policy="trusted", **quiet())
            return ended, after

    ended, after = asyncio.run(scenario())
    assert ended.status == 137
    assert ended.reason.startswith("protocol violation: undecodable message")
    assert (after.status, after.reason) == (0, "exit")
