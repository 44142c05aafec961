"""``launch``: start a detached tclet, which belongs to the host, not to this connection; the
reply is its id, and the client may go on with other requests or leave.

Host side of the trust boundary: as ``run`` (the same fields, decoded by
:func:`tcletd.shared.launch.decode_run`).
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.host.ops.run import start_from
from tcletd.host.tclet import Tclet
from tcletd.shared.launch import LaunchRequest


def detached(session: Session, request: LaunchRequest) -> Tclet:
    tclet = session.host.launch_request(request, client=session.client, detached=True)
    session.replies_due += 1

    def reply(pid: int | None) -> None:
        session.replies_due -= 1
        session.send({"event": "launched", "id": tclet.id, "pid": pid})

    tclet.when_started(reply)
    return tclet


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    start_from(session, header, payload, detached)


OPERATION = Operation("launch", handle, "start a detached tclet (the host's); reply: its id")
