"""Warm children connect to the host's ROUTER ahead, each as a routing identity the host chose
(tcletd.host.hub.Hub.reroute): frames under a warm identity no launch claimed reach no tclet,
and nothing is sent to it; once a launch claims the child, its frames are that tclet's alone
(still hello with the launch's token first), none under the tclet's own id is; once the tclet
is gone, the identity reaches nothing again. The host holds a warm child only as the identity it
named for that child's cgroup. A real warm pool's launch is routed that way."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from support.hosting import worker_pid, zygote_of
from support.waiting import until

from tcletd.api import Host
from tcletd.host.hub import Hub, Peer
from tcletd.host.warmpool import WarmChildren
from tcletd.shared import protocol as p
from tcletd.shared import spawn as wire

pytestmark = pytest.mark.timeout(60)

# Seconds a frame the hub must ignore is given to arrive (the check that it did comes after).
SETTLE = 0.2
HELLO = p.encode(p.Hello(token="secret", pid=1))


async def _connected(
    ctx: zmq.Context[zmq.Socket[bytes]], ident: bytes, endpoint: str
) -> zmq.Socket[bytes]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, ident)
    dealer.setsockopt(zmq.LINGER, 0)
    monitor = dealer.get_monitor_socket(zmq.EVENT_CONNECTED)
    dealer.connect(endpoint)
    await until(lambda: monitor.poll(0), timeout=5, message="not connected")
    dealer.disable_monitor()
    monitor.close(linger=0)
    return dealer


async def _settled(hub: Hub) -> None:
    await asyncio.sleep(SETTLE)
    hub.drain()


def _silent(dealer: zmq.Socket[bytes]) -> bool:
    return not dealer.poll(round(SETTLE * 1000))


def test_a_warm_identity_reaches_a_tclet_only_once_claimed_and_only_while_it_lives(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        hub = Hub(f"ipc://{tmp_path}/hub", asyncio.get_running_loop())
        messages: list[object] = []
        violations: list[str] = []
        hub.register(Peer("t1", "secret", messages.append, violations.append))
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            warm = await _connected(ctx, b"~warm-1", hub.endpoint)
            # Unclaimed: even a hello with the right token is nobody's, and nothing reaches it.
            warm.send(HELLO)
            await _settled(hub)
            assert messages == [] and violations == []
            assert hub.send("t1", p.Stop(reason="x", status=1)) is False  # t1 not connected
            assert _silent(warm)

            # Claimed for t1: its hello and requests are t1's, what t1 is sent reaches it.
            assert hub.reroute("t1", b"~warm-1")
            warm.send(HELLO)
            warm.send(p.encode(p.Close(sock=3)))
            await until(lambda: len(messages) == 2, timeout=5, message=lambda: f"{messages}")
            assert messages == [p.Hello(token="secret", pid=1), p.Close(sock=3)]
            assert hub.send("t1", p.Stop(reason="x", status=1))
            assert warm.poll(5000) and p.HOST_DECODER.decode(warm.recv()) == p.Stop(
                reason="x", status=1
            )
            # Nobody under the tclet's own id is t1 any more, and a greeted tclet stays put.
            impostor = await _connected(ctx, b"t1", hub.endpoint)
            impostor.send(p.encode(p.Close(sock=4)))
            await _settled(hub)
            assert len(messages) == 2 and violations == []
            assert not hub.reroute("t1", b"~warm-2")

            # t1 is gone: its warm identity reaches no tclet, and is sent nothing.
            hub.unregister("t1")
            warm.send(p.encode(p.Close(sock=5)))
            await _settled(hub)
            assert len(messages) == 2 and violations == []
            assert hub.send("t1", p.Stop(reason="x", status=1)) is False
            assert _silent(warm)
        finally:
            ctx.destroy(linger=0)
            hub.close()

    asyncio.run(scenario())


def test_a_tclet_cannot_be_rerouted_to_an_identity_in_use(tmp_path: Path) -> None:
    async def scenario() -> None:
        hub = Hub(f"ipc://{tmp_path}/hub", asyncio.get_running_loop())
        try:
            for tclet_id in ("t1", "t2"):
                hub.register(Peer(tclet_id, "secret", print, print))
            assert hub.reroute("t1", b"~warm-1")
            assert not hub.reroute("t2", b"~warm-1")
            assert not hub.reroute("t3", b"~warm-2")  # never registered
        finally:
            hub.close()

    asyncio.run(scenario())


def test_a_warm_launch_is_routed_by_the_identity_its_child_connected_ahead_with() -> None:
    async def scenario() -> None:
        async with Host(warm=2, cgroups=False) as host:
            zygote = zygote_of(host)
            children = zygote.warm_children
            assert children is not None
            await until(lambda: len(children.unclaimed) == 2, timeout=20)
            idents = {pid: child.ident for pid, child in children.unclaimed.items()}
            assert len(set(idents.values())) == 2
            assert all(ident.startswith("~warm-") for ident in idents.values()), idents
            out: list[bytes] = []
            tclet = host.launch("puts up; vwait forever", on_stdout=out.append, on_stderr=print)
            await until(lambda: b"up\n" in b"".join(out), timeout=20, message=lambda: f"{out!r}")
            pid = worker_pid(tclet)
            assert pid in idents, "the launch did not take a warm child"
            assert tclet.worker is not None
            assert tclet.worker.routing == idents[pid].encode()
            await tclet.end("test over")
            await tclet.wait()

    asyncio.run(scenario())


def test_a_warm_child_is_held_only_as_the_identity_the_host_named_for_it() -> None:
    children = WarmChildren()
    procs = ["/nowhere/cgroup.procs"]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def announce(ident: str) -> str | None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.close()
        msg = wire.WarmChild(pid=sleeper.pid, cgroup_procs=procs, ident=ident)
        pidfd = os.pidfd_open(sleeper.pid)
        return children.admit(msg, ours.detach(), pidfd, os.getpid(), lambda _pid: False)

    try:
        children.named(tuple(procs), "~warm-7")
        # Another identity (a tclet's id, one never named, none): let go, not held.
        for ident in ("0123abcd", "~warm-8", ""):
            assert announce(ident) is None
            assert not children.unclaimed
        assert announce("~warm-7") is None
        assert [c.ident for c in children.unclaimed.values()] == ["~warm-7"]
    finally:
        children.let_go()
        sleeper.kill()
        sleeper.wait()
