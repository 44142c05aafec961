"""The one-shot path: ``tcletd run examples/hello.tcl`` beside what it is made of, in one run.

    .venv/bin/python bench/bench_oneshot.py               # 20 rounds
    .venv/bin/python bench/bench_oneshot.py --rounds 50
    .venv/bin/python bench/bench_oneshot.py --module      # python -m tcletd, not the script

Each round runs, in an order that rotates from round to round, ``tclsh examples/hello.tcl``,
``python -c pass`` (this interpreter: the floor of any Python command), ``tcletd run
examples/hello.tcl`` on an embedded host, and ``tcletd run --host SOCKET examples/hello.tcl``
against a ``tcletd serve`` this benchmark starts on a temporary socket (a session of its own,
ended by its PID, then its group) and warms with a few runs first. It prints the median, the
fastest and the slowest wall time of each, from the start of the process to the end of its
output (a zygote that still holds the output counts: a pipe's reader waits for it too), and the
median CPU time (user + system) of the command's process tree: the embedded run's host, zygote
and worker; for the resident row, the client's alone (the host's share is the server's). CPU
time is what other work on the machine disturbs least: compare it when walls scatter.

From a warm disk: the commands run once before the rounds, and without
``PYTHONDONTWRITEBYTECODE``, so that tcletd's bytecode is cached as in an installed copy (without
it, compiling tcletd's modules costs an embedded run several hundred ms). The machine is shared
and noisy: compare the rows of one run with each other, not runs with each other.

Targets (issue 15): embedded <= 120 ms, resident <= 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchproc import HELLO, background, tcletd_command  # bench/ on sys.path

TARGETS = {"embedded": "<= 120", "resident": "<= 50"}


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.pop("TCLETD_HOST", None)  # the embedded row runs on an embedded host
    return env


def tcletd(module: bool) -> list[str]:
    """The command that runs tcletd: the installed script, or ``python -m tcletd``."""
    return [sys.executable, "-m", "tcletd"] if module else tcletd_command()


@contextlib.contextmanager
def resident(command: Sequence[str], directory: str) -> Iterator[str]:
    """A ``tcletd serve`` on a socket in ``directory``, ended by its PID when done (by
    :func:`benchproc.background`, as ``env`` execs it: the same process); the socket."""
    sock = str(Path(directory) / "control.sock")
    unset = ["env", "-u", "PYTHONDONTWRITEBYTECODE", "-u", "TCLETD_HOST"]  # as _environment()
    with background([*unset, *command, "serve", "--socket", sock], ready_on_stderr=True) as line:
        if not line.startswith("tcletd: serving on"):
            raise SystemExit(f"tcletd serve did not start: {line!r}")
        yield sock


def _cpu_of_children() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def wall_ms(cmd: Sequence[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Milliseconds from the start of ``cmd`` to the end of its output, and of CPU its process
    tree used (each process counts once its parent has waited for it: the zygote's workers, the
    host's zygote); a failure (or a hello that did not greet) ends the benchmark with its
    output."""
    cpu = _cpu_of_children()
    start = time.perf_counter()
    done = subprocess.run(list(cmd), capture_output=True, env=env, cwd=cwd, timeout=60)
    took = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or (cmd[-1] == str(HELLO) and b"Hello" not in done.stdout):
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.decode()!r}")
    return took, (_cpu_of_children() - cpu) * 1000


def measure(
    rows: dict[str, list[str]], env: dict[str, str], cwd: str, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """``rounds`` runs of each row's command (wall and CPU), rotated so that each goes first as
    often."""
    names = list(rows)
    for name in names:  # warm: bytecode written, pages in the cache, the resident host's pool
        for _ in range(3 if name == "resident" else 1):
            wall_ms(rows[name], env, cwd)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(wall_ms(rows[name], env, cwd))
        print(f"\rround {r + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return times


def report(rows: dict[str, list[str]], times: dict[str, list[tuple[float, float]]]) -> None:
    """The table: each command's median, fastest and slowest run, what a tcletd run costs
    beyond a bare Python start (the part tcletd can act on), and its median CPU time."""
    floor = statistics.median(wall for wall, _ in times["python"])
    print(f"{'command':<48}{'median':>8}{'min':>8}{'max':>8}{'-python':>9}{'target':>9}{'cpu':>8}")
    print("-" * 98)
    for name, cmd in rows.items():
        ms = sorted(wall for wall, _ in times[name])
        cpu = statistics.median(used for _, used in times[name])
        words = [Path(cmd[0]).name, *cmd[1:]]  # tclsh, python, tcletd: by name
        if name == "resident":
            words[words.index("--host") + 1] = "SOCK"
        label = " ".join(words).replace(str(HELLO), "examples/hello.tcl")
        median = statistics.median(ms)
        beyond = f"{median - floor:>9.1f}" if name in TARGETS else f"{'':>9}"
        target = TARGETS.get(name, "")
        print(
            f"{label[:47]:<48}{median:>8.1f}{ms[0]:>8.1f}{ms[-1]:>8.1f}{beyond}{target:>9}"
            f"{cpu:>8.1f}"
        )
    print("(ms, wall; -python: the median less python -c pass's; cpu: the process tree's median)")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="runs of each command (20)")
    ap.add_argument(
        "--module", action="store_true", help="run tcletd as python -m tcletd (default: the script)"
    )
    args = ap.parse_args(argv)
    env = _environment()
    command = tcletd(args.module)
    rows: dict[str, list[str]] = {}
    tclsh = shutil.which("tclsh")
    if tclsh is not None:
        rows["tclsh"] = [tclsh, str(HELLO)]
    rows["python"] = [sys.executable, "-c", "pass"]
    rows["embedded"] = [*command, "run", str(HELLO)]
    # A directory of our own as everyone's working directory: python -m tcletd then imports the
    # tcletd on its path (PYTHONPATH first), not one in the current directory.
    with (
        tempfile.TemporaryDirectory(prefix="bench-oneshot-") as tmp,
        resident(command, tmp) as sock,
    ):
        rows["resident"] = [*command, "run", "--host", sock, str(HELLO)]
        times = measure(rows, env, tmp, args.rounds)
    report(rows, times)
    if tclsh is None:
        print("tclsh not found: no baseline")
    print(f"{args.rounds} rounds; reproduce: .venv/bin/python bench/bench_oneshot.py", *argv or [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
