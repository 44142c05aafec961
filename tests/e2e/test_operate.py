"""Operating a resident host's detached tclets from the command line (issue 14): ``tcletd
launch``, ``ps``, ``logs``, ``kill``, ``wait`` and ``events`` against a real ``tcletd serve``,
its log directory, its answers to bad requests on the raw wire, and its SIGTERM.

Every command is a real ``python -m tcletd`` process finding the host by ``$TCLETD_HOST``; the
host is killed by its process group's id after each test (:func:`support.wire.serving`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed
import pytest
from support import EXAMPLES, ROOT
from support.audit import audit_records
from support.processes import Ran, run_bounded, run_tcletd
from support.waiting import wait_until
from support.wire import Serving, connect, exchange, frames_from, serving, tiny_run

from tcletd.shared.control import encode

pytestmark = pytest.mark.timeout(90)

ID = re.compile(r"[0-9a-f]{12}")
PS_KEYS = [
    "id", "state", "policy", "origin", "script", "pid", "sockets", "cpu", "rss", "age",
    "status", "reason",
]  # fmt: skip
PS_COLUMNS = ["id", "state", "policy", "pid", "sockets", "cpu", "rss", "age", "origin", "script"]
FOREVER = "puts started; flush stdout; vwait forever\n"
UNKNOWN = "deadbeef0000"


@dataclass
class Operated:
    """A served host, its audit log and log directory, and a place for scripts."""

    serving: Serving
    sock: Path
    audit: Path
    log_dir: Path
    scripts: Path

    def script(self, text: str, name: str = "t.tcl") -> str:
        path = self.scripts / name
        path.write_text(text)
        return str(path)

    def launch(self, text: str, *extra: str, name: str = "t.tcl") -> str:
        """``tcletd launch`` a script; the id it printed."""
        done = tcletd("launch", *extra, self.script(text, name))
        assert done.status == 0, done
        tclet_id = done.stdout.split()[-1]
        assert ID.fullmatch(tclet_id), done
        return tclet_id

    def ps(self, *extra: str) -> list[dict[str, object]]:
        done = tcletd("ps", "--json", *extra)
        assert done.status == 0 and done.stderr == "", done
        rows = json.loads(done.stdout)
        assert isinstance(rows, list)
        return rows


def tcletd(*args: str, timeout: float = 30.0) -> Ran:
    """A ``tcletd`` command, run as the operator runs it (the host found by $TCLETD_HOST)."""
    return run_tcletd(list(args), timeout=timeout)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Operated]:
    sock, audit, log_dir = tmp_path / "run" / "c.sock", tmp_path / "audit.jsonl", tmp_path / "logs"
    scripts = tmp_path / "scripts"
    log_dir.mkdir()
    scripts.mkdir()
    args = ["--audit", str(audit), "--log-dir", str(log_dir), "--max-workers", "100"]
    with serving(sock, *args) as served:
        monkeypatch.setenv("TCLETD_HOST", str(sock))
        yield Operated(served, sock, audit, log_dir, scripts)


def test_a_detached_launch_outlives_its_client(host: Operated) -> None:
    started = time.monotonic()
    done = tcletd("launch", host.script(FOREVER))
    took = time.monotonic() - started
    assert done.status == 0 and done.stderr == "", done
    tclet_id = done.stdout.split()[-1]
    assert ID.fullmatch(tclet_id), done
    assert took < 10  # it did not wait for a tclet that never ends
    # The client has exited; its tclet is the host's and still runs.
    wait_until(lambda: tcletd("logs", tclet_id).stdout == "started\n")
    (row,) = host.ps()
    assert row["id"] == tclet_id and row["state"] in ("script", "idle", "busy")
    assert row["status"] is None
    assert tcletd("kill", tclet_id).stdout == f"{tclet_id}\n"


def test_an_attached_run_names_its_tclet_in_an_id_file(host: Operated, tmp_path: Path) -> None:
    """``run --host --id-file``: the attached tclet's id, for ps and logs while it runs; the
    embedded run writes the id its audit records carry."""
    id_file = tmp_path / "id"
    script = host.script("puts started; flush stdout; after 300; puts done\n")
    done = tcletd("run", "--id-file", str(id_file), script)
    assert (done.status, done.stdout) == (0, "started\ndone\n"), done
    tclet_id = id_file.read_text().strip()
    assert ID.fullmatch(tclet_id)
    assert tcletd("logs", tclet_id).stdout == "started\ndone\n"
    assert [r["id"] for r in host.ps("--all")] == [tclet_id]
    audit = tmp_path / "embedded.jsonl"
    done = tcletd("run", "--host", "", "--id-file", str(id_file), "--audit", str(audit), script)
    assert done.status == 0, done
    embedded_id = id_file.read_text().strip()
    assert ID.fullmatch(embedded_id) and embedded_id != tclet_id
    assert {r["tclet"] for r in audit_records(audit)} == {embedded_id}


def test_ps_all_and_json(host: Operated) -> None:
    ended = host.launch("exit 3", name="three.tcl")
    assert tcletd("wait", ended).status == 3
    running = host.launch(FOREVER, name="forever.tcl")

    table = tcletd("ps")
    assert table.status == 0, table
    header, *lines = table.stdout.splitlines()
    assert header.split() == [k.upper() for k in PS_COLUMNS]
    assert [line.split()[0] for line in lines] == [running]
    assert lines[0].split()[-1].endswith("forever.tcl")

    every = tcletd("ps", "--all")
    header, *lines = every.stdout.splitlines()
    assert "STATUS" in header.split() and "REASON" in header.split()
    assert [line.split()[0] for line in lines] == [ended, running]
    assert lines[0].split()[1:2] == ["ended"] and " 3 " in lines[0] and " exit " in lines[0]

    rows = host.ps()
    assert [list(r) for r in rows] == [PS_KEYS]
    assert rows[0]["id"] == running and rows[0]["policy"] == "home"
    rows = host.ps("--all")
    assert [list(r) for r in rows] == [PS_KEYS, PS_KEYS]
    assert [(r["id"], r["state"], r["status"], r["reason"]) for r in rows] == [
        (ended, "ended", 3, "exit"),
        (running, rows[1]["state"], None, None),
    ]
    assert str(rows[0]["script"]).endswith("three.tcl")
    assert str(rows[0]["origin"]).startswith("file://")


def test_a_ps_longer_than_a_frame_header_comes_whole(host: Operated) -> None:
    """40 tclets whose origins are ~2 KiB each: their rows pass a frame header's 64 KiB, so the
    host cuts the listing into frames and ``ps`` and the Perl client put them together."""
    deep = Path(*["d" * 250] * 8)
    (host.scripts / deep).mkdir(parents=True)
    path = host.script(FOREVER, str(deep / "long.tcl"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        launched = list(pool.map(lambda _: tcletd("launch", path, timeout=60), range(40)))
    assert [d.status for d in launched] == [0] * 40, [d for d in launched if d.status]
    ids = {d.stdout.split()[-1] for d in launched}
    rows = host.ps()
    assert sum(len(json.dumps(r)) for r in rows) > 64 * 1024
    assert {r["id"] for r in rows} == ids and len(rows) == 40
    assert all(str(r["origin"]).endswith("long.tcl") for r in rows)
    assert len(tcletd("ps").stdout.splitlines()) == 1 + 40  # its header and a line each
    perl = run_bounded(["perl", str(EXAMPLES / "tcletd-client.pl"), str(host.sock), "ps"], 30)
    assert perl.status == 0, perl
    assert {line.split()[0] for line in perl.stdout.splitlines()} == ids


def test_logs_tail_streams_and_follow(host: Operated) -> None:
    tclet_id = host.launch("foreach i {1 2 3 4 5} { puts out$i; puts stderr err$i }")
    assert tcletd("wait", tclet_id).status == 0
    whole = tcletd("logs", tclet_id)
    assert whole.status == 0
    assert whole.stdout == "".join(f"out{i}\n" for i in range(1, 6))
    assert whole.stderr == "".join(f"err{i}\n" for i in range(1, 6))
    tail = tcletd("logs", "--tail", "2", tclet_id[:6])
    assert (tail.status, tail.stdout, tail.stderr) == (0, "out4\nout5\n", "err4\nerr5\n")
    only = tcletd("logs", "--stdout", "--tail", "1", tclet_id)
    assert (only.status, only.stdout, only.stderr) == (0, "out5\n", "")

    slow = host.launch("foreach i {1 2 3 4 5} { puts line$i; flush stdout; after 300 }; exit 0")
    started = time.monotonic()
    followed = tcletd("logs", "--follow", slow)
    assert followed.status == 0, followed
    assert followed.stdout == "".join(f"line{i}\n" for i in range(1, 6))
    assert time.monotonic() - started > 0.5  # it followed the tclet, not just its kept output
    assert host.ps() == []  # it returned because the tclet ended


@pytest.mark.parametrize(("extra", "status"), [((), 143), (("--signal", "KILL"), 137)])
def test_kill_then_wait(host: Operated, extra: tuple[str, ...], status: int) -> None:
    tclet_id = host.launch(FOREVER)
    wait_until(lambda: tcletd("logs", tclet_id).stdout == "started\n")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tcletd", "wait", tclet_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        killed = tcletd("kill", *extra, tclet_id[:8])
        assert (killed.status, killed.stdout, killed.stderr) == (0, f"{tclet_id}\n", "")
        _, err = waiting.communicate(timeout=20)
    finally:
        if waiting.poll() is None:
            os.killpg(waiting.pid, signal.SIGKILL)
            waiting.wait()
    assert waiting.returncode == status
    assert err == b"tcletd: tclet ended: killed by operator\n"
    again = tcletd("wait", tclet_id)  # an ended tclet answers at once
    assert (again.status, again.stderr) == (status, "tcletd: tclet ended: killed by operator\n")
    refused = tcletd("kill", tclet_id)
    assert (refused.status, refused.stderr) == (1, f"tcletd: tclet {tclet_id} has already ended\n")


def test_wait_on_a_tclet_a_limit_ended(host: Operated) -> None:
    tclet_id = host.launch("while 1 {}", "--limit", "cpu=0.2s")
    done = tcletd("wait", tclet_id)
    assert done.status == 137, done
    assert done.stderr.startswith("tcletd: tclet ended: cpu limit"), done
    assert done.stderr.count("\n") == 1


def test_events_and_events_follow_by_id(host: Operated) -> None:
    first = host.launch("exit 0")
    assert tcletd("wait", first).status == 0
    events = tcletd("events")
    assert events.status == 0, events
    records = [json.loads(line) for line in events.stdout.splitlines()]
    mine = [r for r in records if r.get("tclet") == first]
    assert [mine[0]["event"], mine[-1]["event"]] == ["launch", "exit"]

    tclet_id = host.launch("after 1500 {exit 5}")
    follower = subprocess.Popen(
        [sys.executable, "-m", "tcletd", "events", "--follow", "--id", tclet_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert follower.stdout is not None
        followed = []
        for line in follower.stdout:
            followed.append(json.loads(line))
            if followed[-1]["event"] == "exit":
                break
        assert follower.poll() is None  # following: it waits for more
    finally:
        os.killpg(follower.pid, signal.SIGKILL)
        follower.communicate()
    assert {r["tclet"] for r in followed} == {tclet_id}
    assert followed[0]["event"] == "launch"  # what the host held, then live
    assert (followed[-1]["event"], followed[-1]["status"]) == ("exit", 5)


@pytest.mark.parametrize("command", ["logs", "kill", "wait"])
def test_an_unknown_id_is_one_line_and_status_1(host: Operated, command: str) -> None:
    done = tcletd(command, UNKNOWN)
    assert (done.status, done.stdout, done.stderr) == (1, "", f"tcletd: no such tclet: {UNKNOWN}\n")


@pytest.mark.timeout(180)
def test_fifty_concurrent_launches(host: Operated) -> None:
    path = host.script("puts hi; after 200; exit 0")
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        launched = list(pool.map(lambda _: tcletd("launch", path, timeout=60), range(50)))
        assert [d.status for d in launched] == [0] * 50, [d for d in launched if d.status]
        ids = [d.stdout.split()[-1] for d in launched]
        assert len(set(ids)) == 50 and all(ID.fullmatch(i) for i in ids)
        waited = list(pool.map(lambda i: tcletd("wait", i, timeout=60), ids))
    assert [d.status for d in waited] == [0] * 50, [d for d in waited if d.status]
    exits = {r["tclet"]: r["status"] for r in audit_records(host.audit, "exit")}
    assert {i: exits.get(i) for i in ids} == dict.fromkeys(ids, 0)


def test_the_log_directory_has_each_tclets_output(host: Operated) -> None:
    tclet_id = host.launch("puts to-out; puts stderr to-err; exit 0")
    assert tcletd("wait", tclet_id).status == 0
    log = host.log_dir / f"{tclet_id}.log"
    assert log.read_bytes() in (b"to-out\nto-err\n", b"to-err\nto-out\n")
    assert log.stat().st_mode & 0o777 == 0o600


# ---- bad requests on the raw wire ---------------------------------------------------------------


def refused(sock: Path, data: bytes, *, hello: bool = True) -> dict[str, object]:
    """Send ``data`` raw; the host's one error, after which it must close the connection."""
    with connect(sock, hello=hello) as conn:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(data)  # it may refuse before taking all of it
        got = frames_from(conn, "error")
        assert [f["event"] for f in got] == ["error"], got
        assert conn.recv(1 << 16) == b""  # closed (half-closed: it sends nothing more)
    tiny_run(sock)  # the host goes on
    return got[0]


def test_a_first_frame_that_is_not_hello_is_refused(host: Operated) -> None:
    error = refused(host.sock, encode({"op": "ps", "all": False}), hello=False)
    assert "hello" in str(error["message"]) and error["status"] == 2, error


def test_another_protocol_version_is_refused(host: Operated) -> None:
    error = refused(host.sock, encode({"op": "hello", "protocol": 2}), hello=False)
    assert "protocol version 2 is not spoken by this host (it speaks 1)" in str(error["message"])
    assert error["status"] == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json\n", "frame header is not JSON"),
        (b'{"op":"ps","x":"' + b"a" * 70000 + b'"}\n', "frame header longer than 65536 bytes"),
        (b'{"op":"run","size":16777217}\n', "frame size: expected 0..16777216, got 16777217"),
    ],
    ids=["not-json", "header-over-64KiB", "script-over-16MiB"],
)
def test_a_malformed_frame_is_refused(host: Operated, data: bytes, message: str) -> None:
    error = refused(host.sock, data)
    assert str(error["message"]).startswith(message), error


def test_bad_fields_are_named(host: Operated) -> None:
    error = refused(host.sock, encode({"op": "ps", "all": "yes"}))
    assert error == {
        "event": "error",
        "message": "ps: all: expected true or false, got 'yes'",
        "status": 2,
    }
    tclet_id = host.launch(FOREVER)
    error = refused(host.sock, encode({"op": "logs", "id": tclet_id, "tail": -1}))
    assert "tail" in str(error["message"]) and error["status"] == 2, error
    error = refused(host.sock, encode({"op": "kill", "id": tclet_id, "signal": "HUP"}))
    assert "signal" in str(error["message"]) and "'HUP'" in str(error["message"]), error
    assert error["status"] == 2
    # Nothing was done for them: it still runs, with its output whole.
    assert [r["id"] for r in host.ps()] == [tclet_id]
    got = exchange(host.sock, encode({"op": "logs", "id": tclet_id, "tail": 1}), until="eof")
    assert [(f["event"], f.get("payload")) for f in got] == [
        ("stdout", b"started\n"),
        ("eof", None),
    ]


def test_requests_in_progress_on_one_connection_are_bounded(host: Operated) -> None:
    """Each wait holds a task and a place in the tclet's future: a client may not pile up
    more than 16 of them on one connection; the seventeenth is refused."""
    tclet_id = host.launch(FOREVER)
    waits = b"".join(encode({"op": "wait", "id": tclet_id}) for _ in range(17))
    error = refused(host.sock, waits)
    assert error["message"] == "too many requests in progress on this connection (at most 16)"
    assert error["status"] == 2
    assert [r["id"] for r in host.ps()] == [tclet_id]  # the host and the tclet go on
    tiny_run(host.sock)


# ---- the host's end -----------------------------------------------------------------------------


def test_sigterm_ends_the_detached_tclets_and_leaves_no_process(tmp_path: Path) -> None:
    sock, audit = tmp_path / "c.sock", tmp_path / "audit.jsonl"
    with serving(sock, "--audit", str(audit)) as served:
        env = {**os.environ, "TCLETD_HOST": str(sock)}
        ids: list[str] = []
        for text in (FOREVER, "after 600000 {exit 0}", "while 1 { after 50 }"):
            path = tmp_path / f"s{len(ids)}.tcl"
            path.write_text(text)
            done = subprocess.run(
                [sys.executable, "-m", "tcletd", "launch", str(path)],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=30,
            )
            assert done.returncode == 0, done
            ids.append(done.stdout.split()[-1])
        wait_until(lambda: len(psutil.Process(served.pid).children(recursive=True)) >= 4)
        session = psutil.Process(served.pid).children(recursive=True)  # zygote, workers
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.stderr()

        def left() -> list[int]:
            return [p.pid for p in session if p.is_running() and p.status() != "zombie"]

        wait_until(lambda: not left(), timeout=10, message=lambda: f"left behind: {left()}")
        in_session = []  # the host's session: nothing of it lives on (a zombie is dead)
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == served.pid and proc.status() != "zombie":
                    in_session.append((proc.pid, proc.cmdline()[:4]))
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        assert in_session == []
    exits = {r["tclet"]: (r["status"], r["reason"]) for r in audit_records(audit, "exit")}
    assert {i: exits.get(i) for i in ids} == dict.fromkeys(ids, (143, "host closing"))
