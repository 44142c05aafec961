"""A host out of descriptors pauses a tclet's server instead of spinning on it.

An accept that fails with EMFILE leaves the peer in the kernel's backlog and the listener
readable, so a loop still watching it called its reader again every turn: the host's loop spun
at 100 % CPU for as long as the shortage lasted. The host of the first test runs in a process of
its own with a small RLIMIT_NOFILE, whose table the script fills while a peer waits on a tclet's
server; its CPU time then is compared with the same host's idle CPU time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from support import ROOT
from support.audit import audit_records
from support.processes import run_bounded

from tcletd.host.quotas import HostTotals, TcletQuotas
from tcletd.host.sockets import ACCEPT_PAUSE, SocketTable
from tcletd.policy.quantities import Quotas

pytestmark = pytest.mark.timeout(90)

SERVER = """
proc took {s a p} { puts "accepted $a"; flush stdout; close $s }
set srv [socket -server took -myaddr 127.0.0.1 0]
puts "port [lindex [fconfigure $srv -sockname] 2]"; flush stdout
vwait forever
"""

# The host's process: a tclet serves; the host measures its own CPU time over a second idle,
# fills its table but for one descriptor, connects to the tclet's server with that one, and
# measures again; then frees its table and waits for the tclet's accept callback.
FULL_TABLE = textwrap.dedent(
    """
    import asyncio, json, os, resource, socket, sys, time
    from tcletd.api import Host

    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    audit, script = sys.argv[1], sys.argv[2]

    async def waited(predicate, seconds):
        deadline = time.monotonic() + seconds
        while not predicate() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return bool(predicate())

    async def cpu_over(seconds):
        start = time.process_time()
        await asyncio.sleep(seconds)
        return time.process_time() - start

    async def main() -> None:
        said = bytearray()
        async with Host(audit=audit, grace=0.5) as host:
            tclet = host.launch(
                script, policy="trusted", on_stdout=said.extend, on_stderr=lambda data: None
            )
            assert await waited(lambda: b"port " in said, 20), said
            port = int(said.split(b"port ")[1].split()[0])
            await asyncio.sleep(0.3)  # past the launch's own work
            idle = await cpu_over(1.0)
            filler = []

            def fill() -> None:
                try:
                    while True:
                        filler.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    pass

            fill()
            os.close(filler.pop())  # no turn of the loop until the client has it
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))  # queued in the server's backlog
            fill()
            full = await cpu_over(1.0)
            early = b"accepted" in said
            filled = len(filler)
            for fd in filler:
                os.close(fd)
            accepted = await waited(lambda: b"accepted" in said, 10)
            client.close()
            await tclet.end("test over")
        print(json.dumps({
            "idle": idle, "full": full, "early": early, "accepted": accepted,
            "filled": filled, "said": said.decode(),
        }))

    asyncio.run(main())
    """
)


def test_a_full_table_pauses_the_server_and_its_peer_waits(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    done = run_bounded([sys.executable, "-c", FULL_TABLE, str(audit), SERVER], timeout=60, cwd=ROOT)
    assert not done.timed_out and done.status == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["filled"] > 0, report
    assert not report["early"], report  # no descriptor for it while the table was full
    # A spinning loop burns the whole second (measured: ~0.99 s against ~0.01 s idle); the
    # paused server wakes the loop a few times (0.1 + 0.2 + 0.4 s...).
    assert report["full"] < report["idle"] + 0.3, report
    # Once descriptors were free, the waiting peer reached the tclet's callback.
    assert report["accepted"], report
    assert "accepted 127.0.0.1" in report["said"], report
    # One record for the shortage, however many times the accept failed.
    errors = [r for r in audit_records(audit, "error") if r["request"] == "accept"]
    assert len(errors) == 1, errors
    assert "Too many open files" in errors[0]["error"], errors


@pytest.mark.parametrize("closing", ["close", "stop_accepting", "release"])
def test_a_server_closed_while_paused_is_not_watched_again(closing: str) -> None:
    async def scenario() -> tuple[bool, list[dict[str, object]]]:
        loop = asyncio.get_running_loop()
        failures: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: failures.append(context))
        table = SocketTable(loop, TcletQuotas(Quotas(), HostTotals(max_workers=1, max_sockets=8)))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        fd = listener.fileno()
        sock_id = table.listen([listener], lambda _id, _sock: None)
        assert table.pause_accepting(sock_id, listener)  # the start of a shortage
        assert not loop.remove_reader(fd)  # unwatched while paused
        if closing == "close":  # the tclet closed it
            table.close(sock_id)
        elif closing == "stop_accepting":  # a byte quota was exceeded
            table.stop_accepting()
        else:  # the tclet ended
            table.release()
        # A new socket may well get the same number: it must not inherit the old reader.
        reused = socket.socket()
        try:
            await asyncio.sleep(ACCEPT_PAUSE * 3)
            return loop.remove_reader(fd), failures
        finally:
            reused.close()

    watched, failures = asyncio.run(scenario())
    assert not watched
    assert failures == []


def test_the_pause_doubles_and_resets_on_success() -> None:
    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        table = SocketTable(loop, TcletQuotas(Quotas(), HostTotals(max_workers=1, max_sockets=8)))
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        fd = listener.fileno()
        sock_id = table.listen([listener], lambda _id, _sock: None)
        starts = [table.pause_accepting(sock_id, listener)]
        await asyncio.sleep(ACCEPT_PAUSE * 1.5)
        assert loop.remove_reader(fd)  # watched again after the first pause
        loop.add_reader(fd, lambda: None)
        starts.append(table.pause_accepting(sock_id, listener))  # the same shortage
        await asyncio.sleep(ACCEPT_PAUSE * 1.5)
        resumed_early = loop.remove_reader(fd)  # the second pause is twice as long
        await asyncio.sleep(ACCEPT_PAUSE)
        assert loop.remove_reader(fd)
        loop.add_reader(fd, lambda: None)
        table.accepted(listener)
        starts.append(table.pause_accepting(sock_id, listener))  # a new shortage
        table.release()
        listener.close()
        return [*starts, resumed_early]

    assert asyncio.run(scenario()) == [True, False, True, False]
