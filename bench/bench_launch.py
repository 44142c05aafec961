"""Benchmark: a launch's latency, cold and from the warm pool, and how long a burst of launches
through the control socket holds the host's event loop.

    .venv/bin/python bench/bench_launch.py [--rounds N] [--warm K] [--burst B]

- **launch → first script instruction**: from ``Host.launch`` to the worker's hello, which it
  sends after its sandbox and right before the script's first command; ``--rounds`` launches of
  a tclet that exits 20 ms later, one after another (0.1 s apart, so that the warm pool
  refills), on a host without a warm pool and on one with ``--warm`` workers forked ahead; p50
  and p90.
- **the loop's longest stall during a burst**: a client process of its own (so that it never
  holds this process's interpreter lock) sends ``--burst`` launch frames at once on one control
  connection of an in-process host (each tclet opens no socket and
  waits); every callback the loop runs meanwhile is timed (asyncio's ``Handle._run``, wrapped
  in this process only), and the longest, the p99 and the count over 1 ms are reported, in
  wall time (what a waiting request sees, including the host being preempted by the workers
  the burst starts, on 2 cores) and in the host thread's own CPU time (its work alone).

Nothing here leaves the machine; the host and its workers are ended before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcletd.api import Host
from tcletd.host import tclet as tclet_module
from tcletd.host.control import ControlServer
from tcletd.shared.control import FrameReader, encode, hello
from tcletd.shared.states import TcletState

# Lives a little after its hello: a bare ``exit 0`` can end (its exit reported through the
# zygote or the pidfd) before the host has drained its hello from ZeroMQ, and the host never
# sees it in the script state.
BRIEF = "after 20 {exit 0}; vwait forever"
# Waits for the host to end it (a bare vwait with no event source is an error in Tcl 8.6).
IDLE = b"after 3600000 {exit 0}; vwait forever"


def _sink(_data: bytes) -> None:
    pass


def launch_to_hello(rounds: int, warm: int) -> list[float]:
    """Milliseconds from ``Host.launch`` to the worker's hello, one launch after another."""
    said: dict[str, float] = {}
    move = tclet_module.Tclet._move

    def moved(self: tclet_module.Tclet, state: TcletState) -> None:
        if state is TcletState.SCRIPT and self.id not in said:
            said[self.id] = time.perf_counter()
        move(self, state)

    async def main() -> list[float]:
        async with Host(warm=warm) as host:
            await host.run_tclet("exit 0", on_stdout=_sink, on_stderr=_sink)
            await asyncio.sleep(0.3)  # the warm pool filled
            out = []
            for _ in range(rounds):
                began = time.perf_counter()
                tclet = host.launch(BRIEF, on_stdout=_sink, on_stderr=_sink)
                await tclet.wait()
                out.append((said[tclet.id] - began) * 1000)
                await asyncio.sleep(0.1)
            return out

    tclet_module.Tclet._move = moved  # type: ignore[method-assign]
    try:
        return asyncio.run(main())
    finally:
        tclet_module.Tclet._move = move  # type: ignore[method-assign]


def _client(path: Path, burst: int) -> int:
    """Send ``burst`` launch frames at once; the number of launched replies (run in a process
    of its own: ``--client PATH``)."""
    done = 0
    frame = encode({"op": "launch", "script_name": "idle.tcl"}, IDLE)
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(path))
        sender = threading.Thread(target=conn.sendall, args=(hello() + frame * burst,))
        sender.start()
        reader = FrameReader(1 << 20)
        while done < burst:
            data = conn.recv(1 << 16)
            if not data:
                break
            for header, _ in reader.feed(data):
                if header.get("event") == "launched":
                    done += 1
                elif header.get("event") == "error":
                    raise SystemExit(f"launch refused: {header.get('message')}")
        sender.join()
    return done


def burst_stalls(
    burst: int, warm: int, passes: list[tuple[int, float]]
) -> tuple[list[float], list[float], float]:
    """Every callback's wall and CPU time (ms) while ``burst`` launches come in, and the
    burst's wall time (s); each collector pass meanwhile (generation, CPU ms) into ``passes``."""
    durations: list[float] = []
    cpu: list[float] = []
    run: Callable[[Any], None] = asyncio.events.Handle._run
    began_pass = [0.0]

    def collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began_pass[0] = time.thread_time()
        else:
            passes.append((info["generation"], (time.thread_time() - began_pass[0]) * 1000))

    def timed(handle: Any) -> None:
        began, began_cpu = time.perf_counter(), time.thread_time()
        run(handle)
        durations.append((time.perf_counter() - began) * 1000)
        cpu.append((time.thread_time() - began_cpu) * 1000)

    async def main() -> float:
        with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
            path = Path(tmp) / "control.sock"
            host = Host(max_workers=burst + 10, max_sockets=4 * burst + 100, warm=warm, penalty=0)
            async with host:
                server = ControlServer(host, path)
                await server.start()
                await host.run_tclet("exit 0", on_stdout=_sink, on_stderr=_sink)
                gc.collect()
                gc.freeze()  # as tcletd serve does once it serves
                durations.clear()
                cpu.clear()
                asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
                gc.callbacks.append(collected)
                began = time.perf_counter()
                try:
                    client = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--client", str(path), "--burst", str(burst)
                    )
                    if await client.wait() != 0:
                        raise SystemExit("the burst's client failed")
                    wall = time.perf_counter() - began
                finally:
                    asyncio.events.Handle._run = run  # type: ignore[method-assign,assignment]
                    gc.callbacks.remove(collected)
                server.stop_accepting()
                await server.drain()
                return wall

    wall = asyncio.run(main())
    return durations, cpu, wall


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="launches timed one by one (40)")
    parser.add_argument("--warm", type=int, default=4, help="the warm pool's size (4)")
    parser.add_argument(
        "--burst", type=int, default=500, help="launches in the burst (500; 0: no burst)"
    )
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)  # the burst's sender
    args = parser.parse_args(argv)
    if args.client is not None:
        return 0 if _client(args.client, args.burst) == args.burst else 1

    print("| launch → first script instruction | p50 | p90 |")
    print("|---|---|---|")
    for label, warm in (("cold (no warm pool)", 0), (f"warm pool of {args.warm}", args.warm)):
        times = launch_to_hello(args.rounds, warm)
        print(f"| {label} | {statistics.median(times):.1f} ms | {_pct(times, 0.9):.1f} ms |")
    if args.burst <= 0:
        return 0
    passes: list[tuple[int, float]] = []
    durations, cpu, wall = burst_stalls(args.burst, 0, passes)
    print()
    print(f"| burst of {args.burst} ({wall:.2f} s) | longest callback | p99 | over 1 ms |")
    print("|---|---|---|---|")
    for label, values in (("wall", durations), ("host CPU", cpu)):
        over = sum(1 for d in values if d > 1.0)
        print(
            f"| {label}, {len(values)} callbacks | {max(values):.2f} ms "
            f"| {_pct(values, 0.99):.2f} ms | {over} |"
        )
    for generation in range(3):
        took = [ms for g, ms in passes if g == generation]
        if took:
            print(
                f"collector passes of generation {generation}: {len(took)}, "
                f"longest {max(took):.2f} ms, median {statistics.median(took):.2f} ms"
            )
    print(
        f"reproduce: .venv/bin/python bench/bench_launch.py --rounds {args.rounds} "
        f"--warm {args.warm} --burst {args.burst}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
