"""``status``: one entry per tclet running on the host, for ``tcletd status``.

Host side of the trust boundary: it reads nothing from the frame but its op.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session, send_rows


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    send_rows(session, "status", session.host.status())


OPERATION = Operation("status", handle, "list every tclet running on the host")
