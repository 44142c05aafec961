"""The machine's load during a phase, and a process's descriptors, descendants and memory, all
read from /proc (Linux).

On the tool's side of the trust boundary: it reads only the kernel's accounting, never what a
tclet says about itself. ``LoadMeter`` tells whether a latency baseline is worth anything: a
probe's round trips on a machine that something else keeps busy measure that something, not the
host, so the tool withholds its latency verdict when the baseline's ``busy_others`` or ``steal``
passes its threshold. Every function here answers 0 or [] for a process that is gone: processes
end at any moment, a hostile one on purpose.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Cores that processes other than ours may keep busy during a baseline before its latency
# figures stop meaning anything: a quarter of one core already shows in a probe's p99 on a
# small machine, since that probe waits for a CPU the others hold.
BUSY_OTHERS_MAX = 0.25
# The fraction of all CPUs' time the hypervisor may steal: past 5 %, a vCPU is off the real CPU
# often enough that round trips measure the neighbours on the physical machine.
STEAL_MAX = 0.05

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Load:
    """A phase's load, averaged over it. ``busy_others`` and ``busy_total``: cores busy (1.0 =
    one core all the time), with processes other than ours, and in all; ``steal``: the fraction
    of all CPUs' time stolen by the hypervisor; ``seconds``: how long the phase was."""

    busy_others: float
    steal: float
    busy_total: float
    seconds: float = 0.0

    def why_noisy(self) -> str:
        """Why this phase's latencies mean little, or "" when the machine was quiet enough."""
        reasons = []
        if self.busy_others > BUSY_OTHERS_MAX:
            reasons.append(
                f"other processes kept {self.busy_others:.2f} cores busy "
                f"(more than {BUSY_OTHERS_MAX})"
            )
        if self.steal > STEAL_MAX:
            reasons.append(f"the hypervisor stole {self.steal:.1%} (more than {STEAL_MAX:.0%})")
        return "; ".join(reasons)


@dataclass(frozen=True)
class _CpuTimes:
    busy: int  # ticks, all CPUs
    steal: int
    total: int
    cpus: int


def _cpu_times() -> _CpuTimes:
    with open("/proc/stat") as f:
        lines = f.read().splitlines()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    # already counted in user and nice, so it is left out.
    fields = [int(x) for x in lines[0].split()[1:9]]
    fields += [0] * (8 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return _CpuTimes(
        busy=user + nice + system + irq + softirq,
        steal=steal,
        total=sum(fields),
        cpus=max(1, cpus),
    )


def _stat_fields(pid: int) -> list[str] | None:
    """The fields after ``(comm)`` in /proc/PID/stat (state first), or None if it is gone. A
    process names itself (comm may hold spaces and parentheses), so split at the last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()


def _cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(start time, utime + stime) in ticks; the start time tells a reused PID apart."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19]), int(fields[11]) + int(fields[12])


def _children_index() -> dict[int, list[int]]:
    """Every process's children, from a scan of /proc: /proc/PID/task/*/children needs a
    kernel option that not every kernel has."""
    index: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and len(fields) > 1:
            index.setdefault(int(fields[1]), []).append(int(entry))
    return index


def _descendants(pids: Iterable[int], index: dict[int, list[int]]) -> list[int]:
    found: list[int] = []
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        for child in index.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, and so on); [] if it is gone."""
    return _descendants([pid], _children_index())


def fd_count(pid: int) -> int:
    """The descriptors ``pid`` has open now; 0 if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def tcp_inodes() -> set[int]:
    """The inodes of every TCP socket in this process's network namespace (the host's: a
    worker's own namespace is empty, and each socket it holds was made by the host)."""
    inodes: set[int] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)  # the header
                inodes.update(int(line.split()[9]) for line in f)
        except (FileNotFoundError, IndexError, ValueError):
            continue
    return inodes


def tcp_sockets(pid: int, tcp: set[int]) -> int:
    """How many of ``pid``'s descriptors are TCP sockets of ``tcp`` (:func:`tcp_inodes`); 0 if
    it is gone. Exact where a server's count is not: it sees a close late, and beside the whole
    catalogue it serves other attacks too."""
    held = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and int(link[8:-1]) in tcp:
                    held += 1
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return held


def rss(pid: int) -> int:
    """``pid``'s resident memory in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def _uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * CLOCK_TICKS)


class LoadMeter:
    """``start()`` and ``stop()`` around a phase. ``ours``: the PIDs whose CPU, and that of all
    their descendants, is not "others" (the tool, its host, servers, tclets); it is called at
    both ends.

    Only processes alive at ``stop()`` count as ours: one that ended during the phase takes
    the CPU it spent with it, which then shows as others'. So ``busy_others`` errs high, and a
    baseline that passes its threshold really was quiet. A process that appeared during the
    phase counts in full if it started after ``start()``; one older than that but not ours at
    ``start()`` counts nothing (how much of its CPU fell in the phase is unknown), erring the
    same way."""

    def __init__(self, ours: Callable[[], Iterable[int]]) -> None:
        self._ours = ours
        self._cpu: _CpuTimes | None = None
        self._ticks: dict[int, tuple[int, int]] = {}
        self._started_at = 0

    def _our_ticks(self) -> dict[int, tuple[int, int]]:
        roots = [int(p) for p in self._ours()]
        pids = set(roots) | set(_descendants(roots, _children_index()))
        ticks = {}
        for pid in pids:
            sample = _cpu_ticks(pid)
            if sample is not None:
                ticks[pid] = sample
        return ticks

    def start(self) -> None:
        self._started_at = _uptime_ticks()
        self._ticks = self._our_ticks()
        self._cpu = _cpu_times()

    def stop(self) -> Load:
        if self._cpu is None:
            raise RuntimeError("LoadMeter.stop() without start()")
        cpu = _cpu_times()
        ticks = self._our_ticks()
        before, self._cpu = self._cpu, None
        ours = 0
        for pid, (started, used) in ticks.items():
            earlier = self._ticks.get(pid)
            if earlier is not None and earlier[0] == started:
                ours += used - earlier[1]
            elif started >= self._started_at:
                ours += used
        total = cpu.total - before.total
        if total <= 0:  # a phase shorter than a tick: nothing measured
            return Load(busy_others=0.0, steal=0.0, busy_total=0.0)
        per_cpu = total / cpu.cpus  # ticks of wall time the phase lasted
        busy_total = (cpu.busy - before.busy) / per_cpu
        return Load(
            busy_others=max(0.0, busy_total - ours / per_cpu),
            steal=(cpu.steal - before.steal) / total,
            busy_total=busy_total,
            seconds=per_cpu / CLOCK_TICKS,
        )
