"""Verdicts: whether an attack was contained, from what the tool saw, never from what the
attack's tclets printed.

Client side of the trust boundary. Each judge (``judge:`` in a catalogue file's header) reads
:class:`Evidence` the runner gathered (the tclets' exits as the host reported them, the local
servers' own counts, the DNS server's query log, the host's answers, descriptors, processes
and memory seen in ``/proc``) and gives a verdict and the figure that shows it. Every attack
must, besides its judge, leave nothing behind and leave the host answering.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tcletd.attack.catalogue import Attack
from tcletd.attack.probes import percentile
from tcletd.attack.targets import Run

# A control answer slower than this means the attack reached the host's loop.
CONTROL_MAX_MS = 1000.0
# The most sockets one tclet may hold at once and be called contained, whatever its quota says:
# a policy whose quota is higher (or that has none in effect) is reported, with the figure.
SOCKETS_BOUND = 64
WORKER_FDS_MAX = 64  # a worker's own descriptors: its stdio, its link, its sockets' few
HOST_GROWTH_MAX = 64 << 20  # bytes of host memory an attack may cost while it runs
# A neighbour's lookup stuck behind the attacker's would take the resolver's 3 s timeout (the
# slow DNS server holds its answers 5 s); a second is far from that and far above a connect
# slowed only by a busy CPU (0.44 s beside the whole catalogue, measured).
NEIGHBOUR_CONNECT_MAX_MS = 1000.0


@dataclass
class Evidence:
    attack: Attack
    runs: list[Run]
    seconds: float
    deadline: float
    sockets_quota: int | None = None
    peak_connections: int = 0
    listener_hits: int = 0
    leak_queries: list[str] = field(default_factory=list)
    neighbour_ms: list[float] = field(default_factory=list)
    neighbour_errors: list[str] = field(default_factory=list)
    host_growth: int = 0
    worker_fds_max: int = 0
    demoted: bool = False
    control_ms: list[float] = field(default_factory=list)
    control_failures: list[str] = field(default_factory=list)
    leftover_fds: int = 0
    leftover_procs: int = 0
    # Per attack: the most TCP sockets one of its workers held at once (/proc, every 0.1 s).
    worker_tcp: dict[str, int] = field(default_factory=dict)


def stopper(run: Run) -> str:
    """The mechanism that ended ``run``, in the catalogue's words (``stopped-by``)."""
    if run.exit is None and run.closed:
        return "deadline"
    if run.exit is None:
        refused = (run.refused or "").lower()
        if "penalty" in refused:
            return "penalty-box"
        return "control-bounds" if refused else "deadline"
    reason, status = run.exit.reason, run.exit.status
    for limit in ("cpu", "memory", "commands", "wall"):
        if reason.startswith(f"{limit} limit"):
            return limit
    if "quota" in reason:
        return "output" if "output" in reason else "sockets"
    if reason == "client went away":
        return "deadline"
    if reason.startswith("signal"):
        return "signal"
    if reason == "exit":
        return "error" if status == 1 else "exit"
    return reason.split(" ")[0]


def ended_by(runs: list[Run]) -> tuple[str, int | None]:
    """What ended the first run (the attack's own tclet): its reason and status."""
    if not runs:
        return "not started", None
    first = runs[0]
    if first.exit is not None:
        return first.exit.reason, first.exit.status
    if first.closed:
        return "the tool, at its deadline", None
    return f"refused: {first.refused}", None


Judge = Callable[[Evidence], tuple[bool, str]]


def _ended(ev: Evidence) -> tuple[bool, str]:
    stoppers = [stopper(r) for r in ev.runs]
    unexpected = sorted({s for s in stoppers if s not in ev.attack.stopped_by})
    reason, _status = ended_by(ev.runs)
    if "deadline" in unexpected:
        return False, f"still running at its {ev.deadline:g} s deadline: nothing stopped it"
    if unexpected:
        return (
            False,
            f"ended by {', '.join(unexpected)}, not by {' or '.join(ev.attack.stopped_by)}",
        )
    return True, f"ended by {reason} after {ev.seconds:.1f} s"


def _survives(ev: Evidence) -> tuple[bool, str]:
    worst = max(ev.control_ms, default=0.0)
    return True, f"harmless where it ran; the host's slowest answer {worst:.0f} ms"


def _peak_sockets(ev: Evidence) -> tuple[bool, str]:
    quota = ev.sockets_quota
    bound = SOCKETS_BOUND if quota is None else min(quota, SOCKETS_BOUND)
    said = "no quota" if quota is None else f"quota {quota}"
    most = ev.worker_tcp.get(ev.attack.name, 0)
    held = (
        f"held {most} TCP sockets at once at most ({said}; bound {bound}; the "
        f"echo server saw {ev.peak_connections})"
    )
    # The worker's own descriptors (read in /proc every 0.1 s) are the verdict. The echo server
    # sees every connection, also between two reads, but counts one until it sees its close,
    # a moment after the tclet's next connect (10-11 seen at quota 8 while the worker held 8),
    # and beside the whole catalogue it serves other attacks too: past twice the bound, it
    # tells what the reads missed.
    return most <= bound and ev.peak_connections <= 2 * bound, held


def _worker_fds(ev: Evidence) -> tuple[bool, str]:
    return (
        ev.worker_fds_max <= WORKER_FDS_MAX,
        f"its worker held {ev.worker_fds_max} descriptors at most",
    )


def _host_memory(ev: Evidence) -> tuple[bool, str]:
    mib = ev.host_growth / (1 << 20)
    return ev.host_growth <= HOST_GROWTH_MAX, f"the host grew by {mib:.1f} MiB"


def _demoted(ev: Evidence) -> tuple[bool, str]:
    if ev.demoted:
        return True, "demoted to the idle scheduling class"
    stoppers = {stopper(r) for r in ev.runs}
    if stoppers & {"cpu", "commands"}:
        return True, f"ended by {ended_by(ev.runs)[0]} before it was seen demoted"
    return False, f"neither demoted nor ended by a limit in {ev.deadline:g} s"


def _dns_queries(ev: Evidence) -> tuple[bool, str]:
    if not ev.leak_queries:
        return True, "0 queries for denied names reached the DNS server"
    shown = ", ".join(sorted(set(ev.leak_queries))[:3])
    return False, f"{len(ev.leak_queries)} queries for denied names reached the DNS server: {shown}"


def _neighbour_connect(ev: Evidence) -> tuple[bool, str]:
    if not ev.neighbour_ms:
        errors = "; ".join(ev.neighbour_errors[:2]) or "no connect measured"
        return False, f"the neighbour connected not once: {errors}"
    worst = max(ev.neighbour_ms) / 1000
    p99 = percentile(ev.neighbour_ms, 0.99) / 1000
    return (
        worst <= NEIGHBOUR_CONNECT_MAX_MS and not ev.neighbour_errors,
        f"the neighbour's connects: p99 {p99:.1f} ms, slowest {worst:.1f} ms"
        + (f", {len(ev.neighbour_errors)} failed" if ev.neighbour_errors else ""),
    )


def _listener(ev: Evidence) -> tuple[bool, str]:
    return ev.listener_hits == 0, f"{ev.listener_hits} connections reached the listener"


def _host_responsive(ev: Evidence) -> tuple[bool, str]:
    worst = max(ev.control_ms, default=0.0)
    started = sum(1 for r in ev.runs if r.tclet_id is not None)
    waiting = sum(1 for r in ev.runs if r.tclet_id is None and r.closed)
    failed = [r.refused for r in ev.runs if r.tclet_id is None and r.refused]
    # A launch still queued at the deadline is the host pacing a storm, not losing it; one that
    # failed without the host's own refusal (a broken connection) is a loss.
    lost = [f for f in failed if f.startswith(("cannot connect", "connection failed", "the host"))]
    ok = worst <= CONTROL_MAX_MS and not ev.control_failures and started > 0 and not lost
    why = f"the host's slowest answer {worst:.0f} ms; {started} of {len(ev.runs)} launches ran"
    if waiting:
        why += f", {waiting} still starting at the deadline"
    if failed:
        why += f", {len(failed)} refused ({failed[0]})"
    if ev.control_failures:
        why += f"; {len(ev.control_failures)} requests failed ({ev.control_failures[0]})"
    return ok, why


JUDGES: dict[str, Judge] = {
    "ended": _ended,
    "survives": _survives,
    "peak-sockets": _peak_sockets,
    "worker-fds": _worker_fds,
    "host-memory": _host_memory,
    "demoted": _demoted,
    "dns-queries": _dns_queries,
    "neighbour-connect": _neighbour_connect,
    "listener": _listener,
    "host-responsive": _host_responsive,
}


# Judges about what an attack must never achieve (a leak, a hold, a stall), as against when
# it must end: beside the whole catalogue, an attack starved of CPU by forty others may not
# reach its limit in its time, and that is no escape.
SAFETY = frozenset(JUDGES) - {"ended", "demoted"}


def verdict(ev: Evidence, *, together: bool = False) -> tuple[bool, str]:
    """The attack's judge, then what every attack must also do: leave nothing behind, and
    leave the host answering. ``together``: beside the whole catalogue, where only the safety
    judges apply."""
    judge = ev.attack.judge if not together or ev.attack.judge in SAFETY else "survives"
    contained, why = JUDGES[judge](ev)
    if ev.leftover_fds or ev.leftover_procs:
        contained = False
        why += f"; left {ev.leftover_fds} descriptors and {ev.leftover_procs} processes behind"
    worst = max(ev.control_ms, default=0.0)
    if ev.attack.judge != "host-responsive" and worst > CONTROL_MAX_MS:
        contained = False
        why += f"; the host's control answers stalled ({worst:.0f} ms)"
    if ev.attack.judge != "host-responsive" and ev.control_failures:
        contained = False
        why += f"; {len(ev.control_failures)} control requests failed ({ev.control_failures[0]})"
    return contained, why
