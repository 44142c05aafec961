"""The control plane's audit records: whom the bounded endpoint closed or refused, and why.

Host side of the trust boundary. What triggers these records is what any local client of the
host's user can do at will (open connections, half-send frames), so the records are themselves
bounded: at most :data:`RECORDS_PER_SECOND` of each action in a one-second window, then one
summary record with the count of those not written, when the window ends. A flood of 2,000 idle
connections on a host capped at 16 is 1,985 evictions in 0.2 s: recorded one by one, 1,985
records (~290 KB) per flood, repeatable without end; rate-limited, 11 records (~1.6 KB). Under a
sustained flood of all four actions the log grows by at most 44 records (~6.5 KB) a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from tcletd.host.audit import AuditLog

# Records of one action written per window; the rest are counted into one summary record.
RECORDS_PER_SECOND = 10
WINDOW = 1.0  # seconds


class ControlAudit:
    """Writes ``control`` records through the host's audit log, rate-limited per action."""

    def __init__(
        self,
        log: Callable[[], AuditLog | None],
        per_window: int = RECORDS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``log``: the host's audit log when it has one (the host may start after us)."""
        self._log = log
        self._per_window = per_window
        self._clock = clock
        self._start: dict[str, float] = {}  # action: when its window began
        self._written: dict[str, int] = {}  # action: records written in its window
        self._dropped: dict[str, int] = {}  # action: records not written in its window
        self._timers: dict[str, asyncio.TimerHandle] = {}  # action: its summary, due

    def __call__(self, action: str, client: Mapping[str, int], detail: str) -> None:
        """Record that the endpoint closed (or refused) ``client``'s connection, and why."""
        log = self._log()
        if log is None or not log.enabled:
            return
        now = self._clock()
        start = self._start.get(action)
        if start is None or now - start >= WINDOW:
            self._summarise(action)  # its timer may not have run yet
            self._start[action], self._written[action] = now, 0
            start = now
        if self._written[action] < self._per_window:
            self._written[action] += 1
            self._audit("control", action=action, client=dict(client) or None, detail=detail)
            return
        self._dropped[action] = self._dropped.get(action, 0) + 1
        if action not in self._timers:
            delay = max(0.0, start + WINDOW - now)
            loop = asyncio.get_running_loop()
            self._timers[action] = loop.call_later(delay, self._summarise, action)

    def flush(self) -> None:
        """Write every summary still due (the endpoint stops)."""
        for action in list(self._dropped):
            self._summarise(action)

    def _summarise(self, action: str) -> None:
        timer = self._timers.pop(action, None)
        if timer is not None:
            timer.cancel()
        dropped = self._dropped.pop(action, 0)
        if dropped:
            self._start.pop(action, None)  # the next one opens a new window
            self._audit(
                "control",
                action=action,
                client=None,
                detail=f"{dropped} more not recorded (at most {self._per_window} a second)",
                suppressed=dropped,
            )

    def _audit(self, event: str, **fields: Any) -> None:
        log = self._log()
        if log is not None:
            log.record(event, **fields)
