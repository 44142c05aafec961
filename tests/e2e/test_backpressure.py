"""``tcletd run`` whose stdout reader stalls: the embedded host's loop goes on (signals, the
wall limit, SIGUSR1), the tclet's ``puts`` blocks instead (backpressure), and what the host
accepted reaches a reader that resumes. Finding 4: a blocking write froze the whole host."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.waiting import wait_until

from tcletd.host.host import OUTPUT_AT_EXIT
from tcletd.shared.states import EXIT_WALL_LIMIT

pytestmark = pytest.mark.timeout(90)

# 400 KB on stdout, then a word on stderr, then work that never ends.
WRITER = """
set line [string repeat x 99]
for {set i 0} {$i < 4000} {incr i} { puts $line }
flush stdout
puts stderr written
while 1 { after 20 }
"""
WRITTEN = 4000 * 100
# Lines forever, a count on stderr every 1000 (100 KB).
ENDLESS = """
set line [string repeat x 99]
set n 0
while 1 {
    puts $line
    if {[incr n] % 1000 == 0} { puts stderr "count $n"; flush stderr }
}
"""


class Run:
    """``tcletd run`` with stdout a pipe the test reads only when it says so, and stderr read
    line by line as it comes."""

    def __init__(self, tmp_path: Path, script: str, *args: str) -> None:
        path = tmp_path / "t.tcl"
        path.write_text(script)
        self._read_end, write_end = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcletd", "run", "--policy", "trusted", *args, str(path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        os.close(write_end)
        self.lines: list[str] = []
        self.out = bytearray()
        self._readers = [threading.Thread(target=self._stderr, daemon=True)]
        self._readers[0].start()

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def _stdout(self) -> None:
        while data := os.read(self._read_end, 65536):
            self.out += data

    def resume(self) -> None:
        """Start reading stdout (to its end)."""
        reader = threading.Thread(target=self._stdout, daemon=True)
        reader.start()
        self._readers.append(reader)

    def said(self, prefix: str) -> list[str]:
        return [line for line in list(self.lines) if line.startswith(prefix)]

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def end(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if len(self._readers) == 1:
            self.resume()
        for reader in self._readers:
            reader.join(10)
        os.close(self._read_end)


@contextlib.contextmanager
def running(tmp_path: Path, script: str, *args: str) -> Iterator[Run]:
    run = Run(tmp_path, script, *args)
    try:
        yield run
    finally:
        run.end()


def _sigterm_exit(tmp_path: Path, *, stalled: bool) -> float:
    """Seconds from SIGTERM to the exit of a ``tcletd run`` whose tclet wrote 400 KB and works
    on, with its stdout read (the baseline) or not read at all."""
    with running(tmp_path, WRITER) as run:
        if not stalled:
            run.resume()
        # The tclet may block before its word once the buffers are full: the host's loop must
        # still take the signal; a frozen loop (the finding) never exits at all.
        with contextlib.suppress(AssertionError):
            wait_until(lambda: run.said("written"), timeout=5)
        sent = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        status = run.wait(OUTPUT_AT_EXIT + 25)
        took = time.monotonic() - sent
        assert status == 128 + signal.SIGTERM, (status, run.lines)
        return took


def test_sigterm_ends_a_run_whose_reader_stalls(tmp_path: Path) -> None:
    baseline = _sigterm_exit(tmp_path, stalled=False)
    stalled = _sigterm_exit(tmp_path, stalled=True)
    # The stalled run waits at most OUTPUT_AT_EXIT for its reader, then exits; margin for load.
    assert stalled <= baseline + OUTPUT_AT_EXIT + 5, (baseline, stalled)


def test_wall_limit_fires_while_the_reader_stalls(tmp_path: Path) -> None:
    with running(tmp_path, WRITER, "--limit", "wall=2s") as run:
        # The reader resumes only once tcletd has exited (or after 40 s: then it froze).
        status = run.wait(40)
        assert status == EXIT_WALL_LIMIT, (status, run.lines)
        assert run.said("tcletd: tclet ended: wall limit 2 s"), run.lines


def test_puts_blocks_on_a_stalled_reader_and_the_loop_goes_on(tmp_path: Path) -> None:
    with running(tmp_path, ENDLESS) as run:
        wait_until(lambda: run.said("count"), timeout=15)

        def settled() -> bool:  # no new count for 0.5 s: the tclet is blocked in puts
            before = len(run.said("count"))
            time.sleep(0.5)
            return len(run.said("count")) == before

        wait_until(settled, timeout=20, message="the tclet's output never stopped")
        counts = run.said("count")
        lines = int(counts[-1].split()[1])
        # Bounded: the pipe, the host's buffer and the worker's socketpair, not what the
        # tclet would write in that time (it wrote 100 KB per count line as fast as it could).
        assert lines * 100 < 8 * 2**20, lines
        run.proc.send_signal(signal.SIGUSR1)  # the loop answers while the tclet is held
        wait_until(lambda: run.said("tcletd: tclet "), timeout=10)
        run.resume()  # the reader comes back: the tclet goes on writing
        wait_until(lambda: len(run.said("count")) > len(counts), timeout=15)
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait(30) == 128 + signal.SIGTERM, run.lines


def test_accepted_output_reaches_a_reader_that_resumes(tmp_path: Path) -> None:
    script = WRITER.replace("while 1 { after 20 }", "exit 3")
    with running(tmp_path, script) as run:
        with contextlib.suppress(AssertionError):  # it may block before its word: fine too
            wait_until(lambda: run.said("written"), timeout=3)
        run.resume()
        assert run.wait(30) == 3, run.lines
        wait_until(lambda: len(run.out) >= WRITTEN, timeout=10, message=lambda: str(len(run.out)))
        assert bytes(run.out) == (b"x" * 99 + b"\n") * 4000


def test_a_reader_that_goes_away_breaks_the_tclets_pipe(tmp_path: Path) -> None:
    path = tmp_path / "t.tcl"
    path.write_text(
        "set line [string repeat x 99]\n"
        'if {[catch {while 1 { puts $line }} err]} { puts stderr "caught: $err" }\n'
    )
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write meets EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tcletd", "run", "--policy", "trusted", str(path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=30,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert b'caught: error writing "stdout": broken pipe' in done.stderr, done.stderr
