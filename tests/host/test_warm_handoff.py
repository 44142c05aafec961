"""The host hands a launch's Spawn straight to the warm child the zygote announced (the zygote
never sees it), and checks each announcement as hostile input: a descriptor that is not a Unix
SEQPACKET socket, or a pidfd for another process than the one named, ends the zygote; an
announcement for a cgroup the host did not ask a child for is let go, its descriptors closed.
A warm worker's channel factory, made ahead, delivers its tclet's closes to the host."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest
from support.hosting import worker_pid, zygote_of
from support.net import TcpServer, echo_handler
from support.system import new_fds, open_fds, pid_alive
from support.waiting import until

from tcletd.api import Host
from tcletd.host.factory import Zygote
from tcletd.host.warmpool import WarmChildren
from tcletd.shared import spawn as wire

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("cgroups", [True, False])
def test_a_warm_launch_goes_straight_to_its_child_and_the_zygote_only_reaps_it(
    cgroups: bool,
) -> None:
    async def scenario() -> None:
        async with Host(warm=2, cgroups=cgroups) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_children(zygote).unclaimed) == 2, timeout=20)
            announced = set(_children(zygote).unclaimed)
            told: list[object] = []
            send = zygote._send

            def spy(msg: wire.Warm | wire.Spawn, fds: list[int] | None = None) -> None:
                told.append(msg)
                send(msg, fds)

            zygote._send = spy  # type: ignore[method-assign]
            out: list[bytes] = []
            tclet = host.launch("puts up; exit 3", on_stdout=out.append, on_stderr=print)
            result = await tclet.wait()
            assert out == [b"up\n"] and result.status == 3  # its exit, reaped by the zygote
            assert worker_pid(tclet) in announced
            assert not [m for m in told if isinstance(m, wire.Spawn)], told
            assert worker_pid(tclet) not in _children(zygote).unclaimed

    asyncio.run(scenario())


def _children(zygote: Zygote) -> WarmChildren:
    assert zygote.warm_children is not None
    return zygote.warm_children


def _announce(
    children: WarmChildren, pid: int, procs: list[str], end: int, pidfd: int
) -> str | None:
    announced = wire.WarmChild(pid=pid, cgroup_procs=procs)
    return children.admit(announced, end, pidfd, os.getpid(), lambda _pid: False)


def test_an_announcement_is_checked_before_the_host_holds_anything_of_it() -> None:
    children = WarmChildren()
    key = ("/nowhere/cgroup.procs",)
    procs = list(key)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        before = open_fds()

        def pair(kind: int = socket.SOCK_SEQPACKET) -> int:
            ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
            theirs.close()
            return ours.detach()

        def pipe() -> int:
            read, write = os.pipe()
            os.close(write)
            return read

        # Not asked for: let go (closed), the zygote not blamed.
        assert _announce(children, sleeper.pid, procs, pair(), os.pidfd_open(sleeper.pid)) is None
        assert not children.unclaimed
        # A pipe, a stream socket: not the child's end.
        for end in (pipe(), pair(socket.SOCK_STREAM)):
            children.named(key)
            why = _announce(children, sleeper.pid, procs, end, os.pidfd_open(sleeper.pid))
            assert why is not None and "not" in why
        # A pidfd for another process than the one named (ours), or no pidfd at all.
        for pidfd in (os.pidfd_open(os.getpid()), os.open(os.devnull, os.O_RDONLY)):
            why = _announce(children, sleeper.pid, procs, pair(), pidfd)
            assert why is not None and "not what it says" in why
        # A pid the host already runs a worker as.
        why = children.admit(
            wire.WarmChild(pid=sleeper.pid, cgroup_procs=procs),
            pair(),
            os.pidfd_open(sleeper.pid),
            os.getpid(),
            lambda pid: pid == sleeper.pid,
        )
        assert why is not None
        # A process that is not the zygote's child (the sleeper is ours: another parent named).
        children.named(key)
        why = children.admit(
            wire.WarmChild(pid=sleeper.pid, cgroup_procs=procs),
            pair(),
            os.pidfd_open(sleeper.pid),
            os.getppid(),
            lambda _pid: False,
        )
        assert why is not None and "not what it says" in why
        assert not children.unclaimed
        # The one it should be is held, until the host lets it go.
        assert _announce(children, sleeper.pid, procs, pair(), os.pidfd_open(sleeper.pid)) is None
        assert set(children.unclaimed) == {sleeper.pid} and children.has_child(procs)
        children.let_go()
        assert not children.has_child(procs)
        # Every descriptor that came with them is closed.
        assert not new_fds(before)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_released_warm_child_exits() -> None:
    async def scenario() -> None:
        async with Host(warm=1, cgroups=False) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_children(zygote).unclaimed) == 1, timeout=20)
            (pid,) = _children(zygote).unclaimed
            _children(zygote).let_go()  # its end closed: it reads end of file
            await until(lambda: not pid_alive(pid), timeout=20)

    asyncio.run(scenario())


# Under a quota of one socket, each connect after the first needs the previous close to have
# reached the host.
CYCLE = """
set port [lindex $argv 0]
for {set i 0} {$i < 3} {incr i} { set s [socket localhost $port]; close $s }
puts closed
"""


def test_a_warm_worker_s_channels_made_ahead_deliver_its_closes() -> None:
    async def scenario() -> tuple[int, list[bytes], set[int], int]:
        async with Host(warm=1) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_children(zygote).unclaimed) == 1, timeout=20)
            announced = set(_children(zygote).unclaimed)
            out: list[bytes] = []
            with TcpServer(echo_handler) as server:
                tclet = host.launch(
                    CYCLE,
                    argv=[str(server.port)],
                    limits=["sockets=1"],
                    on_stdout=out.append,
                    on_stderr=out.append,
                )
                result = await tclet.wait()
            return result.status, out, announced, worker_pid(tclet)

    status, out, announced, pid = asyncio.run(scenario())
    assert (status, b"".join(out)) == (0, b"closed\n")
    assert pid in announced
