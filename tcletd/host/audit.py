"""The audit log: one JSON line per decision, lifecycle event, quota and limit event.

Host side of the trust boundary. Records are written by the host only; nothing a tclet says is
written unescaped (JSON encoding does that) or unbounded (request words are capped by the wire).
:class:`TcletRecords` writes one tclet's records, each with the fields every record carries; the
fields of each event are documented in ``docs/audit.md``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from tcletd.host.quotas import QuotaRefused
    from tcletd.host.watchdog import Breach
    from tcletd.policy import Decision

log = logging.getLogger(__name__)

# Records kept in memory for ``tcletd events`` (without --follow: what happened lately).
KEEP_RECORDS = 1000
Subscriber = Callable[[dict[str, Any]], None]


class AuditLog:
    """Appends JSON lines to a file (if it has one), keeps the last ``keep`` records in memory and
    hands each new one to its subscribers (``tcletd events``)."""

    def __init__(self, path: str | Path | None = None, keep: int = KEEP_RECORDS) -> None:
        self.path = Path(path) if path else None
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()
        self.lost = 0  # records that could not be written
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._subscribers: list[Subscriber] = []
        if self.path is not None:
            self._file = self.path.open("ab", buffering=0)

    @property
    def enabled(self) -> bool:
        """Whether records are wanted: the recent ones are always kept for ``tcletd events``,
        unless ``keep`` is 0 and there is no file."""
        return self._file is not None or self.recent.maxlen != 0 or bool(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Hand ``subscriber`` every record from now on; returns what stops it."""
        self._subscribers.append(subscriber)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(subscriber)

        return stop

    def record(self, event: str, **fields: Any) -> None:
        self.add({"time": round(time.time(), 6), "event": event, **fields})

    def add(self, entry: dict[str, Any]) -> None:
        """Write a record already built (``time`` and ``event`` first), as :meth:`record` does."""
        self.recent.append(entry)
        if self._subscribers:
            for subscriber in list(self._subscribers):
                subscriber(entry)
        if self._file is None:
            return
        try:
            # Opened once, at start: writing needs no new descriptor, so the log goes on when
            # the host is out of them (EMFILE).
            self._file.write(self._encoder.encode(entry) + b"\n")
        except OSError as exc:  # a full disk: the enforcement that called us must go on
            if not self.lost:
                log.error("audit: cannot write %s: %s (records are being lost)", self.path, exc)
            self.lost += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TcletRecords:
    """One tclet's records: ``records(event, **fields)`` plus the events with a shape."""

    def __init__(self, log: AuditLog, tclet_id: str, origin: str, policy: Callable[[], str]):
        self._log = log
        self._tclet = tclet_id
        self._origin = origin
        self._policy = policy  # the policy in force when the record is written

    def __call__(self, event: str, **fields: Any) -> None:
        # The whole record in one dict (AuditLog.record would merge the fields twice more):
        # a decision is written per request, on the grant's path.
        self._log.add(
            {
                "time": round(time.time(), 6),
                "event": event,
                "tclet": self._tclet,
                "origin": self._origin,
                "policy": self._policy(),
                **fields,
            }
        )

    def decision(
        self,
        action: str,
        host: str,
        port: str,
        d: Decision | None,
        why: str,
        lookup_ms: float | None = None,
    ) -> None:
        """``lookup_ms``: how long the host's lookup of the name took; None when it made none."""
        if not self._log.enabled:
            return
        self(
            "decision",
            action=action,
            host=host,
            port=port,
            canonical_host=d.canonical_host if d else None,
            addresses=[str(a) for a in d.checked] if d else [],
            decision="allowed" if d and d.allowed else "denied",
            rules=list(d.rules) if d else [],
            reason=why,
            lookup=lookup_ms is not None,
            lookup_ms=None if lookup_ms is None else round(lookup_ms, 3),
        )

    def refused(self, exc: QuotaRefused, request: str, host: str, port: str) -> None:
        """A request refused by a quota (no decision was taken for it)."""
        self(
            "quota",
            quota=exc.quota,
            limit=exc.limit,
            value=exc.value,
            action="refused",
            request=request,
            host=host,
            port=port,
        )

    def breach(self, found: Breach) -> None:
        self(
            "limit",
            limit=found.limit,
            maximum=found.maximum,
            value=round(found.value, 3),
            reason=found.reason,
            source=found.source,
        )
