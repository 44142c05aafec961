"""The operator's verbs on a host's tclets by id: list, kill, wait, logs and events.

Host side. :class:`tcletd.host.host.Host` has these (the embedding API's ``host.list()``...), and
the resident host's control operations (:mod:`tcletd.host.ops`) call them for ``tcletd ps``,
``kill``, ``wait``, ``logs`` and ``events``. An id is looked up in the host's
:class:`~tcletd.host.registry.TcletTable` (a running or a kept ended tclet, by id or unique
prefix); an unknown one raises :class:`~tcletd.shared.errors.NoSuchTclet`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from tcletd.host.audit import AuditLog
from tcletd.host.follow import follow_audit, follow_log
from tcletd.host.outputlog import STREAMS
from tcletd.host.registry import Ended, TcletTable, kill
from tcletd.shared.states import TcletResult


class TcletVerbs:
    """What an operator does to tclets by id; a host provides its ``table`` and ``audit``."""

    table: TcletTable

    @property
    def audit(self) -> AuditLog | None:
        raise NotImplementedError

    def list(self, *, all: bool = False) -> list[dict[str, object]]:
        """One row per running tclet (with ``all``, the ended ones the host keeps first), with
        the keys of :data:`~tcletd.host.registry.ROW_KEYS`."""
        return self.table.rows(ended=all)

    def kill(self, tclet_id: str, signal: str = "TERM") -> str:
        """End a running tclet as a limit does (``TERM``: asked, then SIGTERM, then SIGKILL
        after the grace; ``KILL``: SIGKILL now), recorded as ``killed by operator``; returns its
        whole id. Raises NoSuchTclet for an unknown id or one that has ended."""
        return kill(self.table.find(tclet_id), signal)

    async def wait(self, tclet_id: str) -> TcletResult:
        """The result of the tclet ``tclet_id`` names, once it has ended."""
        found = self.table.find(tclet_id)
        return found.result if isinstance(found, Ended) else await found.wait()

    def logs(
        self,
        tclet_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        streams: Sequence[str] = STREAMS,
    ) -> AsyncGenerator[tuple[str, bytes], None]:
        """The tclet's output as ``(stream, bytes)``, each stream in the order written (the two
        interleaved as they reached the host, after the worker's buffering): what the host kept
        (``tail``: the last lines of each stream), then with ``follow`` the rest until it ends.
        ``dropped(tclet_id)`` says how many older bytes the host let go."""
        found = self.table.find(tclet_id)
        if isinstance(found, Ended):
            return follow_log(found.log, None, None, streams=streams, tail=tail)
        ended = found.wait if follow else None
        return follow_log(found.log, found.output, ended, streams=streams, tail=tail)

    def dropped(self, tclet_id: str) -> dict[str, int]:
        """Bytes of each stream of the tclet's output the host let go (beyond ``keep_output``)."""
        return dict(self.table.find(tclet_id).log.dropped)

    def events(
        self, *, follow: bool = False, tclet_id: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The host's audit records (the ``--audit`` schema) it still holds (the last 1,000),
        then with ``follow`` each new one; only ``tclet_id``'s if given."""
        audit = self.audit
        if audit is None:
            raise RuntimeError("Host is not started")
        whose = None if tclet_id is None else self.table.find(tclet_id).id
        return follow_audit(audit, follow=follow, tclet=whose)
