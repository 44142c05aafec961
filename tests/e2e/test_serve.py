"""A resident host (``tcletd serve``) and its clients (``tcletd run --host``, ``tcletd status``).

Every test talks to a real ``tcletd serve`` process over its real Unix control socket.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import EXAMPLES
from support.audit import Record, audit_records
from support.processes import Ran, run_tcletd, tcletd_process, wait_serving
from support.system import pid_alive
from support.waiting import wait_until

from tcletd.shared.control import FrameReader, encode, hello

pytestmark = pytest.mark.timeout(60)


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, audit: Path) -> None:
        self.proc = proc
        self.sock = sock
        self.audit = audit

    def run(self, *args: str, stdin: str | None = None, timeout: float = 20.0) -> Ran:
        return run_tcletd(["run", "--host", str(self.sock), *args], stdin=stdin, timeout=timeout)

    def records(self) -> list[Record]:
        return audit_records(self.audit)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    sock = tmp_path / "run" / "control.sock"
    audit = tmp_path / "audit.jsonl"
    with tcletd_process(["serve", "--socket", str(sock), "--audit", str(audit)]) as proc:
        wait_serving(proc)
        yield Served(proc, sock, audit)


def _raw(sock: Path, *frames: bytes, until: str = "") -> list[dict[str, object]]:
    """Send frames on a raw connection; the host's frames until it hangs up (or ``until``)."""
    got: list[dict[str, object]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(15)
        conn.connect(str(sock))
        for frame in (hello(), *frames):
            conn.sendall(frame)
        reader = FrameReader(1 << 24)
        while data := conn.recv(65536):
            for header, _ in reader.feed(data):
                if header.get("event") == "hello":
                    continue  # the host's greeting
                got.append(header)
                if header.get("event") == until:
                    return got
    return got


def _client(
    served: Served, script: Path, stderr: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """A ``tcletd run --host`` client in a session of its own, killed by PID on the way out."""
    return tcletd_process(["run", "--host", str(served.sock), str(script)], stderr=stderr)


def _status(served: Served) -> list[dict[str, object]]:
    (answer,) = _raw(served.sock, encode({"op": "status"}), until="status")
    tclets = answer["tclets"]
    assert isinstance(tclets, list)
    return tclets


def test_a_run_on_the_resident_host_matches_the_embedded_one(served: Served) -> None:
    script = str(EXAMPLES / "hello.tcl")
    remote = served.run(script, "--", "a b", "c")
    local = run_tcletd(["run", script, "--", "a b", "c"])
    assert (remote.status, remote.stdout, remote.stderr) == (
        local.status,
        local.stdout,
        local.stderr,
    )
    assert "Hello from a tclet!" in local.stdout
    launches = [r for r in served.records() if r["event"] == "launch"]
    assert len(launches) == 1 and launches[0]["origin"] == Path(script).as_uri()
    client = launches[0]["client"]  # who asked, as the kernel saw it
    assert isinstance(client, dict) and client["uid"] == os.getuid() and client["pid"] > 0


def test_exit_status_stdin_stderr_and_embed_args(served: Served) -> None:
    ran = served.run(
        "--arg",
        "Color=red",
        "-",
        stdin='puts "c=$embed_args(color)"; puts stderr oops; exit 3',
    )
    assert ran.status == 3
    assert ran.stdout == "c=red\n"
    assert ran.stderr == "oops\n"


def test_bad_requests_say_what_was_wrong_and_launch_nothing(served: Served) -> None:
    hello = str(EXAMPLES / "hello.tcl")
    unknown = served.run("--policy", "nope", hello)
    assert unknown.status == 2
    assert 'unknown policy "nope"' in unknown.stderr
    bad_limit = served.run("--limit", "cpu=zz", hello)
    assert bad_limit.status == 2
    assert "limits.cpu" in bad_limit.stderr
    audit = served.run("--audit", "/tmp/x.jsonl", hello)
    assert audit.status == 2 and "--audit" in audit.stderr
    missing = served.run("/nonexistent/x.tcl")
    assert missing.status == 66
    assert not [r for r in served.records() if r["event"] == "launch"]
    assert _status(served) == []


def test_malformed_frames_get_an_error_and_the_host_goes_on(served: Served) -> None:
    cases = [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "run", "size": -1}\n', "frame size"),
        (b'{"op": "run", "size": "9"}\n', "frame size"),
        (b'{"op": "nope"}\n', "unknown op 'nope'"),
        (encode({"op": "run", "argv": "a b"}, b"puts hi"), "argv: expected list"),
        (encode({"op": "run", "argv": [1]}, b"puts hi"), "argv: expected a list of strings"),
        (encode({"op": "run", "embed_args": {"a": 1}}, b"puts hi"), "embed_args"),
        (encode({"op": "run", "policy": 7}, b"puts hi"), "policy: expected str"),
        (encode({"op": "run"}, b"\xff\xfe"), "script: not UTF-8"),
        (encode({"op": "signal", "signum": 2}), "no tclet is running"),
        (b"x" * (64 * 1024 + 2), "frame header longer than"),
    ]
    for frame, expected in cases:
        got = _raw(served.sock, frame)
        assert got and got[-1]["event"] == "error", (frame[:40], got)
        assert expected in str(got[-1]["message"]), (expected, got)
    assert not [r for r in served.records() if r["event"] == "launch"]
    ok = served.run("-", stdin="puts still-serving")
    assert (ok.status, ok.stdout) == (0, "still-serving\n")
    assert served.proc.poll() is None


def test_a_signal_to_the_client_ends_its_tclet_as_the_embedded_host_would(
    served: Served, tmp_path: Path
) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 30000 {exit 0}\n")
    with _client(served, script, subprocess.PIPE) as client:
        assert client.stdout is not None and client.stderr is not None
        assert client.stdout.readline() == b"ready\n"
        client.send_signal(signal.SIGUSR1)
        line = client.stderr.readline().decode()
        assert line.startswith("tcletd: tclet ") and " policy home " in line, line
        client.send_signal(signal.SIGTERM)
        _, rest = client.communicate(timeout=10)
    assert client.returncode == 143
    assert rest.decode() == "tcletd: tclet ended: tcletd got SIGTERM\n"


def test_a_client_that_goes_away_takes_its_tclet_with_it(served: Served, tmp_path: Path) -> None:
    script = tmp_path / "sleepy.tcl"
    script.write_text("puts ready; flush stdout; after 30000 {exit 0}\n")
    with _client(served, script, subprocess.DEVNULL) as client:
        assert client.stdout is not None
        assert client.stdout.readline() == b"ready\n"
        (entry,) = _status(served)
        pid = entry["pid"]
        assert isinstance(pid, int) and pid_alive(pid)
        client.kill()  # SIGKILL: the client says nothing, its connection just closes
        client.wait(timeout=10)
    wait_until(lambda: not pid_alive(pid))
    wait_until(lambda: _status(served) == [])
    # The host releases a tclet (status) a moment before it writes the exit record.
    wait_until(lambda: any(r["event"] == "exit" for r in served.records()))
    exits = [r for r in served.records() if r["event"] == "exit"]
    assert exits[-1]["reason"] == "client went away", exits


def test_a_client_that_stops_reading_pushes_back_on_its_tclet(served: Served) -> None:
    """The host stops reading the tclet's output instead of buffering it for a stalled client:
    its output count stops growing while the tclet could write without end."""
    flood = encode(
        {"op": "run", "policy": "trusted", "limits": ["output_bytes=1GiB"]},
        b"set line [string repeat x 999]\nwhile 1 {puts $line}\n",
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        conn.connect(str(served.sock))
        conn.sendall(hello() + flood)
        # Not reading: unpaced, the tclet would write hundreds of MiB a second. Its output count
        # stops growing (the host stopped reading it)...
        counts: list[object] = []

        def stalled() -> bool:
            (entry,) = _status(served)
            counts.append(entry["output"])
            return len(counts) >= 2 and counts[-1] == counts[-2] != 0

        wait_until(stalled, 15, interval=0.25, message=lambda: f"output counts: {counts}")
        (before,) = _status(served)
        time.sleep(1.0)  # ... and stays put for a second
        (after,) = _status(served)
        assert conn.recv(65536)  # its output was on its way: the stall is the client's
    assert isinstance(before["output"], int) and before["output"] < 8 * 2**20, before
    assert after["output"] == before["output"], (before, after)
    assert after["state"] == "busy", after  # its writes block; its event loop stopped beating
    wait_until(lambda: _status(served) == [])  # and it ends with its client


def test_stopping_the_host_ends_its_tclets_and_tells_their_clients(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with tcletd_process(["serve", "--socket", str(sock)]) as server:
        wait_serving(server)
        script = tmp_path / "forever.tcl"
        script.write_text("puts ready; flush stdout; vwait forever\n")
        with tcletd_process(["run", "--host", str(sock), str(script)]) as client:
            assert client.stdout is not None
            assert client.stdout.readline() == b"ready\n"
            server.send_signal(signal.SIGTERM)
            _, err = client.communicate(timeout=10)
            assert server.wait(timeout=10) == 0
    assert client.returncode == 143
    assert err.decode() == "tcletd: tclet ended: host closing\n"
    assert not sock.exists()


LOUD = 'for {set i 0} {$i < 100000} {incr i} {puts "line $i"}\n'


def _into_a_closed_pipe(command: list[str]) -> tuple[int, bytes, bytes]:
    """Run ``command`` with its stdout read for two lines and then closed (``| head -2``)."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        head = proc.stdout.readline() + proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        return proc.wait(timeout=20), head, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("resident", [False, True], ids=["embedded", "resident"])
def test_a_closed_stdout_is_a_write_error_in_the_tclet_as_in_tclsh(
    served: Served, tmp_path: Path, resident: bool
) -> None:
    script = tmp_path / "loud.tcl"
    script.write_text(LOUD)
    host = ["--host", str(served.sock)] if resident else []
    limit = ["--limit", "output_bytes=100MiB"]
    status, head, err = _into_a_closed_pipe(
        [sys.executable, "-m", "tcletd", "run", *host, *limit, str(script)]
    )
    assert head == b"line 0\nline 1\n"
    assert status == 1, err
    assert err.startswith(b'error writing "stdout": broken pipe\n'), err
    assert b"Traceback" not in err and b"Exception" not in err, err
    if resident:
        assert served.proc.poll() is None
        (exited,) = [r for r in served.records() if r["event"] == "exit"]
        assert exited["status"] == 1


def test_a_full_host_says_so_and_launches_nothing(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    script = tmp_path / "forever.tcl"
    script.write_text("puts ready; flush stdout; vwait forever\n")
    with tcletd_process(["serve", "--socket", str(sock), "--max-workers", "1"]) as server:
        wait_serving(server)
        served = Served(server, sock, tmp_path / "none.jsonl")
        with _client(served, script, subprocess.DEVNULL) as first:
            assert first.stdout is not None
            assert first.stdout.readline() == b"ready\n"
            second = served.run("-", stdin="puts never")
            assert second.status == 75, second
            assert second.stderr == "tcletd: too many tclets on this host (limit 1)\n", second
            assert second.stdout == ""
            assert len(_status(served)) == 1


def test_one_host_per_socket_and_a_stale_socket_is_taken_over(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: a host that died
    with tcletd_process(["serve", "--socket", str(sock)]) as first:
        wait_serving(first)
        second = run_tcletd(["serve", "--socket", str(sock)], timeout=20)
        assert second.status == 73, second  # EXIT_IN_USE
        assert f"{sock} is in use by a tcletd host (pid {first.pid})" in second.stderr
        assert first.poll() is None


def test_no_host_there_is_a_clear_error() -> None:
    ran = run_tcletd(["run", "--host", "/nonexistent/tcletd.sock", "examples/hello.tcl"])
    assert ran.status == 69
    assert "cannot reach a tcletd host at /nonexistent/tcletd.sock" in ran.stderr
    status = run_tcletd(["status", "--host", "/nonexistent/tcletd.sock"])
    assert status.status == 69


@pytest.mark.skipif(
    os.getuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
    reason="needs root to act as another user, and a Python that user can run",
)
def test_another_user_is_refused_by_its_credentials() -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="tcletd-test-"))
    try:
        sock = run_dir / "control.sock"
        with tcletd_process(["serve", "--socket", str(sock)]) as server:
            wait_serving(server)
            # Open the way on the file system, so that only SO_PEERCRED stands between them.
            run_dir.chmod(0o755)
            sock.chmod(0o666)
            probe = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1])\n"
                's.sendall(b\'{"op":"status"}\\n\'); print(s.recv(4096).decode())\n'
            )
            ran = subprocess.run(
                ["/usr/bin/python3", "-c", probe, str(sock)],
                user=65534,
                capture_output=True,
                timeout=20,
                cwd="/",
            )
            mine = _raw(sock, encode({"op": "status"}), until="status")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert b"permission denied: uid 65534" in ran.stdout, ran
    assert b'"tclets"' not in ran.stdout
    assert mine == [{"event": "status", "tclets": []}]
