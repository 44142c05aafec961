"""Socket grants: latency of one, and how many per second one host gives K tclets at once.

    .venv/bin/python bench/bench_grants.py                 # 5 rounds, K = 4 and 8
    .venv/bin/python bench/bench_grants.py --quick         # 2 rounds, short windows
    .venv/bin/python bench/bench_grants.py --k 1,4,8 --seconds 3 --json out.json

A grant is a tclet's ``socket host port`` from request to usable channel: the worker asks the
host over ZeroMQ, the host checks quotas and policy, audits, connects and hands the descriptor
back (``SCM_RIGHTS``), the worker makes it a native Tcl channel. Two figures, each beside
tclsh doing the same thing natively:

- **latency**: p50 and p90 of ``socket`` over N connects in one tclet (each then reads to the
  server's close and closes, untimed), measured inside the script with ``clock microseconds``,
  on the embedded host (``tcletd run``) and on a resident one (``tcletd serve`` + ``tcletd run
  --host``). Target: p50 <= 250 us.
- **grants/s**: K tclets on one resident host (K plain tclsh processes for the native column)
  connect, read to the server's end of file and close, in a loop, for a window of S seconds
  that starts at the same wall-clock instant in all of them (each sleeps until then, so
  launches stay out of the window); the figure is the sum of their counts over S. The host's
  own CPU over the window is reported as microseconds per grant. Target: >= 10,000 grants/s.

The server (another process) accepts and closes at once, on 16 ports. This machine is shared
and noisy: read the medians of several rounds, and compare the columns of one run rather than
runs with each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchproc import REPO, background, resident_host, run_bounded  # bench/ on sys.path

HOST = "127.0.0.1"
# The window's start is this far after the driver asks: launches (K tclets on a loaded 2-core
# machine take up to a second or two) must be over before it.
LEAD_SECONDS = 3.0
SERVER_PORTS = 16

# The server closes first and the client reads to that end of file before it closes: a client
# that closes first leaves its end in TIME_WAIT, and with tens of thousands of those the kernel's
# search for a free local port took tclsh from 60 us to 1-9 ms a connect (measured here), while
# tcletd's host, which closes its duplicate later, was spared. The loops also go round several
# server ports.
LATENCY_TCL = r"""
lassign $argv host ports n
set times {}
for {set i 0} {$i < $n} {incr i} {
    set port [lindex $ports [expr {$i % [llength $ports]}]]
    set t0 [clock microseconds]
    set s [socket $host $port]
    set t1 [clock microseconds]
    lappend times [expr {$t1 - $t0}]
    read $s
    close $s
}
set times [lsort -integer $times]
puts "RESULT p50 [lindex $times [expr {$n / 2}]]"
puts "RESULT p90 [lindex $times [expr {($n * 9) / 10}]]"
"""

# Sleep until START (epoch ms), then connect, read to the server's close and close until
# START + MS; the count, and how late the loop began (late: the lead was too short for launches).
LOOP_TCL = r"""
lassign $argv host ports start ms
set count [llength $ports]
set now [clock milliseconds]
if {$now < $start} {
    after [expr {$start - $now}]
}
set late [expr {[clock milliseconds] - $start}]
set end [expr {$start + $ms}]
set n 0
while {[clock milliseconds] < $end} {
    set s [socket $host [lindex $ports [expr {$n % $count}]]]
    read $s
    close $s
    incr n
}
puts "RESULT grants $n"
puts "RESULT late_ms $late"
"""


def serve() -> int:
    """Accept and close as fast as possible on SERVER_PORTS ports of 127.0.0.1; print them; stop
    at stdin EOF."""
    listeners = [socket.create_server((HOST, 0), backlog=4096) for _ in range(SERVER_PORTS)]
    selector = selectors.DefaultSelector()
    for listener in listeners:
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ)

    def accept_loop() -> None:
        while True:
            for key, _ in selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sock.accept()[0].close()

    print(" ".join(str(s.getsockname()[1]) for s in listeners), flush=True)
    threading.Thread(target=accept_loop, daemon=True).start()
    sys.stdin.read()
    return 0


@contextlib.contextmanager
def accept_server() -> Iterator[str]:
    """The server's ports, as one Tcl list."""
    with background([sys.executable, __file__, "--serve"]) as line:
        ports = line.split()
        if len(ports) != SERVER_PORTS or not all(p.isdigit() for p in ports):
            raise RuntimeError(f"accept server did not start: {line!r}")
        yield " ".join(ports)


def peer_pid(control: str) -> int:
    """The pid of the process serving the Unix socket ``control`` (to read its CPU time)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(control)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def results(stdout: str) -> dict[str, float]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "RESULT":
            out[parts[1]] = float(parts[2])
    return out


# Every runtime takes "SCRIPT -- ARGS" except tclsh ("SCRIPT ARGS").
OPTIONS = ["--policy", "trusted", "--limit", "connects_per_second=1000000"]


def tcletd_command() -> list[str]:
    # ``python -m`` from the repository: the tree under test, whatever is installed.
    return [sys.executable, "-m", "tcletd"]


def command(runtime: str, control: str | None, script: Path, argv: Sequence[str]) -> list[str]:
    if runtime == "tclsh":
        return [shutil.which("tclsh") or "tclsh", str(script), *argv]
    host = ["--host", control] if runtime == "resident" and control else []
    return [*tcletd_command(), "run", *host, *OPTIONS, str(script), "--", *argv]


def latency(
    runtime: str, control: str | None, script: Path, ports: str, n: int
) -> tuple[float, float] | str:
    proc = run_bounded(command(runtime, control, script, [HOST, ports, str(n)]), 120)
    got = results(proc.stdout)
    if proc.returncode != 0 or "p50" not in got:
        return f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
    return got["p50"], got["p90"]


def throughput(
    runtime: str,
    control: str | None,
    script: Path,
    ports: str,
    k: int,
    seconds: float,
    host_pid: int | None,
) -> tuple[float, float | None] | str:
    """(grants per second summed over K, host CPU microseconds per grant or None)."""
    start_ms = int((time.time() + LEAD_SECONDS) * 1000)
    window_ms = int(seconds * 1000)
    argv = [HOST, ports, str(start_ms), str(window_ms)]
    procs = [
        subprocess.Popen(
            command(runtime, control, script, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        for _ in range(k)
    ]
    cpu0 = cpu1 = 0.0
    if host_pid is not None:
        # The host's CPU over the window, read at its edges.
        time.sleep(max(0.0, start_ms / 1000 - time.time()))
        cpu0 = cpu_seconds(host_pid)
        time.sleep(seconds)
        cpu1 = cpu_seconds(host_pid)
    total, problems = 0.0, []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=LEAD_SECONDS + seconds + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
        got = results(out)
        if proc.returncode != 0 or "grants" not in got:
            problems.append(f"exit {proc.returncode}: {err.strip()[-200:]}")
        elif got["late_ms"] > 50:
            problems.append(f"started {got['late_ms']:.0f} ms late (raise LEAD_SECONDS)")
        else:
            total += got["grants"]
    if problems:
        return "; ".join(problems[:2])
    per_grant = (cpu1 - cpu0) / total * 1e6 if host_pid is not None and total else None
    return total / seconds, per_grant


def progress(what: str, figures: dict[str, list[float]], prefix: str) -> None:
    line = ", ".join(f"{k}={fmt(v[-1:])}" for k, v in figures.items() if k[0] in prefix + "h")
    print(f"{what}: {line}", flush=True)


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.0f}" if med >= 10 else f"{med:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 s windows, 200 connects")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 2 with --quick)")
    ap.add_argument("--k", default="4,8", help="concurrent tclets, comma-separated (default 4,8)")
    ap.add_argument("--seconds", type=float, default=None, help="window per count (default 2)")
    ap.add_argument("--connects", type=int, default=None, help="latency sample (default 1000)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve()
    if shutil.which("tclsh") is None:
        print("bench_grants: tclsh not found", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    connects = args.connects or (200 if args.quick else 1000)
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    figures: dict[str, list[float]] = {}
    failures: dict[str, list[str]] = {}

    def record(key: str, value: float | str | None) -> None:
        if isinstance(value, str):
            failures.setdefault(key, []).append(value)
        elif value is not None:
            figures.setdefault(key, []).append(value)

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_grants.")))
        ports = stack.enter_context(accept_server())
        serve_args = ("--max-workers", str(max(ks) + 10), "--penalty", "0")
        control = stack.enter_context(resident_host(tmp, *serve_args, tcletd=tcletd_command()))
        host_pid = peer_pid(control)
        lat_script, loop_script = tmp / "latency.tcl", tmp / "loop.tcl"
        lat_script.write_text(LATENCY_TCL, encoding="utf-8")
        loop_script.write_text(LOOP_TCL, encoding="utf-8")
        print(f"bench_grants: {rounds} rounds, K={ks}, {seconds:g} s windows, ports {ports}")
        runtimes = ["tclsh", "tcletd", "resident"]
        # Every latency round first, then the loops (which make tens of thousands of sockets).
        for r in range(rounds):
            for rt in runtimes if r % 2 == 0 else runtimes[::-1]:
                got = latency(rt, control, lat_script, ports, connects)
                record(f"p50 {rt}", got if isinstance(got, str) else got[0])
                record(f"p90 {rt}", got if isinstance(got, str) else got[1])
            progress(f"latency round {r + 1}/{rounds}", figures, "p")
        for r in range(rounds):
            for k in ks:
                for rt in ("tclsh", "resident") if r % 2 == 0 else ("resident", "tclsh"):
                    pid = host_pid if rt == "resident" else None
                    tp = throughput(rt, control, loop_script, ports, k, seconds, pid)
                    record(f"grants/s K={k} {rt}", tp if isinstance(tp, str) else tp[0])
                    if not isinstance(tp, str):
                        record(f"host us/grant K={k}", tp[1])
            progress(f"grants round {r + 1}/{rounds}", figures, "g")

    print()
    print(f"{'figure':<28}{'median':>10}{'min':>10}{'max':>10}   (n)")
    for key, values in figures.items():
        lo, hi = fmt([min(values)]), fmt([max(values)])
        print(f"{key:<28}{fmt(values):>10}{lo:>10}{hi:>10}   ({len(values)})")
    for key, whys in failures.items():
        print(f"  {key}: FAILED {len(whys)}x: {whys[0]}")
    print(
        "\nlatency in us (socket call to usable channel); targets: p50 <= 250 (tcletd, resident),"
    )
    print(">= 10,000 grants/s through one host. tcletd = embedded host (tcletd run); resident =")
    print("tcletd run --host on one tcletd serve; K tclets share that one host.")
    if args.json:
        raw = {"figures": figures, "failures": failures}
        Path(args.json).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
