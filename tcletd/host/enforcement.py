"""One tclet's enforcement: the watchdog's look, its limits and quotas, demotion and penalties.

Host side of the trust boundary. What the :class:`Enforcer` acts on, the host measures itself:
CPU seconds, resident memory and the wall clock of the worker, its sockets' bytes, its output.
The one figure taken from the worker, its Tcl command count, can only end the worker that
reports it. The verdicts: at a byte quota, shut the tclet's sockets down and stop accepting on
its servers; at a limit or the output quota, end the tclet, and when it exhausted a resource put
its site in the watchdog's PenaltyBox; a worker that hogs a core or the host's reading goes to
the idle scheduling class for the rest of its life and has its output paced. Ending itself is
the :class:`tcletd.host.tclet.Tclet`'s: the Enforcer asks for it.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from tcletd.host.audit import TcletRecords
from tcletd.host.quotas import output_reason
from tcletd.host.watchdog import (
    HOG_WINDOW,
    OFFENCES,
    Breach,
    Meter,
    Usage,
    breach,
    breach_from_death,
    check_limits,
)
from tcletd.policy.quantities import SETTINGS, Limits
from tcletd.shared import protocol as p
from tcletd.shared.states import EXIT_KILLED

if TYPE_CHECKING:
    from tcletd.host.tclet import Tclet


class Enforcer:
    """Holds one tclet to its policy's limits and quotas; owned by that :class:`Tclet`."""

    def __init__(self, tclet: Tclet, audit: TcletRecords) -> None:
        """``audit`` writes the tclet's records."""
        self._tclet = tclet
        self._audit = audit
        self.demoted = False  # its worker is in the idle class (a hog, or its origin's penalty)
        self.moving = False  # its CPU time moved between the last two looks
        self._meter: Meter | None = None  # from the worker's launch on
        self._wall: asyncio.TimerHandle | None = None
        self._limits: Limits | None = None  # the limits ``_caps`` were read from
        self._caps = (math.inf, math.inf, math.inf)  # cpu, memory, wall (inf: none)

    def attach(self, pid: int) -> None:
        """Measure the launched worker; a look falls due when its wall limit does (a resting
        tclet's sweep look comes only once per SWEEP)."""
        self._meter = Meter(pid)
        self._arm_wall()

    def detach(self) -> None:
        """The tclet is released: no more looks of its own."""
        if self._wall is not None:
            self._wall.cancel()
            self._wall = None

    def _arm_wall(self) -> None:
        tclet = self._tclet
        wall = tclet.policy.limits.wall
        if not wall or math.isinf(wall):
            return
        delay = tclet.launched_at + wall - time.monotonic()
        if delay > 0:
            self._wall = tclet.services.loop.call_later(delay, self._wall_due)

    def _wall_due(self) -> None:
        self._wall = None
        tclet = self._tclet
        if tclet.ending is None and tclet.services.tclets.get(tclet.id) is tclet:
            tclet.check(time.monotonic())
            if tclet.ending is None:
                self._arm_wall()  # a granted policy moved the limit on

    def woke(self) -> None:
        """The worker's loop woke from a rest: its hog window starts now (samples from before the
        rest would dilute a spinner's share)."""
        if self._meter is not None:
            self._meter.restart()

    def script_started(self) -> None:
        """The worker's hello: its hog window starts with the script, not with its own start-up
        (which sleeps), and one look comes HOG_WINDOW into it."""
        if self._meter is not None:
            self._meter.restart()
            self._tclet.services.loop.call_later(HOG_WINDOW, self._first_look)

    def usage(self) -> Usage | None:
        """The worker's resource use at the watchdog's last look (no /proc read: a status
        request costs none); None before its launch."""
        return self._meter.usage if self._meter is not None else None

    # ---- the watchdog's look ------------------------------------------------------------------

    def check(self, now: float, *, sweep: bool = False) -> bool:
        """One look: count bytes, byte quotas, measure, limits, hog (not on a ``sweep``: one
        /proc read, no hog window). False when there is no worker to look at yet or a limit ends
        the tclet (then nothing more is worth a look)."""
        if self._meter is None:
            return False
        tclet = self._tclet
        tclet.quotas.poll()
        self._enforce_byte_quotas()
        cpu = self._meter.usage.cpu
        usage = self._meter.measure(light=sweep)
        self.moving = usage.cpu != cpu
        limits = tclet.policy.limits
        if limits is not self._limits:  # a granted policy brings its own (read once: a Limits
            self._limits = limits  # attribute costs a microsecond, this the host's hot path)
            self._caps = (
                limits.cpu or math.inf,
                limits.memory or math.inf,
                limits.wall or math.inf,
            )
        max_cpu, max_rss, max_age = self._caps
        age = now - tclet.launched_at
        if usage.cpu >= max_cpu or usage.rss >= max_rss or age >= max_age:
            found = check_limits(limits, usage, age)
            if found is not None:
                self._breached(found)
                tclet.end_soon(found.reason, found.status)
                return False
        if not sweep:
            self._demote_if_hog(now)
        return True

    def _enforce_byte_quotas(self) -> None:
        tclet = self._tclet
        over = tclet.quotas.over_bytes()
        if over is None:
            return
        quota, limit, value = over
        self._audit("quota", quota=quota, limit=limit, value=value, action="sockets shut down")
        tclet.quotas.shut_down()
        # Listening sockets live in the host: stop accepting; the slot stays until the close.
        tclet.sockets.stop_accepting()
        tclet.services.hub.send(
            tclet.id, p.QuotaExceeded(quota=quota, message=tclet.quotas.revoked)
        )

    # ---- limits -------------------------------------------------------------------------------

    def limit_hit(self, msg: p.LimitHit, commands: int) -> None:
        """The worker reached a limit it enforces itself and is exiting; make sure it does.
        ``commands``: the count its last heartbeat reported."""
        tclet = self._tclet
        limits = tclet.policy.limits  # a granted policy moved the worker's limits with it
        # Only a limit the worker was given (its Setting names a WorkerSpec field) can be hit there.
        given = SETTINGS.get(msg.limit)
        maximum = (
            getattr(limits, msg.limit) if given and given.worker and given.table == "limits" else 0
        )
        if not maximum or math.isinf(maximum):  # 0 or unlimited: the worker was given none
            tclet.violation(f"limit hit for a limit it was not given: {msg.limit[:40]!r}")
            return
        # The host cannot see inside the interpreter: the value is what the worker reports.
        value = max(commands, maximum) if msg.limit == "commands" else maximum
        found = breach(msg.limit, maximum, value, "worker")
        if tclet.ending is None:
            self._breached(found)
        tclet.end_soon(found.reason, found.status, after=tclet.services.supervisor.grace)

    def death_breach(self, status: int) -> Breach | None:
        """The limit whose backstop in the worker killed it with ``status``, if one did; a
        breach found is recorded as one the host found."""
        if self._meter is None:
            return None
        tclet = self._tclet
        worker = tclet.worker
        found = breach_from_death(
            tclet.policy.limits,
            status,
            self._meter.usage,
            tclet.output.stderr_tail,
            worker.oom_kills if worker is not None else 0,
            worker.memory_peak if worker is not None else 0,
        )
        if found is not None:
            self._breached(found)
        return found

    def _breached(self, found: Breach) -> None:
        self._audit.breach(found)
        if found.limit in OFFENCES:
            self._offend(found.reason)

    def _offend(self, why: str) -> None:
        """Put the origin's site in the penalty box (audited as it enters), or keep it there."""
        tclet = self._tclet
        penalties = tclet.services.penalties
        if penalties.offend(tclet.origin.site, time.monotonic()):
            self._audit("penalty", site=tclet.origin.site, seconds=penalties.seconds, why=why)

    # ---- demotion -----------------------------------------------------------------------------

    def demote(self, **why: object) -> None:
        """Idle class for the rest of the worker's life, and its output paced."""
        worker = self._tclet.worker
        if not self.demoted and worker is not None and worker.demote():
            self.demoted = True
            self._tclet.output.pace()
            self._audit("demoted", **why, sched="idle")

    def _demote_if_hog(self, now: float) -> None:
        assert self._meter is not None
        if self.demoted:
            return  # for life: no need to keep sampling its window
        share = self._meter.hogging(now)
        if share:
            self.demote(cpu_share=round(share, 2))

    def _first_look(self) -> None:
        """One look HOG_WINDOW into the script, off the tick: a spinner relaunched in a loop is
        demoted ~0.1 s into each life instead of up to two ticks (measured 170-220 ms)."""
        tclet = self._tclet
        running = tclet.services.tclets.get(tclet.id) is tclet
        if self._meter is not None and tclet.ending is None and running:
            self._meter.measure()
            self._demote_if_hog(time.monotonic())

    # ---- output (OutputRelay's callbacks) -----------------------------------------------------

    def over_output_quota(self) -> None:
        tclet = self._tclet
        if tclet.ending is None:
            limit = tclet.quotas.quotas.output_bytes
            self._audit(
                "quota",
                quota="output_bytes",
                limit=limit,
                value=tclet.quotas.output,
                action="ended",
            )
            tclet.end_soon(output_reason(limit), EXIT_KILLED)
            self._offend(output_reason(limit))

    def output_hog(self, window_bytes: int) -> None:
        self.demote(output_bytes=window_bytes)
