"""``kill``: end one of the host's tclets, as a limit does, for the operator.

Host side of the trust boundary: ``id`` and ``signal`` are the client's words, checked by
:meth:`tcletd.host.host.Host.kill` (an id it has; ``TERM`` or ``KILL``).
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    found = session.host.table.find(header.get("id"))
    tclet_id = session.host.kill(found.id, header.get("signal", "TERM"))
    session.send({"event": "killed", "id": tclet_id})


OPERATION = Operation("kill", handle, "end a tclet (TERM: with the grace period; KILL: now)")
