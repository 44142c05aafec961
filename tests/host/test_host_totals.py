"""The host's totals: at most ``max_workers`` tclets and ``max_sockets`` sockets in all, on a
real in-process Host."""

from __future__ import annotations

import asyncio

import pytest
from support.hosting import quiet
from support.net import TcpServer

from tcletd.api import Host, HostFull

pytestmark = pytest.mark.timeout(60)


def test_host_worker_total() -> None:
    async def scenario() -> str:
        async with Host(max_workers=2) as host:
            a = host.launch("after 10000 {exit 0}", policy="trusted", **quiet())
            b = host.launch("after 10000 {exit 0}", policy="trusted", **quiet())
            with pytest.raises(HostFull) as info:
                host.launch("exit 0", policy="trusted")
            await a.end("test over")
            await a.wait()
            c = host.launch("exit 3", policy="trusted", **quiet())
            assert (await c.wait()).status == 3
            await b.end("test over")
            return str(info.value)

    assert asyncio.run(scenario()) == "too many tclets on this host (limit 2)"


def test_host_socket_total(echo: TcpServer) -> None:
    async def scenario() -> str:
        out: list[bytes] = []
        ready = asyncio.Event()

        def on_a(data: bytes) -> None:
            ready.set()

        async with Host(max_sockets=2) as host:
            a = host.launch(
                f"set a [socket 127.0.0.1 {echo.port}]; set b [socket 127.0.0.1 {echo.port}]\n"
                "puts ready; flush stdout; after 10000 {exit 0}\n",
                policy="trusted",
                on_stdout=on_a,
                on_stderr=lambda _b: None,
            )
            await asyncio.wait_for(ready.wait(), 10)
            result = await host.run_tclet(
                f"puts [catch {{socket 127.0.0.1 {echo.port}}} m]; puts $m",
                policy="trusted",
                on_stdout=out.append,
                on_stderr=lambda _b: None,
            )
            assert result.status == 0
            await a.end("test over")
        return b"".join(out).decode()

    assert asyncio.run(scenario()).splitlines() == [
        "1",
        "too many open sockets on this host (limit 2)",
    ]
