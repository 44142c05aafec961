"""The tclets and requests that measure what an attack does to its neighbours.

Client side of the trust boundary, but these tclets are the tool's own: their output is parsed,
strictly (a line that does not parse is an error of the probe, never a figure). An attack's
tclets print what they like; nothing they print is read for a verdict.

- The **echo probe**: a well-behaved tclet doing blocking round trips of a 63-byte line to an
  echo server in a process of its own, in batches with pauses in its event loop (as a real
  tclet would), each timed in Tcl with ``clock microseconds``; it prints each batch with the
  wall-clock time it started, so that the tool can draw latency over time. Its batches are
  spread over the attack's deadline, alone as beside the attack: run back to back, its 1,000
  round trips took ~0.5 s, all of it in the first second of an attack (a catalogue's forks),
  none of it when a memory bomb reached its limit.
- The **neighbour**: a tclet that connects and closes, again and again, to a name the tool's DNS
  server answers at once, printing each connect's microseconds: what a slow-DNS attack must not
  delay.
- The **control watch**: a ``status`` request to the host every 50 ms from a process of the
  tool's (an operator's client), its answer time recorded: the host's slowest control answer
  during an attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tcletd.attack.targets import Run, Target, end_child, end_with_parent

ECHO_PROBE = r"""
lassign $argv host port n batch pause
set s [socket $host $port]
fconfigure $s -translation lf -buffering full
set line [string repeat x 63]
for {set i 0} {$i < 50} {incr i} {puts $s $line; flush $s; gets $s}
set done 0
while {$done < $n} {
    set rts {}
    set at [clock microseconds]
    for {set i 0} {$i < $batch && $done < $n} {incr i; incr done} {
        set t0 [clock microseconds]
        puts $s $line
        flush $s
        if {[gets $s reply] != 63} {error "bad echo reply at $done"}
        lappend rts [expr {[clock microseconds] - $t0}]
    }
    puts "B $at [join $rts ,]"
    flush stdout
    after $pause {set ::tick 1}
    vwait ::tick
}
close $s
puts END
exit 0
"""

NEIGHBOUR = r"""
lassign $argv name port pause
proc round {} {
    global name port pause
    set t0 [clock microseconds]
    if {[catch {close [socket $name $port]} err]} {puts "E $err"} else {
        puts "C [expr {[clock microseconds] - $t0}]"
    }
    flush stdout
    after $pause round
}
after 0 round
vwait forever
"""

PROBE_ORIGIN = "http://127.0.0.1:7001/"  # a site no attack comes from


class ProbeError(Exception):
    """A probe failed: the measurement is void (the tool says so; it is no verdict)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class EchoSample:
    """One echo probe's round trips (µs) and, per batch, (wall time s, worst µs of the batch)."""

    rts: list[float] = field(default_factory=list)
    timeline: list[tuple[float, float]] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.rts, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.rts, 0.99)


def parse_echo(output: bytes, expected: int) -> EchoSample:
    sample = EchoSample()
    ended = False
    for raw in output.decode("utf-8", "replace").splitlines():
        parts = raw.split(" ")
        if parts == ["END"]:
            ended = True
        elif len(parts) == 3 and parts[0] == "B":
            try:
                at = int(parts[1]) / 1e6
                rts = [float(x) for x in parts[2].split(",")]
            except ValueError:
                raise ProbeError(f"echo probe: a line that does not parse: {raw[:80]!r}") from None
            sample.rts += rts
            sample.timeline += [(at, max(rts))]
        else:
            raise ProbeError(f"echo probe: an unexpected line: {raw[:80]!r}")
    if not ended or len(sample.rts) != expected:
        raise ProbeError(f"echo probe: {len(sample.rts)} round trips of {expected}, ended {ended}")
    return sample


async def echo_probe(
    target: Target, port: int, n: int, *, span: float = 0.0, batch: int = 50
) -> EchoSample:
    """Run the echo probe to its end, its ``n`` round trips in batches spread over about
    ``span`` seconds (back to back, with 20 ms pauses, if 0); raises ProbeError if it did not
    end well."""
    batches = -(-n // batch)
    # A batch takes ~10 ms on a quiet machine: the pauses make up the rest of the span.
    pause = max(20, round(span * 1000 / batches) - 10)
    out = bytearray()
    run = await target.run(
        ECHO_PROBE,
        name="probe",
        origin=PROBE_ORIGIN,
        argv=["127.0.0.1", str(port), str(n), str(batch), str(pause)],
        on_stdout=out.extend,
        policy="home",
    )
    await run.wait(120.0 + span)
    if run.exit is None or run.exit.status != 0:
        run.close()
        why = run.refused or (run.exit and f"{run.exit.reason} (status {run.exit.status})")
        raise ProbeError(f"echo probe did not end well: {why}")
    return parse_echo(bytes(out), n)


class Neighbour:
    """The connect neighbour, running until :meth:`stop`; its connect times in µs."""

    def __init__(self) -> None:
        self.connects: list[float] = []
        self.errors: list[str] = []
        self._run: Run | None = None
        self._buf = b""

    async def start(self, target: Target, name: str, port: int) -> None:
        self._run = await target.run(
            NEIGHBOUR,
            name="neighbour",
            origin=f"http://{name}:{port}/",
            argv=[name, str(port), "250"],  # 4 a second: within home's connect quota
            on_stdout=self._take,
            policy="home",
        )

    def _take(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            if text.startswith("C ") and text[2:].isdigit():
                self.connects.append(float(text[2:]))
            elif text.startswith("E "):
                self.errors.append(text[2:])

    async def stop(self) -> None:
        if self._run is not None:
            self._run.close()
            await self._run.wait(5.0)


class ControlWatch:
    """The host's control answers (ms) while it runs: a ``status`` request every ``period``,
    from a process of its own (``python -m tcletd.attack.probes watch SOCKET PERIOD``), as an
    operator's client is. The host paces its clients by process: in the tool's own process, the
    watch would be paced as one with the attacks' runs, which the tool launches."""

    def __init__(self, target: Target, period: float = 0.05) -> None:
        self.answers: list[float] = []
        self.failures: list[str] = []
        self.demoted_ids: set[str] = set()
        self._target = target
        self._period = period
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tcletd.attack.probes", "watch", str(self._target.path),
            str(self._period),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            preexec_fn=end_with_parent,
        )  # fmt: skip
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self.take(line.decode("utf-8", "replace").rstrip("\n"))
        if not self._stopping:  # a watch that dies must not read as a host that answered
            status = await self._proc.wait()
            self.failures.append(f"watch: its process ended before the attack did ({status})")

    def take(self, line: str) -> None:
        """One line of the watch's: ``A MS [ID,...]`` (answered in MS, these tclets demoted)
        or ``F MS WHY`` (failed after MS); anything else is the watch's failure."""
        kind, _, rest = line.partition(" ")
        ms, _, more = rest.partition(" ")
        try:
            answered = float(ms)
        except ValueError:
            self.failures.append(f"watch: a line that does not parse: {line[:80]!r}")
            return
        if kind == "A":
            self.answers.append(answered)
            self.demoted_ids |= {i for i in more.split(",") if i}
        elif kind == "F":
            self.answers.append(answered)
            self.failures.append(more or "failed")
        else:
            self.failures.append(f"watch: a line that does not parse: {line[:80]!r}")

    def demoted(self, ids: Iterable[str | None]) -> bool:
        """Whether the host was seen to demote any of the tclets ``ids``."""
        return any(i in self.demoted_ids for i in ids if i is not None)

    async def stop(self) -> None:
        self._stopping = True
        await end_child(self._proc)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._reader, 5.0)


async def _watch(target: Target, period: float) -> None:
    """The watch's process: a ``status`` every ``period``, each answer's time printed with the
    tclets newly seen demoted, until SIGTERM."""
    seen: set[str] = set()
    while True:
        started = time.monotonic()
        try:
            rows = await target.ps(timeout=5.0)
            ms = (time.monotonic() - started) * 1000
            new = {str(r.get("id")) for r in rows if r.get("demoted") is True} - seen
            seen |= new
            print(f"A {ms:.3f} {','.join(sorted(new))}", flush=True)
        except (OSError, TimeoutError) as exc:
            ms = (time.monotonic() - started) * 1000
            why = (str(exc) or type(exc).__name__).replace("\n", " ")
            print(f"F {ms:.3f} {why}", flush=True)
        await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "watch":
        print("usage: python -m tcletd.attack.probes watch SOCKET PERIOD", file=sys.stderr)
        return 2
    try:
        period = float(argv[2])
    except ValueError:
        period = -1.0
    if not period > 0:
        print(f"watch: PERIOD: seconds more than 0, not {argv[2]!r}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    target = Target(Path(argv[1]), kind="resident", policy="home", dns=False)
    asyncio.run(_watch(target, period))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
