"""The worker factory: workers are forks of one zygote, a kill decided before the fork is not
lost, a lost zygote fails what it had and the host takes a new one, and a spec too large for a
datagram still reaches its worker."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.hosting import quiet, worker_pid, zygote_of
from support.system import pid_alive
from support.waiting import until

from tcletd.api import Host
from tcletd.host.bounds import Bounds
from tcletd.host.control import ControlServer
from tcletd.host.factory import COMMAND
from tcletd.host.tclet import Tclet
from tcletd.shared.control import FrameReader, encode, hello
from tcletd.worker.link import EXIT_HOST_GONE

pytestmark = pytest.mark.timeout(60)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _printed(tclet: Tclet, out: list[bytes], text: bytes) -> None:
    await until(lambda: text in b"".join(out), timeout=20, message=lambda: f"{out!r}")


def test_workers_are_forks_of_one_zygote_that_holds_nothing_per_worker() -> None:
    async def scenario() -> None:
        async with Host() as host:
            first = await host.run_tclet("puts warm", **quiet())
            assert first.status == 0
            zygote = zygote_of(host)
            pid = zygote.process.pid
            before = _fds(pid)
            outs = [[] for _ in range(20)]  # type: list[list[bytes]]
            tclets = [
                host.launch("puts up; vwait forever", on_stdout=out.append, on_stderr=print)
                for out in outs
            ]
            for tclet, out in zip(tclets, outs, strict=True):
                await _printed(tclet, out, b"up\n")
                assert _parent(worker_pid(tclet)) == pid
            assert len(os.listdir(f"/proc/{pid}/task")) == 1  # it forks with one thread
            assert _fds(pid) == before  # nothing kept per worker
            for tclet in tclets:
                await tclet.end("test over")
            assert _fds(pid) == before

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["end", "signal"])
def test_a_kill_decided_before_the_fork_reaches_the_worker(how: str) -> None:
    """``end`` (an operator's kill) waits for the fork; a signal sent straight to the worker
    (a protocol violation's SIGKILL) is kept and delivered when the fork comes."""

    async def scenario() -> None:
        async with Host() as host:
            assert (await host.run_tclet("puts warm", **quiet())).status == 0
            zygote = zygote_of(host)
            os.kill(zygote.process.pid, signal.SIGSTOP)
            try:
                tclet = host.launch("puts up; vwait forever", **quiet())
                await asyncio.sleep(0.2)
                assert tclet.worker is not None and tclet.worker.pid is None  # not forked
                if how == "end":
                    ending = asyncio.ensure_future(tclet.end("ended before its fork"))
                else:
                    tclet.worker.signal(signal.SIGKILL)
                await asyncio.sleep(0.1)
            finally:
                os.kill(zygote.process.pid, signal.SIGCONT)
            if how == "end":
                await ending
            result = await asyncio.wait_for(tclet.wait(), 20)
            if how == "end":
                assert result.reason == "ended before its fork", result
            else:
                assert result.status == 137, result
            assert not pid_alive(worker_pid(tclet))

    asyncio.run(scenario())


def test_a_lost_zygote_ends_its_workers_and_the_next_launch_takes_a_new_one() -> None:
    async def scenario() -> None:
        async with Host() as host:
            out: list[bytes] = []
            running = host.launch("puts up; vwait forever", on_stdout=out.append, on_stderr=print)
            await _printed(running, out, b"up\n")
            lost = zygote_of(host)
            os.kill(lost.process.pid, signal.SIGKILL)
            result = await asyncio.wait_for(running.wait(), 20)
            assert result.status == 137, result  # killed with its zygote (its parent-death signal)
            await until(lambda: lost.lost is not None, timeout=10)
            assert "zygote exited" in str(lost.lost)
            again: list[bytes] = []
            after = await asyncio.wait_for(
                host.run_tclet("puts again", on_stdout=again.append, on_stderr=print), 30
            )
            assert (after.status, b"".join(again)) == (0, b"again\n")
            assert zygote_of(host) is not lost

    asyncio.run(scenario())


def test_a_script_larger_than_a_datagram_reaches_its_worker() -> None:
    # ~900 KiB of script: far over a SOCK_SEQPACKET datagram's ~200 KiB (the spec is a memfd).
    body = "".join(f"set v{i} {'x' * 80}\n" for i in range(10_000))
    out: list[bytes] = []

    async def scenario() -> int:
        async with Host() as host:
            result = await host.run_tclet(
                body + "puts [string length $v9999]", on_stdout=out.append, on_stderr=print
            )
            return result.status

    assert len(body) > 800_000
    assert asyncio.run(scenario()) == 0
    assert b"".join(out) == b"80\n"


def test_a_launch_the_lost_zygote_never_answered_ends_with_the_reason() -> None:
    async def scenario() -> None:
        async with Host() as host:
            assert (await host.run_tclet("puts warm", **quiet())).status == 0
            lost = zygote_of(host)
            os.kill(lost.process.pid, signal.SIGSTOP)
            tclet = host.launch("puts never", **quiet())
            await asyncio.sleep(0.1)
            os.kill(lost.process.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
            result = await asyncio.wait_for(tclet.wait(), 20)
            assert result.status == 75, result  # EX_TEMPFAIL: the host could not start it
            assert result.reason.startswith("cannot start its worker: the zygote exited"), result
            assert tclet.worker is not None and tclet.worker.pid is None
            assert not host.status()  # released: no live entry, no registered peer
            assert host._totals.starting == 0  # a failed start is counted off too
            assert host._services is not None and not host._services.hub._peers

    asyncio.run(scenario())


def test_a_client_waiting_for_a_launch_reply_is_not_evicted_as_idle(tmp_path: Path) -> None:
    """A launch's reply waits for the fork; a client that sent its launches and waits for the
    replies is not idle, however long the forks take (the zygote held here past the idle
    deadline, as a machine busy starting thousands of tclets holds it)."""

    async def scenario() -> list[dict[str, Any]]:
        async with Host() as host:
            assert (await host.run_tclet("puts warm", **quiet())).status == 0
            path = tmp_path / "control.sock"
            server = ControlServer(host, path, bounds=Bounds(idle_deadline=0.3))
            await server.start()
            zygote = zygote_of(host)
            reader, writer = await asyncio.open_unix_connection(str(path))
            os.kill(zygote.process.pid, signal.SIGSTOP)
            try:
                launch = encode({"op": "launch", "script_name": "s.tcl"}, b"exit 0")
                writer.write(hello() + launch)
                await asyncio.sleep(1.2)  # four idle deadlines
            finally:
                os.kill(zygote.process.pid, signal.SIGCONT)
            frames, got = FrameReader(1 << 20), []  # type: FrameReader, list[dict[str, Any]]
            while not any(f.get("event") in ("launched", "error") for f in got):
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data, got
                got += [header for header, _ in frames.feed(data)]
            writer.close()
            server.stop_accepting()
            await server.drain()
            return got

    got = asyncio.run(scenario())
    assert [f["event"] for f in got] == ["hello", "launched"], got
    assert isinstance(got[-1]["pid"], int)


def test_a_zygote_whose_host_went_away_unread_exits_quietly() -> None:
    """A host that closes its zygote's socket on its way out (a serve refused at start) before
    reading its Ready: the zygote's next read is ECONNRESET, and no traceback of it may reach
    the user's terminal (the zygote shares the host's stderr). Seen in CI under load."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zygote = subprocess.Popen(
        [*COMMAND, str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        theirs.close()
        ready = select.select([ours], [], [], 60)[0]
        assert ready, "the zygote never said Ready"
        ours.close()  # unread: the zygote's side is reset
        _, stderr = zygote.communicate(timeout=60)
    finally:
        ours.close()
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()
    assert (zygote.returncode, stderr) == (EXIT_HOST_GONE, "")
