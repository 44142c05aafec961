"""Benchmark: a tclet that prints 10 MiB, through each consumer, against tclsh printing the same.

    .venv/bin/python bench/bench_stream.py [--rounds N] [--mib M]

Side by side in one run, median (and min) seconds of wall time over ``rounds`` runs each (the
script pauses 0.3 s first, in every consumer alike):
``tclsh`` writing to a pipe (the baseline), ``tcletd run`` (an embedded host), ``tcletd run
--host`` (a resident host, already warm) and ``tcletd launch`` followed by ``tcletd logs
--follow`` (from the launch to the last byte). Every run's output is checked byte for byte
(length and SHA-256) against tclsh's; a run that lost a byte fails the benchmark. The resident
host is started here, in a temporary directory, and ended by its PID.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TCLETD = [sys.executable, "-m", "tcletd"]
# The pause lets ``logs --follow`` attach before the first byte: a detached tclet's output from
# before anyone follows is kept only up to the host's 1 MiB per tclet (the oldest let go).
PRINTER = """\
after 300
set line [string repeat x 127]
for {set i 0} {$i < %d} {incr i} { puts $line }
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, env=env, cwd=ROOT, timeout=300, check=False)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])}: exit {out.returncode}: {out.stderr[-300:]!r}")
    return elapsed, out.stdout


def launched_then_followed(script: Path, env: dict[str, str]) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    launch = subprocess.run(
        [*TCLETD, "launch", str(script)], capture_output=True, env=env, timeout=60, check=True
    )
    tclet_id = launch.stdout.split()[-1].decode()
    follow = subprocess.run(
        [*TCLETD, "logs", "--follow", tclet_id], capture_output=True, env=env, timeout=300
    )
    elapsed = time.perf_counter() - t0
    if follow.returncode != 0:
        raise SystemExit(f"logs --follow: exit {follow.returncode}: {follow.stderr[-300:]!r}")
    return elapsed, follow.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=10)
    args = parser.parse_args()
    lines = args.mib * 2**20 // 128
    with tempfile.TemporaryDirectory(prefix="tcletd-bench-") as tmp:
        script = Path(tmp) / "printer.tcl"
        script.write_text(PRINTER % lines)
        sock = Path(tmp) / "run" / "control.sock"
        env = {**os.environ, "TCLETD_HOST": str(sock)}
        embedded_env = {k: v for k, v in os.environ.items() if k != "TCLETD_HOST"}
        serve = subprocess.Popen(
            [*TCLETD, "serve", "--socket", str(sock)],
            stderr=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            assert serve.stderr is not None
            assert serve.stderr.readline().startswith(b"tcletd: serving on ")
            consumers: dict[str, Callable[[], tuple[float, bytes]]] = {
                "tclsh > pipe": lambda: timed(["tclsh", str(script)], embedded_env),
                "tcletd run": lambda: timed([*TCLETD, "run", str(script)], embedded_env),
                "tcletd run --host": lambda: timed([*TCLETD, "run", str(script)], env),
                "launch + logs --follow": lambda: launched_then_followed(script, env),
            }
            expected: tuple[int, str] | None = None
            times: dict[str, list[float]] = {name: [] for name in consumers}
            for _ in range(args.rounds):
                for name, consume in consumers.items():  # interleaved: noise hits all alike
                    elapsed, out = consume()
                    got = (len(out), hashlib.sha256(out).hexdigest())
                    expected = expected or got
                    if got != expected:
                        raise SystemExit(f"{name}: {got[0]} bytes, not tclsh's {expected[0]}")
                    times[name].append(elapsed)
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=30)
    base = statistics.median(times["tclsh > pipe"])
    print(f"{args.mib} MiB printed, {args.rounds} rounds, every byte checked against tclsh's")
    print(f"{'consumer':26} {'median s':>9} {'min s':>7} {'x tclsh':>8}")
    for name, runs in times.items():
        med = statistics.median(runs)
        print(f"{name:26} {med:9.3f} {min(runs):7.3f} {med / base:8.1f}")


if __name__ == "__main__":
    main()
