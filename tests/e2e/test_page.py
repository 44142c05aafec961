"""``tcletd page``: a web page's ``<embed src=...>`` tclets run at once, as the Tcl plugin ran
them, on an embedded host and on a resident one (``tcletd serve``): their sources resolved
against the page, their tags' attributes in ``embed_args``, their output prefixed by name, the
first non-zero status in page order, signals ending them all."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http import WebServer
from support.processes import Ran, run_tcletd, tcletd_process
from support.wire import serving

pytestmark = pytest.mark.timeout(90)

ALPHA = """\
puts "hello $embed_args(name): color=$embed_args(color) width=$embed_args(width)"
puts "keys: [lsort [array names embed_args]]"
puts -nonewline "no newline at the end"
"""
# Ends after gamma, with a status of its own: the page's status is still this one's (page order).
BETA = """\
puts stderr "warning from $embed_args(src) height=$embed_args(height)"
after 700
puts "beta done"
exit 3
"""
GAMMA = 'puts "gamma from $argv0"\nexit 5\n'
WAITS = "puts ready\nflush stdout\nvwait forever\n"


@pytest.fixture
def web() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


def _page(tmp_path: Path, web: WebServer) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "alpha.tcl").write_text(ALPHA)
    (tmp_path / "sub" / "beta.tcl").write_text(BETA)
    gamma = web.file("/tclets/gamma.tcl", GAMMA)
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><h1>Three tclets</h1>\n"
        '<EMBED SRC="alpha.tcl" Name="alpha" Width=10 color="red &amp; blue">\n'
        '<p>between</p><embed src="sub/beta.tcl" height="5">\n'
        f'<embed src="{gamma}" name="gamma"/>\n'
        "<embed width=3><!-- no src: not a tclet -->\n"
        "</body></html>\n"
    )
    return page


def _lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{name} | ")]


def _check_three(ran: Ran, web: WebServer) -> None:
    assert ran.status == 3, ran
    assert _lines(ran.stdout, "alpha") == [
        "alpha | hello alpha: color=red & blue width=10",
        "alpha | keys: color name src width",
        "alpha | no newline at the end",
    ], ran
    assert _lines(ran.stdout, "sub/beta.tcl") == ["sub/beta.tcl | beta done"], ran
    gamma = web.url("/tclets/gamma.tcl")
    assert _lines(ran.stdout, "gamma") == [f"gamma | gamma from {gamma}"], ran
    assert len(ran.stdout.splitlines()) == 5, ran
    assert _lines(ran.stderr, "sub/beta.tcl") == [
        "sub/beta.tcl | warning from sub/beta.tcl height=5"
    ], ran
    assert web.requests == ["/tclets/gamma.tcl"]


def test_a_page_runs_its_tclets_on_an_embedded_host(tmp_path: Path, web: WebServer) -> None:
    ran = run_tcletd(["page", str(_page(tmp_path, web))], cwd=tmp_path)
    _check_three(ran, web)
    assert ran.stderr.count("\n") == 1, ran


def test_a_page_runs_its_tclets_on_a_resident_host(tmp_path: Path, web: WebServer) -> None:
    page = _page(tmp_path, web)
    sock = tmp_path / "control.sock"
    with serving(sock):
        ran = run_tcletd(["page", "--host", str(sock), str(page)], cwd=tmp_path)
    _check_three(ran, web)


def test_a_web_page_embeds_relative_urls_fetched_by_the_host(web: WebServer) -> None:
    web.file("/tclets/gamma.tcl", GAMMA)
    page = web.file("/pages/index.html", '<embed src="../tclets/gamma.tcl?v=1" name=web>')
    ran = run_tcletd(["page", page])
    assert ran.status == 5, ran
    assert ran.stdout == f"web | gamma from {web.url('/tclets/gamma.tcl?v=1')}\n", ran


def test_a_web_page_may_not_embed_a_local_file(web: WebServer, tmp_path: Path) -> None:
    local = tmp_path / "local.tcl"
    local.write_text("puts local\n")
    page = web.file("/evil.html", f'<embed src="file://{local}">')
    ran = run_tcletd(["page", page])
    assert ran.status == 66 and ran.stdout == "", ran
    assert ran.stderr == (
        f"tcletd: {page}: <embed src='file://{local}'>: a web page may not embed a local file"
        f" (file://{local})\n"
    ), ran


def test_a_page_without_tclets_fails(tmp_path: Path) -> None:
    page = tmp_path / "plain.html"
    page.write_text("<p>no tclets <embed width=1> here</p>\n")
    ran = run_tcletd(["page", str(page)])
    assert (ran.status, ran.stdout) == (66, ""), ran
    assert ran.stderr == f"tcletd: {page}: no <embed src=...> tclets\n", ran


def test_an_unfetchable_tclet_fails_alone_with_66(tmp_path: Path, web: WebServer) -> None:
    (tmp_path / "ok.tcl").write_text("puts fine\n")
    missing = web.url("/missing.tcl")
    page = tmp_path / "page.html"
    page.write_text(f'<embed src="ok.tcl" name=ok><embed src="{missing}" name=gone>')
    ran = run_tcletd(["page", str(page)])
    assert ran.status == 66 and ran.stdout == "ok | fine\n", ran
    assert ran.stderr == f"gone | tcletd: fetch {missing}: HTTP 404 Not Found\n", ran


@pytest.mark.parametrize("resident", [False, True], ids=["embedded", "resident"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_every_tclet(tmp_path: Path, resident: bool, signum: int) -> None:
    (tmp_path / "waits.tcl").write_text(WAITS)
    page = tmp_path / "page.html"
    page.write_text('<embed src="waits.tcl" name=one><embed src="waits.tcl" name=two>')
    sock = tmp_path / "control.sock"
    with contextlib.ExitStack() as stack:
        args = [str(page)]
        if resident:
            stack.enter_context(serving(sock))
            args = ["--host", str(sock), *args]
        proc = stack.enter_context(tcletd_process(["page", *args]))
        assert proc.stdout is not None
        ready = {proc.stdout.readline(), proc.stdout.readline()}
        assert ready == {b"one | ready\n", b"two | ready\n"}
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert out == b"", out
    name = signal.Signals(signum).name
    notes = sorted(err.decode().splitlines())
    assert notes == [f"{n} | tcletd: tclet ended: tcletd got {name}" for n in ("one", "two")]
