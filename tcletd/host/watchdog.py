"""The watchdog: one periodic task in the host loop that measures every tclet and holds the line.

Host side of the trust boundary. Limits are enforced from what the host measures itself: CPU
seconds (user + system) and resident memory of the worker process (``/proc``), and the wall clock
since launch. The one exception is the Tcl command count, which only the worker's interpreter can
count; the worker enforces it itself and says so with ``LimitHit`` before it exits.

Idle tclets cost next to nothing: a worker resting in its event loop says so and sends
nothing more until it wakes (:mod:`tcletd.worker.limits`). Every ``TICK`` the watchdog looks
closely at the *active* tclets (:attr:`Watched.active`: not resting, or their CPU time moved at
the last look, whatever the worker said), up to ``PER_TICK`` of them, round robin: three small
``/proc`` reads (``stat``, ``status``, ``schedstat``) for CPU, memory and the hog window, and
one ``TCP_INFO`` read per open socket (at most the tclet's socket quota). Every tclet, active or
not, gets a *sweep* look at least every ``SWEEP`` seconds, spread over the ticks: one ``/proc``
read (``stat``) and its sockets, for the limits and to catch a worker that computes while it
says it rests. Before, every worker beat 5 times a second and every tclet had the three reads
each tick: 300 idle tclets cost the host 0.22 of a core. A look is a short list of named steps
(:meth:`tcletd.host.tclet.Tclet.check`): count bytes, enforce byte quotas, measure, enforce
limits, update liveness.

At a limit the host ends the worker (SIGTERM, SIGKILL after the grace) with a reason that names
the limit and its value (``cpu limit 10 s``) and the status of :mod:`tcletd.shared.states`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from tcletd.policy.quantities import SETTINGS, Limits, format_duration, format_size
from tcletd.shared.errors import EXIT_TEMPFAIL, TcletdError
from tcletd.shared.states import EXIT_KILLED, EXIT_WALL_LIMIT

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between looks at the active tclets
# Seconds between two looks at any tclet, at most (spread over the ticks). What a resting tclet
# could do meanwhile is bounded without it: only a worker lying about its rest computes, and
# RLIMIT_CPU ends it at its cpu limit + 1 s, its cgroup caps its memory. A sweep look costs the
# host ~28 us: 2,000 resting tclets cost ~2.8 % of a core at 2 s, 5.6 % at 1 s.
SWEEP = 2.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in these
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PER_TICK = 256  # active tclets looked at per tick, at most
# Seconds of looks the watchdog takes in one go before it lets the loop run others: a look is
# ~15-20 us, so a tick over hundreds of active tclets (a burst just launched) would otherwise
# hold the loop for several milliseconds.
SLICE = 0.0005


class Watched(Protocol):
    """What the watchdog needs of a tclet."""

    id: str

    @property
    def active(self) -> bool:
        """Worth a close look every tick: its worker may be running."""
        ...

    def check(self, now: float, *, sweep: bool = False) -> None:
        """One look; ``sweep``: the light one every tclet gets once per SWEEP."""
        ...


@dataclass
class Usage:
    """The worker's last measured resource use."""

    cpu: float = 0.0  # seconds, user + system
    rss: int = 0  # bytes


@dataclass(frozen=True)
class Breach:
    """A limit reached: which, its maximum, the measured value, the reason and exit status;
    ``source`` says who saw it: ``host`` (measured), ``worker`` (LimitHit), ``backstop`` (the
    kernel's rlimit in the worker killed it first)."""

    limit: str
    maximum: float
    value: float
    reason: str
    status: int
    source: str = "host"


def limit_reason(limit: str, maximum: float) -> str:
    """``cpu limit 10 s``, ``memory limit 256 MiB``, ``wall limit 60 s``, ``commands limit N``:
    the value in the unit the limit's Setting declares."""
    unit = SETTINGS[limit].unit if limit in SETTINGS else ""
    if unit == "bytes":
        return f"{limit} limit {format_size(maximum)}"
    if unit == "seconds":
        return f"{limit} limit {format_duration(maximum)}"
    return f"{limit} limit {int(maximum) if float(maximum).is_integer() else maximum}"


def breach(limit: str, maximum: float, value: float, source: str = "host") -> Breach:
    status = EXIT_WALL_LIMIT if limit == "wall" else EXIT_KILLED
    return Breach(limit, maximum, value, limit_reason(limit, maximum), status, source)


# A CPU hog is a worker that computes without really sleeping: over the last HOG_WINDOW its
# main thread (the one running Tcl) slept (voluntary context switches) fewer than
# HOG_BRIEF_SLEEPS times a second and was running or runnable for HOG_AWAKE of the window
# (/proc/PID/schedstat), whatever share of a core it got; or it ran for HOG_SHARE of a core and
# slept fewer than HOG_SLEEPS times a second. The host puts it in the idle scheduling class for
# the rest of its life, so that on a small machine a spinning tclet cannot delay its neighbours'
# wake-ups (bench/bench_isolation.py). Share alone does not tell a hog: three spinners on two
# cores get 0.66 each, a busy I/O-bound tclet as much, and 60 spinners started at once ~0.03
# each (with share as a gate none was demoted for 2-3 s, and a neighbour's echo p99 was 47-67
# times its p99 alone). Measured on 2 cores beside two spinners: a tight echo loop sleeps
# 11,000-25,000 times a second and is awake 0.71-0.88 of the time; a loop or a memory bomb
# sleeps never; an `after 0` storm sleeps 0-180 times a second (Tcl's notifier between its
# events) and is awake 1.00 of the time (by sleeps alone, never demoted on a quiet machine).
HOG_WINDOW = 0.1  # seconds
HOG_SHARE = 0.3  # of one core, over the window
HOG_SLEEPS = 20.0  # voluntary context switches per second, at most
HOG_BRIEF_SLEEPS = 1000.0  # ... or at most this many, if it was awake HOG_AWAKE of the window
HOG_AWAKE = 0.97
# An output hog keeps the host reading: HOG_OUTPUT bytes of output within one HOG_WINDOW (a
# sustained 2.5 MiB/s). Its worker is demoted the moment it gets there, not at the next look: a
# flood reaches a 1 MiB output quota in about 35 ms, inside one window (tcletd.host.output).
HOG_OUTPUT = 256 * 1024


# The penalty box: a site (an origin's scheme, host and port) one of whose tclets the host ended
# for exhausting a resource (its cpu, memory or commands limit, or its output quota) starts its
# next tclets demoted, until PENALTY seconds after its last offence. Demotion alone is no
# offence: a tclet that computes for a moment at its start is demoted, not ended. Demotion comes
# a HOG_WINDOW into a script at the earliest, and a hostile script relaunched in a loop would
# otherwise have that first window at normal priority every time: all its life, for a memory
# bomb that reaches its limit in ~0.1 s. Measured with bench_isolation.py beside one
# relaunched busy loop: probe echo p99 183 us, 146 us beside one that never ends (124 alone).
# A boxed site also starts at most one tclet every PENALTY_LAUNCH seconds, as a supervisor
# throttles a crash loop: what an idle-class worker still costs its neighbours is kernel work
# (page faults, teardown, fork), which no scheduling class defers. Beside an idle-class process
# that only maps, touches and unmaps 128 MiB, probe p99 was 200 us (125 alone; two idle-class
# spinners: 122); beside the hostile set relaunched at most once a second per kind instead of
# ten times, 149 vs 215 us (114 alone), 8 interleaved rounds.
# The origin is the embedder's word for where a tclet comes from, not the tclet's: a script
# cannot leave the box by changing itself. At most PENALTY_ORIGINS are held, the least recent
# offender leaving first.
PENALTY = 60.0  # seconds
PENALTY_LAUNCH = 1.0  # seconds between two launches from a boxed site, at least
PENALTY_ORIGINS = 4096
OFFENCES = frozenset({"cpu", "memory", "commands"})  # limits whose breach is an offence


class PenaltyHeld(TcletdError):
    """A launch from a site in the penalty box, too soon after its last one."""

    exit_status = EXIT_TEMPFAIL

    def __init__(self, site: str, wait: float) -> None:
        super().__init__(
            f"too many tclets from {site} while it is in the penalty box"
            f" (limit 1 per {format_duration(PENALTY_LAUNCH)}; next in {wait:.1f} s)"
        )
        self.site = site
        self.wait = wait


class PenaltyBox:
    """Sites whose tclets start demoted and at most one per PENALTY_LAUNCH, each until
    PENALTY seconds after its last offence."""

    def __init__(self, seconds: float = PENALTY, capacity: int = PENALTY_ORIGINS) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._until: dict[str, float] = {}  # site -> monotonic time; least recent first
        self._launched: dict[str, float] = {}  # a boxed site's last launch

    def offend(self, site: str, now: float) -> bool:
        """Hold the site until ``seconds`` from now; True if it was not held."""
        if self.seconds <= 0:
            return False
        entered = not self.holds(site, now)
        self._until.pop(site, None)
        self._until[site] = now + self.seconds
        while len(self._until) > self.capacity:
            oldest = next(iter(self._until))
            del self._until[oldest]
            self._launched.pop(oldest, None)
        return entered

    def holds(self, site: str, now: float) -> float:
        """Seconds the site stays in the box; 0 if it is not in it."""
        until = self._until.get(site)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[site]
            self._launched.pop(site, None)
            return 0.0
        return until - now

    def admit_launch(self, site: str, now: float) -> Callable[[], None]:
        """Count a launch from the site and return how to take it back (the launch failed);
        raise PenaltyHeld if the site is boxed and launched too recently (nothing counted)."""
        if not self.holds(site, now):
            return lambda: None
        previous = self._launched.get(site)
        since = now - (previous if previous is not None else -PENALTY_LAUNCH)
        if since < PENALTY_LAUNCH:
            raise PenaltyHeld(site, PENALTY_LAUNCH - since)
        self._launched[site] = now

        def undo() -> None:
            if self._launched.get(site) == now:
                if previous is None:
                    del self._launched[site]
                else:
                    self._launched[site] = previous

        return undo

    def __len__(self) -> int:
        return len(self._until)


@dataclass(frozen=True)
class Sample:
    """The worker's main thread at one look: seconds run, seconds awake (running or runnable)
    and sleeps, so far."""

    time: float
    ran: float
    awake: float
    sleeps: int


OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class FdReserve:
    """Descriptors held back (on /dev/null) for the watchdog's ``/proc`` reads.

    A tclet that floods the host with connections can take every descriptor the host may open;
    reading /proc then fails with EMFILE on each look and, without the reserve, no limit was
    measured (a wall=5s tclet ran 17 s). Released only for one read, synchronously, and taken
    back at once: nothing else in the loop runs in between to take them.
    """

    def __init__(self, count: int = 4) -> None:
        self._count = count
        self._fds: list[int] = []

    def take(self) -> None:
        """Hold ``count`` descriptors (as many as can be had now; the rest at the next call)."""
        while len(self._fds) < self._count:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    @contextlib.contextmanager
    def spent(self) -> Iterator[None]:
        """Free the reserve for the body, then take it back."""
        while self._fds:
            os.close(self._fds.pop())
        try:
            yield
        finally:
            self.take()


RESERVE = FdReserve()


def _slurp(path: str) -> bytes:
    """A small /proc file whole, in one read (no buffered file object: this is the watchdog's
    hot path, thousands of reads a second on a busy host)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


class Meter:
    """Measures one worker process; quiet once it is gone."""

    def __init__(self, pid: int) -> None:
        self.usage = Usage()
        self._stat = f"/proc/{pid}/stat"  # CPU ticks and resident pages
        self._status = f"/proc/{pid}/status"  # voluntary context switches
        self._schedstat = f"/proc/{pid}/schedstat"  # its main thread's, in nanoseconds
        self._last = Sample(0.0, 0.0, 0.0, 0)
        self._window: list[Sample] = []  # oldest first, spanning HOG_WINDOW
        self._gone = False

    def measure(self, *, light: bool = False) -> Usage:
        """The worker's use now; the last one known when even the reserve cannot read it.
        ``light``: CPU and memory only (one read), no sample for the hog window."""
        read = self._read_stat if light else self._read
        if not self._gone:
            try:
                try:
                    read()
                except OSError as exc:
                    if exc.errno not in OUT_OF_FDS:
                        raise
                    with RESERVE.spent():  # the host is out of descriptors: read on the reserve
                        read()
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                self._gone = True  # gone (or unreadable): the sentinel will tell the rest
            except OSError:  # still none to read with: the limits go on from the last known use
                log.warning("watchdog: cannot read /proc (out of descriptors)")
        return self.usage

    def _read(self) -> None:
        """One look, read straight from /proc (psutil's three reads and their wrappers cost the
        host most of its time with hundreds of idle tclets): CPU and resident memory from
        ``stat``, voluntary sleeps from ``status``."""
        self._read_stat()
        status = _slurp(self._status)
        at = status.index(b"voluntary_ctxt_switches:") + len(b"voluntary_ctxt_switches:")
        sleeps = int(status[at : status.index(b"\n", at)])
        ran, awake = self._main_thread(self.usage.cpu)
        self._last = Sample(time.monotonic(), ran, awake, sleeps)

    def _read_stat(self) -> None:
        stat = _slurp(self._stat)
        # After the command name (in parentheses, and it may hold anything): field 3 onwards.
        fields = stat[stat.rindex(b")") + 2 :].split(maxsplit=22)
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14, 15)
        rss = int(fields[21]) * _PAGE_SIZE  # resident pages (field 24)
        self.usage = Usage(cpu, rss)

    def _main_thread(self, cpu: float) -> tuple[float, float]:
        """Seconds the main thread ran and was awake (ns precision; /proc/PID/stat counts 10 ms
        ticks); the process's CPU time, and no awake time, where the kernel keeps no schedstat."""
        try:
            run_ns, wait_ns = _slurp(self._schedstat).split()[:2]
            return int(run_ns) / 1e9, (int(run_ns) + int(wait_ns)) / 1e9
        except (OSError, ValueError):
            return cpu, 0.0

    def restart(self) -> None:
        """Start the window afresh from a measure taken now: the script starts, and the worker's
        own start-up (which sleeps) is not part of it."""
        self.measure()
        self._window = [self._last]

    def hogging(self, now: float) -> float:
        """The CPU share over the last window if the worker spun through it, else 0."""
        last = self._last
        self._window.append(last)
        while len(self._window) > 1 and now - self._window[1].time >= HOG_WINDOW:
            self._window.pop(0)
        first = self._window[0]
        span = last.time - first.time
        if span < HOG_WINDOW:
            return 0.0
        share = (last.ran - first.ran) / span
        sleeps = (last.sleeps - first.sleeps) / span
        awake = (last.awake - first.awake) / span
        if awake >= HOG_AWAKE and sleeps < HOG_BRIEF_SLEEPS:
            return share  # whatever share the others left it: it would take more
        if share >= HOG_SHARE and sleeps < HOG_SLEEPS:
            return share
        return 0.0


def check_limits(limits: Limits, usage: Usage, age: float) -> Breach | None:
    """The first limit reached, if any (0 means no limit; an unlimited one, ``math.inf``, is
    never reached)."""
    if limits.cpu and usage.cpu >= limits.cpu:
        return breach("cpu", limits.cpu, usage.cpu)
    if limits.memory and usage.rss >= limits.memory:
        return breach("memory", limits.memory, usage.rss)
    if limits.wall and age >= limits.wall:
        return breach("wall", limits.wall, age)
    return None


# Tcl's panic on a failed allocation (tclCkalloc.c), its last words before abort().
_ALLOC_PANIC = re.compile(rb"unable to (?:re)?alloc [0-9]+ bytes\n?\Z")


def breach_from_death(
    limits: Limits,
    status: int,
    usage: Usage,
    stderr_tail: bytes,
    oom_kills: int = 0,
    memory_peak: int = 0,
) -> Breach | None:
    """Which limit's backstop in the worker killed it, if one did (attribution, not enforcement).

    The worker's rlimits sit under the host's watch, but a fast enough tclet meets them first:
    RLIMIT_CPU ends it with SIGXCPU; RLIMIT_AS makes an allocation fail, and Tcl panics with
    ``unable to alloc N bytes`` and aborts (a doubling string reaches the address-space cap
    between two watchdog looks). The panic text comes from the untrusted side, but only names
    the death of a worker that did abort; it never ends or spares one. A burst that outruns the
    RSS poll meets the worker's cgroup (:mod:`tcletd.host.cgroups`): the kernel OOM-kills it
    (SIGKILL) and counts the kill in the cgroup (``oom_kills``, read by the host, not told by
    the worker); ``memory_peak`` is the most the cgroup was charged.
    """
    if limits.memory and oom_kills and status == 128 + signal.SIGKILL:
        return breach("memory", limits.memory, max(usage.rss, memory_peak), "cgroup")
    if limits.cpu and status == 128 + signal.SIGXCPU:
        return breach("cpu", limits.cpu, usage.cpu, "backstop")
    if limits.memory and status == 128 + signal.SIGABRT and _ALLOC_PANIC.search(stderr_tail):
        return breach("memory", limits.memory, usage.rss, "backstop")
    return None


class Watchdog:
    """Looks at the active tclets every tick (bounded per tick) and at every tclet once per
    SWEEP; started and stopped by the Host."""

    def __init__(
        self, tclets: Mapping[str, Watched], *, tick: float = TICK, sweep: float = SWEEP
    ) -> None:
        self._tclets = tclets
        self._tick = tick
        self._sweep = sweep
        self._task: asyncio.Task[None] | None = None
        self._cursor = 0
        self._sweep_cursor = 0
        self._owed = 0.0  # sweep looks due and not yet taken (a fraction of one)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        RESERVE.take()
        self._task = loop.create_task(self._run(), name="tcletd-watchdog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            for _ in self.looks(time.monotonic()):
                await asyncio.sleep(0)  # the others' turn between slices

    def look(self, now: float) -> None:
        """One tick's looks, all at once."""
        for _ in self.looks(now):
            pass

    def looks(self, now: float) -> Iterator[None]:
        """One tick: a close look at the next PER_TICK active tclets, a sweep look at the next
        share of the others (all of them once per SWEEP); yields after each SLICE of work. A
        tclet released meanwhile is not looked at."""
        tclets = list(self._tclets.values())
        active = [t for t in tclets if t.active]
        began = time.perf_counter()
        for tclet in self._batch(active):
            if time.perf_counter() - began > SLICE:
                yield
                began = time.perf_counter()
            if self._tclets.get(tclet.id) is tclet:
                self._check(tclet, now, sweep=False)
        # Each tclet's share of a sweep look per tick, carried over: one tclet is swept every
        # SWEEP, not every tick.
        self._owed = min(self._owed + len(tclets) * self._tick / self._sweep, len(tclets))
        share = math.floor(self._owed)
        self._owed -= share
        if share and len(active) < len(tclets):
            start = self._sweep_cursor % len(tclets)
            self._sweep_cursor = start + share
            for tclet in itertools.islice(itertools.cycle(tclets), start, start + share):
                if time.perf_counter() - began > SLICE:
                    yield
                    began = time.perf_counter()
                # An active one had its close look.
                if not tclet.active and self._tclets.get(tclet.id) is tclet:
                    self._check(tclet, now, sweep=True)

    @staticmethod
    def _check(tclet: Watched, now: float, *, sweep: bool) -> None:
        try:
            tclet.check(now, sweep=sweep)
        except Exception:  # one tclet's trouble must not blind the host to the others
            log.exception("watchdog: checking a tclet failed")

    def _batch(self, tclets: list[Watched]) -> list[Watched]:
        if len(tclets) <= PER_TICK:
            return tclets
        start = self._cursor % len(tclets)
        self._cursor = start + PER_TICK
        return list(itertools.islice(itertools.cycle(tclets), start, start + PER_TICK))
