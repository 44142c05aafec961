"""The embedding API's origin: without one a tclet gets what ``tcletd run -`` gives a script
without a file (the current directory's ``file://`` URL, socket host ``localhost``), so that
``home`` lets it reach this machine's ports above 1024 as the CLI's tclets may; a given origin
that cannot be parsed is refused, naming ``origin``, and nothing is launched. Real host, real
workers, a real TCP listener on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from support.audit import audit_records
from support.net import TcpServer, echo_handler

from tcletd.api import Host
from tcletd.shared.errors import ConfigError
from tcletd.shared.launch import LaunchRequest

pytestmark = pytest.mark.timeout(60)

# `localhost`, the name: under home, $originSocketHost matches the name a file origin gives.
CONNECT = """
set port [lindex $argv 0]
if {[catch {socket localhost $port} s]} { puts denied:$s } else { puts connected; close $s }
"""


def _run(request: LaunchRequest | None, audit: Path, port: int) -> str:
    """Run CONNECT under the default policy (home): by ``Host.launch`` without an origin, or
    by ``launch_request`` as given; its output."""
    out: list[bytes] = []

    async def scenario() -> None:
        async with Host(audit=audit) as host:
            if request is None:
                tclet = host.launch(
                    CONNECT, argv=[str(port)], on_stdout=out.append, on_stderr=out.append
                )
            else:
                tclet = host.launch_request(request, on_stdout=out.append, on_stderr=out.append)
            result = await tclet.wait()
            assert result.status == 0, b"".join(out)

    asyncio.run(scenario())
    return b"".join(out).decode()


def test_the_api_default_origin_is_the_cli_one_and_home_reaches_localhost(
    tmp_path: Path,
) -> None:
    audit = tmp_path / "audit.jsonl"
    with TcpServer(echo_handler) as server:
        assert server.port > 1024
        out = _run(None, audit, server.port)
    assert out == "connected\n", out
    expected = "file://" + quote(os.fsencode(os.getcwd())) + "/"
    assert {r["origin"] for r in audit_records(audit)} == {expected}


def test_no_origin_at_all_is_unknown_and_home_denies_it(tmp_path: Path) -> None:
    """The contrast: a request that carries no origin (a raw run frame may) is unknown, and
    home's rules, which all name the origin, match nothing."""
    audit = tmp_path / "audit.jsonl"
    with TcpServer(echo_handler) as server:
        request = LaunchRequest(script=CONNECT, argv=[str(server.port)])
        out = _run(request, audit, server.port)
    assert out == f"denied:permission denied for host localhost port {server.port}\n", out
    assert {r["origin"] for r in audit_records(audit)} == {"UNKNOWN originURL"}


@pytest.mark.parametrize("origin", ["not a url", "http://", "gopher://example.com/t.tcl"])
def test_an_origin_that_cannot_be_parsed_is_refused_naming_it(origin: str) -> None:
    async def scenario() -> None:
        async with Host() as host:
            with pytest.raises(ConfigError) as info:
                host.launch("puts hi", origin=origin)
            assert info.value.key == "origin"
            assert info.value.message == f"cannot parse origin URL {origin!r}"
            assert host.status() == []  # nothing launched

    asyncio.run(scenario())
