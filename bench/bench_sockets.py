"""Socket benchmark: the same Tcl client under tclsh and under ``tcletd run``, side by side.

    .venv/bin/python bench/bench_sockets.py            # full run (5 rounds)
    .venv/bin/python bench/bench_sockets.py --quick    # smoke run, small sizes, 2 rounds
    .venv/bin/python bench/bench_sockets.py --tclsh-only --rounds 3

tcletd hands a tclet's sockets over as native Tcl channels, so a tclet should reach the
native figures. Each round runs every benchmark once under each runtime, alternating which
goes first, against one Python server running in its own process (so it never competes
with this driver for the GIL). The Tcl script measures inside itself with
``clock microseconds`` and prints ``RESULT name value`` lines, so start-up costs stay out
of the socket figures; start-up is measured separately as the wall time of
``examples/hello.tcl``. This VM is noisy (the same native round trip measured 149 µs in
one run and 270 µs in the next), so read medians of
several rounds, and compare the two columns of the same run rather than runs with each other.

Targets: echo RT tcletd/tclsh <= 1.10; bulk throughput tcletd/tclsh >= 0.95 each way;
connect p50 <= 0.5 ms under tcletd; ``tcletd run examples/hello.tcl`` <= 150 ms wall.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchproc import (  # bench/ on sys.path
    HELLO,
    background,
    resident_host,
    run_bounded,
    tcletd_command,
)

HOST = "127.0.0.1"
CHUNK = 65536

# One client for every socket benchmark: "MODE HOST PORT PARAM..." in argv. It speaks a
# one-line header to the server ("ECHO", "SINK n", "SOURCE n"), then the benchmark.
CLIENT_TCL = r"""
lassign $argv mode host port
set params [lrange $argv 3 end]

proc result {name value} {
    puts "RESULT $name $value"
}

proc open_bench {header} {
    global host port
    set s [socket $host $port]
    fconfigure $s -translation binary -buffersize 65536 -buffering full
    puts -nonewline $s "$header\n"
    flush $s
    return $s
}

switch -- $mode {
    echo {
        # N round trips of a 63-char line plus newline: puts + flush + gets.
        lassign $params n
        set s [open_bench ECHO]
        fconfigure $s -translation lf
        set line [string repeat x 63]
        # A few warm-up round trips, so that the first wake-ups are not counted.
        for {set i 0} {$i < 100} {incr i} {puts $s $line; flush $s; gets $s}
        set t0 [clock microseconds]
        for {set i 0} {$i < $n} {incr i} {
            puts $s $line
            flush $s
            if {[gets $s reply] != 63} {error "bad echo reply at $i: {$reply}"}
        }
        set t1 [clock microseconds]
        close $s
        result echo_us_per_rt [format %.2f [expr {double($t1 - $t0) / $n}]]
    }
    sink {
        # The client writes TOTAL bytes in 64 KiB chunks; the clock stops when the server
        # says it has read them all, so buffered-but-unsent bytes are not counted as sent.
        lassign $params total
        set chunk [string repeat [binary format c 42] 65536]
        set s [open_bench "SINK $total"]
        set t0 [clock microseconds]
        for {set sent 0} {$sent < $total} {incr sent 65536} {
            puts -nonewline $s $chunk
        }
        flush $s
        set reply [gets $s]
        set t1 [clock microseconds]
        close $s
        if {$reply ne "OK"} {error "bad sink reply: {$reply}"}
        result write_mib_s [format %.1f [expr {$total / 1048576.0 / (($t1 - $t0) / 1e6)}]]
    }
    source {
        # The server writes TOTAL bytes; the client reads them in 64 KiB reads.
        lassign $params total
        set s [open_bench "SOURCE $total"]
        set got 0
        set t0 [clock microseconds]
        while {$got < $total} {
            set data [read $s 65536]
            if {[string length $data] == 0} {error "early eof after $got bytes"}
            incr got [string length $data]
        }
        set t1 [clock microseconds]
        close $s
        result read_mib_s [format %.1f [expr {$total / 1048576.0 / (($t1 - $t0) / 1e6)}]]
    }
    connect {
        # Time from the socket call to a usable (connected, blocking) channel.
        lassign $params n
        set times {}
        for {set i 0} {$i < $n} {incr i} {
            set t0 [clock microseconds]
            set s [socket $host $port]
            set t1 [clock microseconds]
            lappend times [expr {$t1 - $t0}]
            close $s
        }
        set times [lsort -integer $times]
        result connect_p50_us [lindex $times [expr {$n / 2}]]
        result connect_p90_us [lindex $times [expr {($n * 9) / 10}]]
    }
    default {
        error "unknown mode $mode"
    }
}
exit 0
"""


# --------------------------------------------------------------------------------------
# The server, run as a separate process: `bench_sockets.py --serve` (bench_isolation uses it
# too). ECHO echoes, SINK n / SOURCE n move n bytes, any other header gets silence.


def _read_header(conn: socket.socket) -> bytes | None:
    # Byte by byte: the header is tiny, and reading further could swallow payload.
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            return None
        buf += b
    return bytes(buf[:-1])


def _serve_conn(conn: socket.socket) -> None:
    with conn:
        header = _read_header(conn)
        if header is None:
            return  # a connect-latency probe: connect, close
        cmd, _, arg = header.partition(b" ")
        if cmd == b"ECHO":
            while data := conn.recv(65536):
                conn.sendall(data)
        elif cmd == b"SINK":
            left = int(arg)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while left > 0:
                n = conn.recv_into(view, min(left, len(buf)))
                if n == 0:
                    return
                left -= n
            conn.sendall(b"OK\n")
            while conn.recv(65536):
                pass
        elif cmd == b"SOURCE":
            left = int(arg)
            chunk = b"\x2a" * CHUNK
            while left > 0:
                conn.sendall(chunk[: min(left, CHUNK)])
                left -= CHUNK
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        else:
            # Any other header: the silent server (bench_isolation's blocking-gets target).
            while conn.recv(65536):
                pass


def serve() -> int:
    """Listen on 127.0.0.1:0, print the port, serve until stdin closes (the driver died)."""
    listener = socket.create_server((HOST, 0), backlog=512)
    print(listener.getsockname()[1], flush=True)

    def accept_loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=_serve_conn, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    sys.stdin.read()  # returns at EOF: the driver closed our stdin or exited
    return 0


@contextlib.contextmanager
def server_process() -> Iterator[int]:
    """The bench server (``--serve``) in its own process; its port."""
    with background([sys.executable, __file__, "--serve"]) as line:
        if not line.strip().isdigit():
            raise RuntimeError(f"bench server did not start: {line!r}")
        yield int(line)


# --------------------------------------------------------------------------------------
# The driver.


@dataclass
class Runtime:
    name: str
    prefix: list[str]  # the command before "SCRIPT ARG..."
    separator: list[str]  # what goes between the script and its argv

    def command(self, script: Path, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, str(script), *self.separator, *argv]


def runtimes(tclsh: str, include_tcletd: bool, resident: str | None) -> list[Runtime]:
    """tclsh; ``tcletd run`` on an embedded host; ``tcletd run --host`` on a resident one."""
    out = [Runtime("tclsh", [tclsh], [])]
    if include_tcletd:
        # The connect figure opens 200 sockets as fast as it can: lift trusted's connects/s
        # quota (100) for it; the benchmark measures the mediation, not the quota.
        options = ["--policy", "trusted", "--limit", "connects_per_second=100000"]
        out.append(Runtime("tcletd", [*tcletd_command(), "run", *options], ["--"]))
        if resident is not None:
            command = [*tcletd_command(), "run", "--host", resident, *options]
            out.append(Runtime("resident", command, ["--"]))
    return out


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str
    values: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def add(self, runtime: str, value: float) -> None:
        self.values.setdefault(runtime, []).append(value)

    def fail(self, runtime: str, why: str) -> None:
        self.failures.setdefault(runtime, []).append(why)

    def median(self, runtime: str) -> float | None:
        vals = self.values.get(runtime)
        return statistics.median(vals) if vals else None


def parse_results(stdout: str) -> dict[str, float]:
    results: dict[str, float] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "RESULT":
            results[parts[1]] = float(parts[2])
    return results


def short_error(proc: subprocess.CompletedProcess[str]) -> str:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return f"exit {proc.returncode}: " + " | ".join(tail)


def run_client(
    rt: Runtime,
    script: Path,
    port: int,
    mode: str,
    params: Sequence[str],
    metrics: dict[str, Metric],
    timeout: float,
) -> None:
    proc = run_bounded(rt.command(script, [mode, HOST, str(port), *params]), timeout)
    results = parse_results(proc.stdout)
    wanted = [m for m in metrics.values() if m.key.startswith(mode + ":")]
    for m in wanted:
        name = m.key.split(":", 1)[1]
        if proc.returncode == 0 and name in results:
            m.add(rt.name, results[name])
        else:
            m.fail(rt.name, short_error(proc))


def hello_wall_ms(rt: Runtime, runs: int, metric: Metric, timeout: float) -> None:
    """Median wall time of ``RUNTIME examples/hello.tcl`` over ``runs`` runs, in ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = run_bounded(rt.command(HELLO, []), timeout)
        elapsed = (time.perf_counter() - t0) * 1000
        if proc.returncode != 0 or "Hello" not in proc.stdout:
            metric.fail(rt.name, short_error(proc))
            return
        times.append(elapsed)
    metric.add(rt.name, statistics.median(times))


def this_round(m: Metric, runtime: str, r: int) -> float | None:
    """The value from round ``r`` (0-based), or None if that round failed."""
    vals = m.values.get(runtime, [])
    # Each round adds exactly one value or one failure per runtime.
    return vals[-1] if len(vals) + len(m.failures.get(runtime, [])) == r + 1 and vals else None


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def report(metrics: dict[str, Metric], names: Sequence[str]) -> None:
    """One row per figure: each runtime's median, then tcletd / tclsh."""
    ratio = len(names) >= 2
    cols = [*names, "ratio" if ratio else ""]
    print()
    head = f"{'figure':<34} {'unit':<7}" + "".join(f"{c:>10}" for c in cols) + "  target"
    print(head)
    print("-" * len(head))
    for m in metrics.values():
        meds = [m.median(n) for n in names]
        row = f"{m.label:<34} {m.unit:<7}" + "".join(f"{fmt(v):>10}" for v in meds)
        if ratio:
            a, b = meds[0], meds[1]
            row += f"{b / a:>10.3f}" if a and b is not None else f"{'-':>10}"
        print(f"{row}  {m.target}")
    print()
    for m in metrics.values():
        for n in names:
            vals = m.values.get(n, [])
            if vals:
                spread = f"min {fmt(min(vals))} max {fmt(max(vals))} n={len(vals)}"
                print(f"  {m.label} [{n}]: {spread}")
            for why in m.failures.get(n, [])[:2]:
                print(f"  {m.label} [{n}]: FAILED {why}")
    print("\nratio = tcletd (embedded host) / tclsh (medians).")
    if "resident" in names:
        print("resident = tcletd run --host on a resident host (tcletd serve).")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: a smoke run")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 2 with --quick)")
    ap.add_argument("--tclsh-only", action="store_true", help="skip tcletd (native figures only)")
    ap.add_argument(
        "--no-resident", action="store_true", help="skip tcletd run --host on a tcletd serve"
    )
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve()

    tclsh = shutil.which("tclsh")
    if tclsh is None:
        print("bench_sockets: tclsh not found", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    echo_n = 1000 if args.quick else 10_000
    bulk = (16 if args.quick else 256) * 1024 * 1024
    connects = 50 if args.quick else 200
    hello_runs = 3 if args.quick else 10
    timeout = 120.0

    resident = not (args.tclsh_only or args.no_resident)
    mib = bulk // (1024 * 1024)
    metrics = {
        m.key: m
        for m in [
            Metric(
                "echo:echo_us_per_rt", f"echo RT ({echo_n} x 63 B)", "us", False, "ratio <= 1.10"
            ),
            Metric(
                "sink:write_mib_s",
                f"write {mib} MiB (client->server)",
                "MiB/s",
                True,
                "ratio >= 0.95",
            ),
            Metric(
                "source:read_mib_s",
                f"read {mib} MiB (server->client)",
                "MiB/s",
                True,
                "ratio >= 0.95",
            ),
            Metric(
                "connect:connect_p50_us",
                f"connect p50 ({connects} connects)",
                "us",
                False,
                "tcletd <= 500",
            ),
            Metric("connect:connect_p90_us", f"connect p90 ({connects} connects)", "us", False, ""),
            Metric(
                "hello:wall_ms",
                f"hello.tcl wall (median of {hello_runs})",
                "ms",
                False,
                "tcletd <= 150",
            ),
        ]
    }
    benches: list[tuple[str, list[str]]] = [
        ("echo", [str(echo_n)]),
        ("sink", [str(bulk)]),
        ("source", [str(bulk)]),
        ("connect", [str(connects)]),
    ]

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_sockets."))
        port = stack.enter_context(server_process())
        sock = stack.enter_context(resident_host(Path(tmp))) if resident else None
        rts = runtimes(tclsh, include_tcletd=not args.tclsh_only, resident=sock)
        names = [rt.name for rt in rts]
        script = Path(tmp) / "bench_client.tcl"
        script.write_text(CLIENT_TCL, encoding="utf-8")
        print(f"bench_sockets: {rounds} rounds, runtimes {', '.join(names)}, server port {port}")
        for r in range(rounds):
            # Alternate the order so that neither runtime always runs on a warmer box.
            order = rts if r % 2 == 0 else list(reversed(rts))
            for mode, params in benches:
                for rt in order:
                    run_client(rt, script, port, mode, params, metrics, timeout)
            for rt in order:
                hello_wall_ms(rt, hello_runs, metrics["hello:wall_ms"], timeout)
            done = ", ".join(
                f"{m.key.split(':')[1]}=" + "/".join(fmt(this_round(m, n, r)) for n in names)
                for m in metrics.values()
            )
            print(f"round {r + 1}/{rounds}: {done}", flush=True)

    report(metrics, names)
    if args.json:
        raw = {
            k: {"values": m.values, "failures": m.failures, "unit": m.unit}
            for k, m in metrics.items()
        }
        Path(args.json).write_text(json.dumps(raw, indent=2), encoding="utf-8")
    failed = any(m.failures for m in metrics.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
