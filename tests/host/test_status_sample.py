"""A status request is answered from the watchdog's last look: it reads nothing from /proc and no
socket's TCP_INFO, however many times it is asked (20,000 asks measured every tclet 20,000 times
and blocked the loop ~15 s)."""

from __future__ import annotations

import asyncio

import pytest
from support.hosting import quiet
from support.net import TcpServer, echo_handler
from support.waiting import until

from tcletd.api import Host
from tcletd.host import quotas, watchdog

# Holds one socket open to PORT and waits.
HOLDS = "set s [socket 127.0.0.1 [lindex $argv 0]]; puts ready; flush stdout; after 30000"


def test_status_reads_no_proc_and_no_tcp_info(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = {"proc": 0, "tcp_info": 0}
    measure, read = watchdog.Meter.measure, quotas._Meter.read

    def counted_measure(self: watchdog.Meter, *, light: bool = False) -> watchdog.Usage:
        reads["proc"] += 1
        return measure(self, light=light)

    def counted_read(self: quotas._Meter) -> None:
        reads["tcp_info"] += 1
        read(self)

    monkeypatch.setattr(watchdog.Meter, "measure", counted_measure)
    monkeypatch.setattr(quotas._Meter, "read", counted_read)

    async def scenario() -> tuple[dict[str, int], list[dict[str, object]]]:
        with TcpServer(echo_handler) as server:
            async with Host() as host:
                out: list[bytes] = []
                tclet = host.launch(
                    HOLDS,
                    policy="trusted",
                    argv=[str(server.port)],
                    on_stdout=out.append,
                    on_stderr=quiet()["on_stderr"],
                )
                await until(lambda: out == [b"ready\n"])
                await until(lambda: reads["proc"] > 0 and reads["tcp_info"] > 0)  # the watchdog
                before = dict(reads)
                for _ in range(2000):
                    entries = host.status()
                # The watchdog goes on looking meanwhile; status itself added nothing.
                during = {k: reads[k] - before[k] for k in reads}
                await tclet.end("test over", 0)
                return during, entries

    during, entries = asyncio.run(scenario())
    (entry,) = entries
    assert entry["sockets"] == 1 and entry["pid"]
    assert during == {"proc": 0, "tcp_info": 0}, during
