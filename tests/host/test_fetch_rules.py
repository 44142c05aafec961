"""Fetching a tclet's script from a URL (``tcletd.host.fetch``) against real web servers on
127.0.0.1: the limits given as keywords (small here, so that the tests stay fast), the
redirect, status, encoding and certificate rules, the bound on fetches at once, and
``Host.prepare`` turning a URL into a script whose origin is the URL it came from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http import WebServer, self_signed

from tcletd.api import Host, LaunchRequest
from tcletd.host.fetch import CONCURRENT, FetchFailed, fetch_blocking, fetch_script

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def web() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


def _failure(url: str, **limits: float) -> str:
    with pytest.raises(FetchFailed) as caught:
        asyncio.run(fetch_script(url, **limits))  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.startswith(f"fetch {url}: "), message
    assert "\n" not in message and caught.value.exit_status == 66, message
    return message


def _chain(web: WebServer, hops: int) -> str:
    """A URL ``hops`` redirects away from /t.tcl (absolute, relative and 301/307/308 alike)."""
    web.file("/t.tcl", "puts hi\n")
    for n in range(hops):
        to = "/t.tcl" if n == hops - 1 else f"/hop{n + 1}"
        web.redirect(f"/hop{n}", web.url(to) if n % 2 else to, (302, 301, 307, 308)[n % 4])
    return web.url("/hop0")


def test_five_redirects_are_followed_and_the_final_url_is_kept(web: WebServer) -> None:
    fetched = asyncio.run(fetch_script(_chain(web, 5)))
    assert (fetched.text, fetched.url) == ("puts hi\n", web.url("/t.tcl"))


def test_a_sixth_redirect_fails(web: WebServer) -> None:
    message = _failure(_chain(web, 6))
    assert "more than 5 redirects" in message, message
    assert web.requests.count("/t.tcl") == 0


def test_max_redirects_is_a_keyword(web: WebServer) -> None:
    assert "more than 1 redirects" in _failure(_chain(web, 2), max_redirects=1)


def test_a_body_of_max_bytes_is_taken_and_one_more_is_refused(web: WebServer) -> None:
    web.file("/exact", b"#" * 1000)
    assert asyncio.run(fetch_script(web.url("/exact"), max_bytes=1000)).text == "#" * 1000
    web.file("/over", b"#" * 1001)
    assert _failure(web.url("/over"), max_bytes=1000).endswith(": larger than 1000 bytes")


def test_a_large_body_without_a_length_is_cut_off_at_the_limit(web: WebServer) -> None:
    web.file("/big", b"#" * (2 << 20), no_length=True)
    assert _failure(web.url("/big")).endswith(": larger than 1 MiB")


def test_a_server_that_never_answers_times_out(web: WebServer) -> None:
    started = time.monotonic()
    message = _failure(web.silent("/never"), timeout=0.5)
    assert message.endswith(": no complete answer in time"), message
    assert time.monotonic() - started < 3


def test_the_blocking_fetch_keeps_its_deadline_against_a_slow_body(web: WebServer) -> None:
    """A server that sends a byte every 50 ms never lets a socket timeout expire; the blocking
    core (what ``tcletd page`` fetches a page with) still stops at its total timeout."""
    url = web.file("/slow", b"#" * 200, drip=0.05)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r": no complete answer in time$"):
        fetch_blocking(url, timeout=1.0)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("status", "reason"), [(404, "Not Found"), (500, "Internal Server")])
def test_a_status_other_than_2xx_fails_with_its_code(
    web: WebServer, status: int, reason: str
) -> None:
    web.file("/bad", "oops", status=status)
    assert f": HTTP {status} {reason}" in _failure(web.url("/bad"))


def test_a_body_that_is_not_utf8_fails(web: WebServer) -> None:
    web.file("/latin1", "puts caf\xe9\n".encode("latin-1"))
    assert _failure(web.url("/latin1")).endswith(": not UTF-8 (byte 8)")


def test_only_http_and_https_are_fetched(web: WebServer) -> None:
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/t.tcl"):
        assert "expected an http:// or https:// URL" in _failure(url)
    web.redirect("/to-file", "file:///etc/passwd")
    assert "expected an http:// or https:// URL" in _failure(web.url("/to-file"))


def test_https_needs_a_trusted_certificate_and_never_goes_down_to_http(
    web: WebServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = self_signed(tmp_path)
    with WebServer(cert) as tls:
        url = tls.file("/t.tcl", "puts secure\n")
        assert "certificate not accepted" in _failure(url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
        assert asyncio.run(fetch_script(url)).text == "puts secure\n"
        down = web.file("/t.tcl", "puts plain\n")
        message = _failure(tls.redirect("/down", down))
        assert f"refused a redirect from {tls.url('/down')} down to {down}" in message
        assert "/t.tcl" not in web.requests


def test_fetches_at_once_are_bounded(web: WebServer) -> None:
    url = web.file("/slowish", b"# " * 5, drip=0.05)

    async def many() -> list[str]:
        fetched = await asyncio.gather(*(fetch_script(url) for _ in range(3 * CONCURRENT)))
        return [f.text for f in fetched]

    assert asyncio.run(many()) == ["# " * 5] * (3 * CONCURRENT)
    assert web.most_in_flight == CONCURRENT


def test_prepare_makes_the_final_url_the_origin_and_runs_the_script(web: WebServer) -> None:
    web.file("/t.tcl", 'puts "argv0=$argv0"\n')
    start = web.redirect("/start", "/t.tcl")
    out: list[bytes] = []

    async def scenario() -> tuple[LaunchRequest, LaunchRequest, int]:
        async with Host() as host:
            ready = await host.prepare(LaunchRequest(script="", url=start))
            kept = await host.prepare(
                LaunchRequest(script="", url=start, origin="http://127.0.0.1:1/")
            )
            tclet = host.launch_request(ready, on_stdout=out.append, on_stderr=out.append)
            return ready, kept, (await tclet.wait()).status

    ready, kept, status = asyncio.run(scenario())
    assert (ready.script, ready.script_name) == ('puts "argv0=$argv0"\n', start)
    assert (ready.origin, ready.url) == (web.url("/t.tcl"), None)
    assert kept.origin == "http://127.0.0.1:1/"
    assert (status, b"".join(out)) == (0, f"argv0={start}\n".encode())


def test_prepare_raises_fetch_failed_naming_the_url(web: WebServer) -> None:
    async def scenario() -> None:
        async with Host() as host:
            await host.prepare(LaunchRequest(script="", url=web.url("/missing")))

    with pytest.raises(FetchFailed, match=r"^fetch http://127\.0\.0\.1:\d+/missing: HTTP 404"):
        asyncio.run(scenario())
