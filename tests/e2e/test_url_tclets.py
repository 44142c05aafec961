"""``tcletd run URL``: a tclet fetched from the web, as the Tcl plugin ran them, on an embedded
host and on a resident one (``tcletd run --host``), against real web servers on 127.0.0.1.

The fetch rules' limits (size, redirects, https only downwards refused, status, time) are
tested at the host level with small limits (tests/host/test_fetch_rules.py); here: what a user
sees, the exit status 66 and the one line naming the URL and the cause."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.audit import audit_records
from support.http import WebServer, self_signed
from support.processes import Ran, run_tcletd
from support.wire import serving

pytestmark = pytest.mark.timeout(90)

# Connects back to the server it came from (home: the origin's host, ports above 1024) and
# prints the status line of what it asked there.
CALLS_HOME = """\
puts "running as $argv0"
set s [socket 127.0.0.1 {port}]
puts $s "GET /called-home HTTP/1.0\\n"
flush $s
puts "home says: [gets $s]"
close $s
"""


@pytest.fixture
def web() -> Iterator[WebServer]:
    with WebServer() as server:
        yield server


def _one_line_failure(ran: Ran, url: str, cause: str) -> None:
    assert ran.status == 66, ran
    assert ran.stdout == "", ran
    assert ran.stderr == f"tcletd: fetch {url}: {cause}\n", ran


def _calls_home(web: WebServer) -> str:
    """The start URL of a tclet served after a redirect; its script calls its server back."""
    web.file("/tclets/home.tcl", CALLS_HOME.format(port=web.port))
    return web.redirect("/start", "/tclets/home.tcl")


def test_a_url_runs_with_the_final_url_as_origin(web: WebServer, tmp_path: Path) -> None:
    start = _calls_home(web)
    audit = tmp_path / "audit.jsonl"
    ran = run_tcletd(["run", "--audit", str(audit), start])
    assert ran.status == 0, ran
    assert ran.stdout == f"running as {start}\nhome says: HTTP/1.0 404 Not Found\n", ran
    assert web.requests == ["/start", "/tclets/home.tcl", "/called-home"]
    (launch,) = audit_records(audit, "launch")
    assert launch["origin"] == web.url("/tclets/home.tcl"), launch
    (decision,) = audit_records(audit, "decision")
    assert decision["decision"] == "allowed", decision


def test_without_a_url_origin_the_same_script_may_not_call_that_server(
    web: WebServer, tmp_path: Path
) -> None:
    """The control for the test above: run from a file (a file: origin, home: localhost only),
    the script's connect to 127.0.0.1 is denied, so the allowed one was the URL origin's doing."""
    script = tmp_path / "home.tcl"
    script.write_text(CALLS_HOME.format(port=web.port))
    ran = run_tcletd(["run", str(script)])
    assert ran.status == 1 and "/called-home" not in web.requests, ran


def test_six_redirects_fail(web: WebServer) -> None:
    web.file("/t.tcl", "puts hi\n")
    for n in range(6):
        web.redirect(f"/r{n}", f"/r{n + 1}" if n < 5 else "/t.tcl")
    url = web.url("/r0")
    ran = run_tcletd(["run", url])
    _one_line_failure(ran, url, f"more than 5 redirects (the last to {web.url('/t.tcl')})")


def test_a_two_mib_script_fails(web: WebServer) -> None:
    url = web.file("/big.tcl", "# filler\n" * ((2 << 20) // 9 + 1))
    _one_line_failure(run_tcletd(["run", url]), url, "larger than 1 MiB")


def test_a_missing_script_fails(web: WebServer) -> None:
    url = web.url("/missing.tcl")
    _one_line_failure(run_tcletd(["run", url]), url, "HTTP 404 Not Found")


def test_https_is_verified_and_never_redirected_down_to_http(
    web: WebServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = self_signed(tmp_path)
    with WebServer(cert) as tls:
        url = tls.file("/t.tcl", "puts secure\n")
        ran = run_tcletd(["run", url])
        _one_line_failure(ran, url, "certificate not accepted: self-signed certificate")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))  # the tcletd process trusts it now
        ran = run_tcletd(["run", url])
        assert (ran.status, ran.stdout) == (0, "secure\n"), ran
        plain = web.file("/t.tcl", "puts plain\n")
        down = tls.redirect("/down", plain)
        ran = run_tcletd(["run", down])
        cause = f"refused a redirect from {down} down to {plain} (https to http)"
        _one_line_failure(ran, down, cause)
        assert "/t.tcl" not in web.requests


def test_a_url_given_as_origin_by_the_operator_wins(web: WebServer, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    url = web.file("/t.tcl", "puts hi\n")
    ran = run_tcletd(["run", "--audit", str(audit), "--origin", "http://127.0.0.1:1/", url])
    assert (ran.status, ran.stdout) == (0, "hi\n"), ran
    (launch,) = audit_records(audit, "launch")
    assert launch["origin"] == "http://127.0.0.1:1/", launch


# ---- on a resident host (needs the protocol's hello and the ops' Host.prepare) ----------------


def test_a_url_runs_on_a_resident_host(web: WebServer, tmp_path: Path) -> None:
    start = _calls_home(web)
    sock = tmp_path / "control.sock"
    audit = tmp_path / "audit.jsonl"
    with serving(sock, "--audit", str(audit)):
        ran = run_tcletd(["run", "--host", str(sock), start])
        assert ran.status == 0, ran
        assert ran.stdout == f"running as {start}\nhome says: HTTP/1.0 404 Not Found\n", ran
        missing = web.url("/missing.tcl")
        ran = run_tcletd(["run", "--host", str(sock), missing])
        _one_line_failure(ran, missing, "HTTP 404 Not Found")
    assert web.requests == ["/start", "/tclets/home.tcl", "/called-home", "/missing.tcl"]
    (launch,) = audit_records(audit, "launch")
    assert launch["origin"] == web.url("/tclets/home.tcl"), launch


# A fake resident host in the client's own process: it prints the run frame's header, then
# the client's heavy imports are listed.
FAKE_HOST_CLIENT = """\
import json, socket, sys, threading
from tcletd.cli.main import main
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen()
def serve():
    conn, _ = srv.accept()
    got = b""
    while b'"op":"run"' not in got:
        got += conn.recv(65536)
    print(got.decode().splitlines()[-1], flush=True)
    conn.close()
thread = threading.Thread(target=serve)
thread.start()
main(["run", "--host", sys.argv[1], "http://127.0.0.1:9/t.tcl"])
thread.join()
heavy = ("asyncio", "msgspec", "zmq", "tcletd.host.fetch", "urllib.request")
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


def test_the_resident_host_client_sends_a_url_and_imports_no_more(tmp_path: Path) -> None:
    """``tcletd run --host URL`` sends the URL with no payload, and neither fetches nor imports
    the fetcher (nor asyncio, msgspec, zmq): the host does the fetching."""
    done = subprocess.run(
        [sys.executable, "-c", FAKE_HOST_CLIENT, str(tmp_path / "fake.sock")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done
    header = json.loads(lines[0])
    assert header["op"] == "run" and header["url"] == "http://127.0.0.1:9/t.tcl", header
    assert header["origin"] is None and "size" not in header, header  # no script sent
    assert json.loads(lines[1]) == [], done
