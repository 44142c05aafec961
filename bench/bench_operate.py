"""Operator commands against a warm resident host: ``tcletd launch`` and ``tcletd ps``.

    .venv/bin/python bench/bench_operate.py                 # 10 rounds, 100 tclets for ps
    .venv/bin/python bench/bench_operate.py --rounds 20 --tclets 200

Starts ``tcletd serve --max-workers N`` (a session of its own, ended by its process group's id),
warms it with a few launches, then times, each as the median of ``--rounds`` runs of a fresh
process (the wall time an operator waits):

- ``tcletd launch examples/hello.tcl`` (the command returns once the host answers with the
  id; the tclet runs on), the host's own answer to a raw launch frame on an open connection (no
  process start), beside ``tclsh examples/hello.tcl`` as the baseline, and
  ``tcletd run --host`` (attached: to the tclet's exit) and ``python -c pass`` for scale (a
  client costs about a Python start);
- ``tcletd ps`` and ``tcletd ps --json`` with ``--tclets`` sleeping tclets (``after 600000``)
  running, and the host's own answer to a raw ``ps`` frame on an open connection (no process
  start: what a row per tclet costs the host).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tcletd.shared.control import FrameReader, encode, hello

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "hello.tcl"
TCLETD = [sys.executable, "-m", "tcletd"]


@contextlib.contextmanager
def served(sock: Path, max_workers: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [*TCLETD, "serve", "--socket", str(sock), "--max-workers", str(max_workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        if not line.startswith("tcletd: serving on "):
            raise SystemExit(f"tcletd serve did not start: {line!r}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def timed(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Wall seconds of one run of ``cmd`` and its stdout; a failure ends the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(list(cmd), capture_output=True, env=env, cwd=ROOT, timeout=120)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.decode()!r}")
    return took, done.stdout


def rounds(cmd: Sequence[str], env: dict[str, str], n: int) -> list[float]:
    return [timed(cmd, env)[0] for _ in range(n)]


def raw(sock: Path, frame: bytes, event: str, n: int) -> list[float]:
    """The host's answer (``event``) to ``frame`` on one open connection, ``n`` times: seconds
    each."""
    times = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(sock))
        conn.sendall(hello())
        reader = FrameReader(1 << 24)
        for _ in range(n):
            start = time.perf_counter()
            conn.sendall(frame)
            answered = False
            while not answered:
                for header, _ in reader.feed(conn.recv(1 << 20)):
                    answered = answered or header.get("event") == event
            times.append(time.perf_counter() - start)
    return times


def running(env: dict[str, str]) -> int:
    out = timed([*TCLETD, "ps", "--json"], env)[1]
    return len(json.loads(out))


def line(label: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"{label:<44}{statistics.median(ms):>9.1f}{ms[0]:>9.1f}{ms[-1]:>9.1f}{len(ms):>6}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="runs of each command (10)")
    ap.add_argument("--tclets", type=int, default=100, help="sleeping tclets during ps (100)")
    args = ap.parse_args(argv)
    tclsh = shutil.which("tclsh")
    with tempfile.TemporaryDirectory(prefix="bench-operate-") as tmp:
        sock = Path(tmp) / "c.sock"
        env = {**os.environ, "TCLETD_HOST": str(sock)}
        sleeper = Path(tmp) / "sleep.tcl"
        sleeper.write_text("after 600000\n")
        with served(sock, args.tclets + 16):
            launch = [*TCLETD, "launch", str(HELLO)]
            for _ in range(3):  # warm: the zygote, the host's first launches
                timed(launch, env)
            results = [("tcletd launch examples/hello.tcl", rounds(launch, env, args.rounds))]
            if tclsh is not None:
                baseline = rounds([tclsh, str(HELLO)], env, args.rounds)
                results.append(("tclsh examples/hello.tcl (baseline)", baseline))
            frame = encode({"op": "launch", "script_name": "hello.tcl"}, HELLO.read_bytes())
            results.append(("raw launch frame, open connection", raw(sock, frame, "launched", 10)))
            time.sleep(1)  # those ten end before the next command is timed
            attached = [*TCLETD, "run", "--host", str(sock), str(HELLO)]
            results.append(("tcletd run --host examples/hello.tcl", rounds(attached, env, 5)))
            results.append(
                (
                    "python -c pass (a client's floor)",
                    rounds([sys.executable, "-c", "pass"], env, 5),
                )
            )

            start = time.perf_counter()
            cmd = [*TCLETD, "launch", "--limit", "wall=unlimited", str(sleeper)]
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
                list(pool.map(lambda _: timed(cmd, env), range(args.tclets)))
            spent = time.perf_counter() - start
            while running(env) < args.tclets:
                time.sleep(0.1)
            n = args.tclets
            results.append((f"tcletd ps ({n} running)", rounds([*TCLETD, "ps"], env, args.rounds)))
            ps_json = [*TCLETD, "ps", "--json"]
            results.append((f"tcletd ps --json ({n} running)", rounds(ps_json, env, args.rounds)))
            ps_frame = encode({"op": "ps", "all": False})
            results.append(
                (f"raw ps frame, open connection ({n} rows)", raw(sock, ps_frame, "ps", 50))
            )

    print(f"{'command':<44}{'median':>9}{'min':>9}{'max':>9}{'runs':>6}   (ms, wall)")
    print("-" * 77)
    for label, times in results:
        print(line(label, times))
    if tclsh is None:
        print("tclsh not found: no baseline")
    print(f"\n{args.tclets} sleeping tclets launched (16 clients at a time) in {spent:.1f} s")
    print("reproduce: .venv/bin/python bench/bench_operate.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
