"""Output is a stream, not a quota trap: under the shipped defaults a tclet that prints 10 MiB
delivers every byte, in order, through an embedded ``tcletd run`` and through ``tcletd run
--host`` on a resident host, also to a reader slower than the tclet: the host pushes back on the
tclet instead of buffering its output, so the host's memory stays bounded. An output quota the
operator sets still ends the tclet (137, ``output quota 1 MiB``) after exactly that much."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support import ROOT
from support.processes import run_tcletd
from support.wire import rss, serving

from tcletd.shared.states import EXIT_KILLED

pytestmark = pytest.mark.timeout(120)

LINES = 81920
# 81920 lines of 128 bytes: 10 MiB on stdout, then a word on stderr once every line is out.
SCRIPT = f"""
set pad [string repeat x 119]
for {{set i 0}} {{$i < {LINES}}} {{incr i}} {{ puts [format %08d $i]$pad }}
flush stdout
puts stderr done
"""
EXPECTED = b"".join(b"%08d" % i + b"x" * 119 + b"\n" for i in range(LINES))
TOTAL = 10 * 2**20
SLOW_FOR = 1.5  # seconds of reading slower than the tclet writes
SLOW_CHUNK = 16384  # bytes per read while slow: ~0.8 MiB/s, the tclet writes ~50 MiB/s
SLOW_PAUSE = 0.02
RSS_GROWTH = 64 * 2**20


class Reading:
    """``tcletd ARGS`` whose stdout the test reads itself (slowly at first), with stderr read
    line by line as it comes; killed by its process group's id on the way out."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcletd", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._stderr, daemon=True)
        self._reader.start()

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line.decode(errors="replace"))

    def read(self, host_pid: int, rss_before: int | None) -> tuple[bytes, int, int]:
        """All of stdout: slowly for SLOW_FOR seconds, then at full speed. Returns the bytes,
        the host's RSS baseline (``rss_before``, else taken at the first bytes) and its peak,
        and checks on the way that the tclet was held back while its reader was slow."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = bytearray(os.read(fd, SLOW_CHUNK))
        assert out, self.err
        before = rss_before if rss_before is not None else rss(host_pid)
        peak = before
        slow_until = time.monotonic() + SLOW_FOR
        while time.monotonic() < slow_until and (data := os.read(fd, SLOW_CHUNK)):
            out += data
            peak = max(peak, rss(host_pid))
            time.sleep(SLOW_PAUSE)
        # Slow reading took a fraction of the output; had the host buffered the rest, the
        # tclet would have finished long ago and said so on stderr.
        assert len(out) < TOTAL // 2, len(out)
        assert "done\n" not in self.err, (len(out), self.err)
        while data := os.read(fd, 1 << 20):
            out += data
            peak = max(peak, rss(host_pid))
        return bytes(out), before, peak

    def wait(self) -> int:
        status = self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def reading(args: Sequence[str]) -> Iterator[Reading]:
    run = Reading(args)
    try:
        yield run
    finally:
        run.kill()


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "ten_mib.tcl"
    path.write_text(SCRIPT)
    return path


def _assert_all_delivered(out: bytes) -> None:
    assert len(out) == len(EXPECTED) == TOTAL
    assert hashlib.sha256(out).hexdigest() == hashlib.sha256(EXPECTED).hexdigest()


def test_ten_mib_reach_a_slow_reader_of_an_embedded_run(tmp_path: Path) -> None:
    with reading(["run", str(_script(tmp_path))]) as run:
        out, before, peak = run.read(run.proc.pid, None)
        status = run.wait()
    assert status == 0, "".join(run.err)
    _assert_all_delivered(out)
    assert run.err == ["done\n"], run.err
    assert peak - before < RSS_GROWTH, (before, peak)


def test_ten_mib_reach_a_slow_reader_through_a_resident_host(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    with serving(sock) as host:
        before = rss(host.pid)
        with reading(["run", "--host", str(sock), str(_script(tmp_path))]) as run:
            out, _, peak = run.read(host.pid, before)
            status = run.wait()
        assert status == 0, (run.err, host.stderr())
    _assert_all_delivered(out)
    assert run.err == ["done\n"], run.err
    assert peak - before < RSS_GROWTH, (before, peak)


def test_an_output_quota_the_operator_sets_still_ends_the_tclet(tmp_path: Path) -> None:
    ran = run_tcletd(["run", "--limit", "output_bytes=1MiB", str(_script(tmp_path))], timeout=60)
    assert ran.status == EXIT_KILLED == 137, ran.stderr
    assert ran.stderr.endswith("tcletd: tclet ended: output quota 1 MiB\n"), ran.stderr
    # Exactly the quota's worth arrives: the first MiB of the stream, not a byte more.
    out = ran.stdout.encode()
    assert out == EXPECTED[: 2**20], len(out)
