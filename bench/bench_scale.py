"""Scale benchmark: N tclets launched at once on one resident host, beside N plain tclsh.

    .venv/bin/python bench/bench_scale.py                  # N = 50 and 500
    .venv/bin/python bench/bench_scale.py --n 50 --n 500 --n 2000

For each N, in one run, side by side:

- tcletd: a ``tcletd serve --max-workers N+10 --max-sockets 4N+100 --penalty 0`` started here;
  one client sends N ``launch`` frames at once over the control socket (the project's own
  protocol, docs/protocol.md); each tclet (policy ``home``, origin its file's URL, so it may
  connect back to ``localhost``, a name from /etc/hosts: no DNS query) connects to a local line
  server, sends one line and idles;
- tclsh: N ``tclsh`` processes started at once (fork+exec, no isolation) running the same script:
  the floor of the process-per-script model.

Reported: all up (the time from the first launch to the N-th line at the server), the median
time to a tclet's first line, the proportional memory (PSS) per tclet from
``/proc/PID/smaps_rollup``, the host's CPU while all N idle (the host and its zygote, over
5 s), and how many came up within the deadline. A line on stderr shows progress while it runs.
Every process it starts is ended by PID (the host by its process group).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs installed

from tcletd.shared.control import FrameReader, encode, hello

ROOT = Path(__file__).resolve().parents[1]
TCLETD = [sys.executable, "-m", "tcletd"]
SCRIPT = """\
set s [socket localhost [lindex $argv 0]]
fconfigure $s -buffering line
puts $s up
vwait forever
"""
IDLE_SAMPLE = 5.0


class LineServer:
    """Accepts connections on 127.0.0.1 and notes when each one's first line arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self._conns: list[socket.socket] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # reset (the caller's thread) against the serving thread
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(conn)  # those that sent their line are not
                conn.close()
            self._conns.clear()
            self.arrivals = []

    def _serve(self) -> None:
        while not self._stop.is_set():
            events = self._selector.select(0.1)
            with self._lock:
                self._handle(events)

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _ in events:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is self.sock:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        conn, _addr = self.sock.accept()
                        conn.setblocking(False)
                        self._conns.append(conn)
                        self._selector.register(conn, selectors.EVENT_READ)
                continue
            if sock.fileno() < 0:
                continue  # closed by reset since the select
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                self.arrivals.append(time.monotonic())
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)  # one line each is all we wait for

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.reset()
        self.sock.close()


@dataclass
class Result:
    up: int
    all_up: float | None
    first_line: float | None
    pss: float
    idle_cpu: float | None


def progress(text: str) -> None:
    print(f"\r{text:<78}", end="", file=sys.stderr, flush=True)


def wait_up(server: LineServer, n: int, start: float, deadline: float, what: str) -> None:
    while len(server.arrivals) < n and time.monotonic() < deadline:
        progress(f"{what}: {len(server.arrivals)}/{n} up, {time.monotonic() - start:.1f} s")
        time.sleep(0.1)
    progress(f"{what}: {len(server.arrivals)}/{n} up, {time.monotonic() - start:.1f} s")


def summarise(server: LineServer, n: int, start: float, pids: Sequence[int]) -> Result:
    arrivals = sorted(t - start for t in server.arrivals)
    up = len(arrivals)
    return Result(
        up,
        arrivals[-1] if up == n else None,
        statistics.median(arrivals) if arrivals else None,
        pss_per_process(pids),
        None,
    )


def pss_per_process(pids: Sequence[int]) -> float:
    """Mean PSS in MiB over ``pids`` (those that are gone are left out)."""
    values = []
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    values.append(int(line.split()[1]) / 1024)
    return statistics.mean(values) if values else 0.0


@contextlib.contextmanager
def served(sock: Path, n: int, warm: int | None) -> Iterator[subprocess.Popen[bytes]]:
    args = ["--max-workers", str(n + 10), "--max-sockets", str(4 * n + 100), "--penalty", "0"]
    if warm is not None:
        args += ["--warm", str(warm)]
    log = sock.parent / "serve.log"  # a file, not a pipe nobody reads: the host never blocks
    sock.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*TCLETD, "serve", "--socket", str(sock), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not log.read_text().startswith("tcletd: serving on "):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"tcletd serve did not start: {log.read_text()[-500:]!r}")
            time.sleep(0.05)
        if warm:
            # The pool fills once the host is quiet: ~5 ms of forking and preparing a child.
            time.sleep(0.3 + 0.02 * warm)
        yield proc
    finally:
        # The host first: nothing that goes wrong below may leave it and its workers running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(OSError):
            said = log.read_text(errors="replace").splitlines()[1:]  # after "serving on"
            if said:  # what went wrong, if anything did: its last words
                print("\n" + "\n".join(f"serve: {line}" for line in said[-8:]), file=sys.stderr)


def launch_all(sock: Path, script: Path, n: int, port: int) -> list[int]:
    """N launch frames at once on one connection; the pids the host answers with."""
    text = script.read_bytes()
    origin = script.as_uri()
    frame = encode(
        {"op": "launch", "script_name": script.name, "origin": origin, "argv": [str(port)]},
        text,
    )
    pids: list[int] = []
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        # Sent from a thread while this one reads the replies: a client that does not read
        # its replies is paused by the host (and its frames then time out).
        sender = threading.Thread(target=conn.sendall, args=(hello() + frame * n,), daemon=True)
        sender.start()
        reader = FrameReader(1 << 20)
        while len(pids) < n:
            data = conn.recv(1 << 16)
            if not data:
                raise SystemExit(f"the host hung up after {len(pids)} launches")
            for header, _ in reader.feed(data):
                if header.get("event") == "error":
                    raise SystemExit(f"launch refused after {len(pids)}: {header.get('message')}")
                if header.get("event") == "launched":
                    pids.append(int(header["pid"]))
                    if len(pids) % 10 == 0:
                        progress(f"tcletd N={n}: {len(pids)}/{n} launched")
    return pids


def report_missing(sock: Path) -> None:
    """What became of the tclets that did not come up: the ended ones' exit reasons and the
    running ones' states, from the host's ``ps``."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock))
        conn.sendall(hello() + encode({"op": "ps", "all": True}))
        reader = FrameReader(1 << 24)
        rows: list[dict[str, object]] = []
        while True:
            data = conn.recv(1 << 16)
            if not data:
                return
            for header, _ in reader.feed(data):
                if header.get("event") == "ps":
                    rows += header["tclets"]
                    if header.get("more") is True:
                        continue  # a long listing comes in several frames
                    ended = collections.Counter(
                        f"{r['status']} {r['reason']}" for r in rows if r["state"] == "ended"
                    )
                    states = collections.Counter(r["state"] for r in rows)
                    print(f"\nended: {dict(ended)}; states: {dict(states)}", file=sys.stderr)
                    return


def host_cpu(proc: subprocess.Popen[bytes], seconds: float) -> float:
    """Cores the host and its zygote used over ``seconds`` (workers not counted)."""
    host = psutil.Process(proc.pid)
    parts = [host, *[c for c in host.children() if "tcletd.worker.zygote" in " ".join(c.cmdline())]]

    def total() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in parts)

    before, t0 = total(), time.monotonic()
    time.sleep(seconds)
    return (total() - before) / (time.monotonic() - t0)


def run_tcletd(
    n: int, server: LineServer, tmp: Path, timeout: float, warm: int | None = None
) -> Result:
    script = tmp / "idle.tcl"
    script.write_text(SCRIPT)
    with served(tmp / f"run{n}" / "control.sock", n, warm) as proc:
        server.reset()
        start = time.monotonic()
        pids = launch_all(tmp / f"run{n}" / "control.sock", script, n, server.port)
        wait_up(server, n, start, start + timeout, f"tcletd N={n}")
        result = summarise(server, n, start, pids)
        if result.up < n:
            report_missing(tmp / f"run{n}" / "control.sock")
        if result.up == n:
            progress(f"tcletd N={n}: all up; host CPU while idle, {IDLE_SAMPLE:g} s")
            result.idle_cpu = host_cpu(proc, IDLE_SAMPLE)
        progress(f"tcletd N={n}: ending the host")
        return result


def run_tclsh(n: int, server: LineServer, tmp: Path, timeout: float) -> Result:
    script = tmp / "idle.tcl"
    script.write_text(SCRIPT)
    server.reset()
    procs: list[subprocess.Popen[bytes]] = []
    start = time.monotonic()
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    ["tclsh", str(script), str(server.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        wait_up(server, n, start, start + timeout, f"tclsh N={n}")
        return summarise(server, n, start, [p.pid for p in procs])
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            proc.wait()


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, action="append", help="tclets at once (repeatable)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for all to be up")
    parser.add_argument(
        "--warm", type=int, help="the host's warm pool (default: serve's own, 2), filled first"
    )
    args = parser.parse_args(argv)
    sizes = args.n or [50, 500]
    rows = []
    server = LineServer()
    try:
        with tempfile.TemporaryDirectory(prefix="tcletd-scale-") as tmp:
            for n in sizes:
                ours = run_tcletd(n, server, Path(tmp), args.timeout, args.warm)
                theirs = run_tclsh(n, server, Path(tmp), args.timeout)
                rows.append((n, ours, theirs))
    finally:
        server.close()
        print(file=sys.stderr)
    print(
        "| N | tcletd: up | tcletd: all up | tcletd: first line, median | tcletd PSS per tclet "
        "| host CPU while all idle | tclsh: all up | tclsh: first line, median | tclsh PSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, ours, theirs in rows:
        cpu = "-" if ours.idle_cpu is None else f"{ours.idle_cpu:.2f} core"
        print(
            f"| {n} | {ours.up} | {seconds(ours.all_up)} | {seconds(ours.first_line)} "
            f"| {ours.pss:.1f} MiB | {cpu} | {seconds(theirs.all_up)} "
            f"| {seconds(theirs.first_line)} | {theirs.pss:.2f} MiB |"
        )
    warm = "" if args.warm is None else f" --warm {args.warm}"
    print(
        "reproduce: .venv/bin/python bench/bench_scale.py "
        f"{' '.join(f'--n {n}' for n in sizes)}{warm}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
