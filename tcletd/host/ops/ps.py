"""``ps``: one row per tclet of the host (with ``all``, the ended ones it keeps too).

Host side of the trust boundary: ``all`` is the client's word, taken only as a boolean.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session, send_rows
from tcletd.shared.launch import RequestInvalid


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    every = header.get("all", False)
    if not isinstance(every, bool):
        raise RequestInvalid(f"ps: all: expected true or false, got {str(every)[:20]!r}")
    send_rows(session, "ps", session.host.list(all=every))


OPERATION = Operation("ps", handle, "list the host's tclets (all: the ended ones it keeps too)")
