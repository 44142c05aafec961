"""Which tclets a host has: those running, and the last ones that ended, for ``ps``, ``logs``,
``kill`` and ``wait`` by id.

Host side. Running tclets are the host's live table (``Services.tclets``, which the watchdog walks);
an ended tclet leaves it and is kept here as a small record (its last row, its result and its
output log), the last ``keep`` of them, oldest forgotten first. Their kept output is bounded as a
whole too (``keep_output``): past it, the oldest ended tclets' logs are let go, so that a host that
ran thousands of chatty tclets holds at most that much for them.

A request names a tclet by its id or a unique prefix of it (at least four digits), as an
operator types it; anything else is a one-line :class:`~tcletd.shared.errors.NoSuchTclet`.
"""

from __future__ import annotations

import signal
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tcletd.host.ids import MIN_PREFIX
from tcletd.host.outputlog import OutputLog
from tcletd.shared.errors import NoSuchTclet
from tcletd.shared.launch import RequestInvalid
from tcletd.shared.states import EXIT_KILLED, EXIT_TERMINATED, TcletResult

if TYPE_CHECKING:
    from tcletd.host.tclet import Tclet

DEFAULT_KEEP_ENDED = 1000
DEFAULT_KEEP_OUTPUT = 64 << 20
ROW_KEYS = (
    "id", "state", "policy", "origin", "script", "pid", "sockets", "cpu", "rss", "age",
    "status", "reason",
)  # fmt: skip

Row = dict[str, object]


def row_of(tclet: Tclet, result: TcletResult | None = None) -> Row:
    """What ``ps`` shows of a tclet: its status entry's parts, its origin and script, and once it
    ended its exit status and reason."""
    status = tclet.status()
    return {
        "id": tclet.id,
        "state": status["state"],
        "policy": status["policy"],
        "origin": tclet.origin.url,
        "script": tclet.spec.script_name,
        "pid": status["pid"],
        "sockets": status["sockets"],
        "cpu": status["cpu"],
        "rss": status["rss"],
        "age": status["age"],
        "status": None if result is None else result.status,
        "reason": None if result is None else result.reason,
    }


@dataclass
class Ended:
    """An ended tclet as the host keeps it."""

    id: str
    row: Row
    result: TcletResult
    log: OutputLog


class TcletTable:
    """The host's tclets by id: ``running`` (the host's live table) and the ended ones kept."""

    def __init__(
        self,
        running: Mapping[str, Tclet],
        *,
        keep: int = DEFAULT_KEEP_ENDED,
        keep_output: int = DEFAULT_KEEP_OUTPUT,
    ) -> None:
        self._running = running
        self.keep = keep
        self.keep_output = keep_output
        self._ended: OrderedDict[str, Ended] = OrderedDict()  # oldest first
        self._ended_output = 0

    def ended(self, tclet: Tclet, result: TcletResult) -> None:
        """Record that ``tclet`` ended; forget the oldest past the bounds."""
        tclet.log.close()
        entry = Ended(tclet.id, row_of(tclet, result), result, tclet.log)
        self._ended[tclet.id] = entry
        self._ended_output += entry.log.size
        while len(self._ended) > self.keep:
            _, gone = self._ended.popitem(last=False)
            self._ended_output -= gone.log.size
        for old in self._ended.values():
            if self._ended_output <= self.keep_output:
                break
            self._ended_output -= old.log.size
            old.log.discard()

    def find(self, ref: object) -> Tclet | Ended:
        """The tclet ``ref`` names: an id, or a unique prefix of one."""
        if not isinstance(ref, str) or not ref:
            raise NoSuchTclet(f"expected a tclet id (a string), got {str(ref)[:40]!r}")
        found = self._running.get(ref) or self._ended.get(ref)
        if found is not None:
            return found
        if len(ref) < MIN_PREFIX:
            raise NoSuchTclet(f"no such tclet: {ref[:40]} (give {MIN_PREFIX} digits or more)")
        matches = [k for k in (*self._running, *self._ended) if k.startswith(ref)]
        if not matches:
            raise NoSuchTclet(f"no such tclet: {ref[:40]}")
        if len(matches) > 1:
            raise NoSuchTclet(f"tclet id {ref!r} is ambiguous: {', '.join(matches[:5])}")
        return self._running.get(matches[0]) or self._ended[matches[0]]

    def rows(self, *, ended: bool = False) -> list[Row]:
        """One row per running tclet, oldest first; with ``ended``, the kept ended ones first."""
        live = [row_of(t) for t in list(self._running.values())]
        if not ended:
            return live
        return [e.row for e in self._ended.values()] + live


KILLED_BY_OPERATOR = "killed by operator"
KILL_SIGNALS = {"TERM": EXIT_TERMINATED, "KILL": EXIT_KILLED}


def kill(found: Tclet | Ended, signal_name: object) -> str:
    """End the running tclet ``found`` as a limit does, for the operator; its id."""
    if signal_name not in ("TERM", "KILL"):
        raise RequestInvalid(f"kill: signal: expected TERM or KILL, got {str(signal_name)[:20]!r}")
    assert isinstance(signal_name, str)
    if isinstance(found, Ended):
        raise NoSuchTclet(f"tclet {found.id} has already ended")
    found.end_soon(KILLED_BY_OPERATOR, KILL_SIGNALS[signal_name])
    if signal_name == "KILL" and found.worker is not None:
        found.worker.signal(signal.SIGKILL)
    return found.id
