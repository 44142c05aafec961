"""Benchmark: what the command budget costs a tclet per command, in-process (real Tcl, no host).

Run:  .venv/bin/python bench/bench_budget.py [BUDGET]
Times, inside the tclet (``clock microseconds``), a plain loop, calls into one child and back,
calls into 20 children in turn, and a loop inside a child, each under a budget of BUDGET
commands (default 400,000: the loops use most of it, so the limit callbacks that deal the
budget out again all happen) and with no budget (0). Prints the median and min of 5 runs in
nanoseconds per iteration or call. On a shared VM the spread is large; min is the least noisy.
"""

from __future__ import annotations

import os
import statistics
import sys

from tcletd.shared.protocol import PolicyGranted, WorkerSpec
from tcletd.worker.tclrt import TclRuntime

RUNS = 5
CASES = {
    "plain loop, per iteration": ("", "for {set i 0} {$i < 300000} {incr i} {}", 300_000),
    "calls into a child, per call": (
        "interp create c\n",
        "for {set i 0} {$i < 30000} {incr i} {c eval {incr x}}",
        30_000,
    ),
    "calls into 20 children in turn, per call": (
        "set cs {}\nfor {set k 0} {$k < 20} {incr k} {lappend cs [interp create]}\n",
        "for {set i 0} {$i < 1500} {incr i} {foreach c $cs {$c eval {incr x}}}",
        30_000,
    ),
    "loop in a child, per iteration": (
        "interp create c\n",
        "c eval {for {set i 0} {$i < 300000} {incr i} {}}",
        300_000,
    ),
}


class Link:
    """The host link, for tclets that ask the host nothing."""

    def connect(
        self, host: str, port: str, myaddr: str, myport: str, asynchronous: bool
    ) -> tuple[int, int]:
        raise RuntimeError("no socket in this benchmark")

    def listen(self, port: str, myaddr: str) -> tuple[int, list[list[str]]]:
        raise RuntimeError("no socket in this benchmark")

    def close(self, sock_id: int) -> None:
        pass

    def request_policy(self, name: str) -> PolicyGranted:
        raise RuntimeError("no policy in this benchmark")

    def heartbeat(self, state: str, commands: int, waiting: bool = False) -> None:
        pass

    def limit_hit(self, limit: str, detail: str) -> None:
        raise RuntimeError(f"the budget ran out: {detail}")


def once(setup: str, body: str, budget: int) -> int:
    """Microseconds the body took inside the tclet (its result goes through a pipe on fd 2)."""
    script = f"{setup}set t0 [clock microseconds]\n{body}\n"
    script += "puts stderr [expr {[clock microseconds] - $t0}]\n"
    spec = WorkerSpec(
        tclet_id="bench",
        token="bench",
        endpoint="ipc:///nonexistent",
        script=script,
        script_name="bench.tcl",
        argv=[],
        embed_args={},
        policy="home",
        hidden_options=[],
        commands=budget,
    )
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    try:
        status = TclRuntime(spec, Link()).run()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    out = os.read(read, 4096).decode()
    os.close(read)
    if status != 0:
        raise RuntimeError(f"the tclet ended with {status}: {out}")
    return int(out.split()[-1])


def main() -> None:
    budget = int(sys.argv[1]) if len(sys.argv) > 1 else 400_000
    for name, (setup, body, n) in CASES.items():
        for label, value in (("budget", budget), ("none", 0)):
            samples = [once(setup, body, value) * 1000 / n for _ in range(RUNS)]
            print(
                f"{name:42s} {label:6s} median {statistics.median(samples):6.0f} ns"
                f"  min {min(samples):6.0f} ns"
            )


if __name__ == "__main__":
    main()
