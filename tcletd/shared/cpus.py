"""Which CPUs each of tcletd's processes runs on: the lowest CPU the host may use is left to
tclets that behave.

Used on both sides of the trust boundary, by processes of ours only (nothing here reads what a
tclet or client sent). A host that owns its process and runs tclets side by side keeps its own
threads off that CPU (:func:`keep_off_lowest`: ``tcletd serve``, ``tcletd page``; not a one-shot
``tcletd run``, which has no neighbour to protect, nor an embedder's process unless it asks:
``tcletd.api.leave_a_cpu_to_tclets``). Its zygote runs on
every CPU (its forks and its children's starts are what a burst of launches waits for); a
worker that starts demoted (a crowd, the penalty box) moves off the lowest as it starts, with its
class, before its own start-up; a worker demoted later is moved off it by the host. (Moved after
its start-up instead, a launch storm's 300 starts ran beside the probe, each picked for a tick
now and then: the catalogue together with full deadlines, probe p99 ratio 3.08, 3.53 and 1.96
against 1.51, 1.58 and 0.48 moved first; quick deadlines 3.76, 4.81, 2.51 against 2.62, 2.01,
2.76, interleaved. 500 tclets of one site were all up in 2.96-4.85 s against 3.01-3.53 s.)

Why: on this kernel (6.18, EEVDF, no preemption of a running normal task by a waking one of
equal weight) a task waking on a CPU where the host is in the middle of a control answer or a
watchdog look waits for it, and the kernel does not look for the next CPU, busy with idle-class
workers, when the machine is that busy. Traced on 2 cores (perf sched) beside the whole attack
catalogue, a well-behaved tclet's echo waited 0.5-1.4 ms behind the host's and the attack tool's
turns about once per 50 round trips, which was its p99: 3.1 times its p99 alone (median of 5
runs). With the host, demoted workers and the tool kept off the lowest CPU, 1.5 (median of 5).
A single CPU has nothing to keep free: there every set is the whole machine.

On the CPUs it keeps to, such a host runs first (:func:`run_first`): its loop's thread is in the
real-time class, at the lowest real-time priority. A demoted worker is in the idle class, but
this scheduler picks a runnable task by eligibility before weight: a worker just started is
eligible at once, and one picked runs to the next tick (4 ms here) while the host, having used
its slice, waits. Traced beside the whole catalogue with its full deadlines (300 launch-storm
tclets): the host waited 7.8 s in 55 s, ~30 ms behind each of ~400 idle-class workers, and its
slowest control answer passed 1 s in 2 of 3 runs; in the real-time class, its control p99 went
from 230-300 ms to 26-36 ms and no answer passed 1 s (3 runs each, interleaved). The kernel's
real-time throttle leaves the others 5 % of each CPU even if the host spun, and the host's
children (its zygote) and later threads start in the normal class. Not on a single CPU, where
the host would run ahead of every tclet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

# No dataclasses or functools: the host's factory imports this before it starts the zygote,
# the CLI's first step, and dataclasses alone took 18 ms to import here.


class Placement:
    """The two sets of CPUs a host uses."""

    __slots__ = ("behaving", "rest")

    def __init__(self, behaving: frozenset[int], rest: frozenset[int]) -> None:
        self.behaving = behaving
        """A worker that is not demoted: every CPU the host may use."""
        self.rest = rest
        """The host and demoted workers: all of those but the lowest (all on one CPU)."""

    def spares(self) -> bool:
        """Whether it leaves a CPU to tclets that behave (none on a single CPU)."""
        return self.rest != self.behaving

    def argv(self) -> list[str]:
        """As the zygote's command line takes it (:meth:`from_argv`)."""
        return [",".join(map(str, sorted(cpus))) for cpus in (self.behaving, self.rest)]

    @classmethod
    def from_argv(cls, behaving: str, rest: str) -> Placement:
        """Parse :meth:`argv`'s two words; ValueError, saying which, if one is not a
        comma-separated list of CPU numbers."""
        sets = []
        for name, text in (("behaving", behaving), ("rest", rest)):
            words = text.split(",")
            if not all(w.isdigit() for w in words):
                raise ValueError(f"{name} CPUs: not a comma-separated list of numbers: {text!r}")
            sets.append(frozenset(int(w) for w in words))
        return cls(sets[0], sets[1])


_usable: frozenset[int] | None = None
_placement: Placement | None = None


def usable() -> frozenset[int]:
    """The CPUs this process was given, as first asked (before :func:`keep_off_lowest`)."""
    global _usable
    if _usable is None:
        _usable = frozenset(os.sched_getaffinity(0))
    return _usable


def placement() -> Placement:
    """This host's :class:`Placement`."""
    global _placement
    if _placement is None:
        cpus = usable()
        _placement = Placement(cpus, cpus - {min(cpus)} if len(cpus) > 1 else cpus)
    return _placement


def place(cpus: Iterable[int], tids: Iterable[int] | None = None) -> None:
    """Put the threads ``tids`` of this process (0: the calling one; all of them if None) on
    ``cpus``. One that has ended since it was listed is passed over."""
    wanted = set(cpus)
    if tids is None:
        tids = [int(tid) for tid in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, wanted)


def keep_off_lowest() -> None:
    """Keep this process's threads, and those they start, off the CPU left to tclets."""
    usable()  # taken before the move: a child that widens (:func:`widen`) gets the whole set
    place(placement().rest)


def run_first() -> str | None:
    """Put the calling thread (the host's loop) in the real-time class (``SCHED_FIFO``, priority
    1), the processes and threads it starts reset to the normal class, when the process has CPUs
    of its own (:func:`keep_off_lowest`); None when done or when there is nothing to do, else why
    not (the kernel's refusal: no privilege, or no real-time time in this cgroup).

    The calling thread only: another thread's class changed while it starts races with the C
    library, which reads a thread's policy and its priority in two calls (libzmq's I/O threads
    then aborted, given a real-time priority with the normal policy)."""
    if not placement().spares():
        return None
    try:
        _first()
    except OSError as exc:
        return f"the host stays in the normal scheduling class: {exc.strerror}"
    return None


def refused_first() -> str | None:
    """Why the kernel would refuse :func:`run_first` here (tried on the calling thread, then
    undone), or None if it would not (``tcletd doctor``)."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        _first()
    except OSError as exc:
        return exc.strerror or str(exc)
    os.sched_setscheduler(0, policy, param)
    return None


def _first() -> None:
    """The calling thread in the real-time class at its lowest priority; what it starts, not."""
    os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))


def widen() -> None:
    """In a child of a process that keeps off the lowest CPU, before its exec: every CPU the
    parent was given (what the attack tool measures or measures through: its host, its control
    watch and the probe's echo server; its load stays on the tool's CPUs)."""
    os.sched_setaffinity(0, usable())
