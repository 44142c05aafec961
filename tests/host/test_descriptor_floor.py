"""A worker's descriptors are numbered from the bottom, however many siblings it has.

The zygote holds a descriptor per live worker; before each worker closed what it inherited
and moved its link down, the 1,000th worker's link sat above descriptor 1,000 and Tcl's
``select()`` notifier aborted it at 1,024. Here, on a real in-process Host, the highest
descriptor of a worker started beside 40 others is that of the first one started alone; and a
launch that finds the host out of descriptors is refused with a clear error, not a crash.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket

import pytest
from support.hosting import quiet, worker_pid
from support.net import TcpServer

from tcletd.api import Host, HostFull
from tcletd.host.quotas import (
    DESCRIPTORS_PER_WARM,
    DESCRIPTORS_STARTING,
    descriptors_margin,
)
from tcletd.host.tclet import Tclet

pytestmark = pytest.mark.timeout(120)

SIBLINGS = 40
# Holds a socket, as a hosted tclet does: its descriptor is one Tcl's notifier watches.
HOLDS = """
set s [socket 127.0.0.1 [lindex $argv 0]]
puts ready; flush stdout
vwait forever
"""


def _highest_fd(tclet: Tclet) -> int:
    assert tclet.worker is not None
    return max(int(fd) for fd in os.listdir(f"/proc/{worker_pid(tclet)}/fd"))


async def _ready(host: Host, port: int) -> Tclet:
    seen = asyncio.Event()
    tclet = host.launch(
        HOLDS,
        argv=[str(port)],
        policy="trusted",
        on_stdout=lambda _d: seen.set(),
        on_stderr=quiet()["on_stderr"],
    )
    await asyncio.wait_for(seen.wait(), 30)
    return tclet


def test_a_workers_descriptors_do_not_grow_with_its_siblings(echo: TcpServer) -> None:
    async def scenario() -> tuple[int, int, int]:
        async with Host(max_workers=SIBLINGS + 5) as host:
            first = await _ready(host, echo.port)
            alone = _highest_fd(first)
            others = [await _ready(host, echo.port) for _ in range(SIBLINGS)]
            last = _highest_fd(others[-1])
            for tclet in (first, *others):
                await tclet.end("test over")
            return alone, last, len(others)

    alone, last, siblings = asyncio.run(scenario())
    assert siblings == SIBLINGS
    # Without the move, the last worker's link alone sits ~SIBLINGS numbers higher.
    assert last <= alone + 2, (alone, last)
    assert last < 32, last


def test_a_launch_out_of_descriptors_is_refused_not_a_crash() -> None:
    async def scenario() -> str:
        async with Host() as host:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            hoard: list[socket.socket] = []
            try:
                # A few descriptors left, then none: the host is out of them.
                resource.setrlimit(
                    resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard)
                )
                while True:
                    try:
                        hoard.append(socket.socket())
                    except OSError:
                        break
                with pytest.raises(HostFull) as info:
                    host.launch("exit 0", policy="trusted", **quiet())
            finally:
                for sock in hoard:
                    sock.close()
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            # The host goes on: a launch works again once descriptors are free.
            result = await host.run_tclet("exit 4", policy="trusted", **quiet())
            assert result.status == 4
            return str(info.value)

    message = asyncio.run(scenario())
    assert message.startswith("the host is out of file descriptors"), message


@pytest.mark.parametrize("warm", [0, 4])
def test_the_host_counts_its_descriptors_and_refuses_the_launch_that_would_pass_them(
    warm: int,
) -> None:
    """With room for N tclets in its descriptor limit, launch N+1 is refused (HostFull, the
    same words as for an actual shortage) before anything runs short, and a launch is admitted
    again once a tclet has ended. The warm pool's children, held by the host ahead, count too
    (with 4 of them, 320 descriptors hold one tclet fewer)."""
    limit = 320

    async def scenario() -> tuple[str, int]:
        async with Host(max_workers=400, warm=warm) as host:
            # What it held at start (this test process's own descriptors among them) is counted.
            assert host._totals.own >= 3
            held_ahead = host._totals.own + descriptors_margin(limit) + warm * DESCRIPTORS_PER_WARM
            # Launched in one go: every one is still on its way when the last is asked for.
            room = (limit - held_ahead) // DESCRIPTORS_STARTING
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            try:
                held = [
                    host.launch("after 20000 {exit 0}", policy="trusted", **quiet())
                    for _ in range(room)
                ]
                with pytest.raises(HostFull) as info:
                    host.launch("exit 0", policy="trusted", **quiet())
                # Not a shortage yet: the descriptors it counted are not all in use.
                assert len(os.listdir("/proc/self/fd")) < limit
                await held[0].end("making room")
                await held[0].wait()
                again = await host.run_tclet("exit 5", policy="trusted", **quiet())
                for tclet in held[1:]:
                    await tclet.end("test over")
                assert host._totals.starting == 0  # every fork that came was counted off
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            return str(info.value), again.status

    message, status = asyncio.run(scenario())
    assert message.startswith("the host is out of file descriptors"), message
    assert f"its limit is {limit}" in message
    assert status == 5
