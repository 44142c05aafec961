"""``wait``: the exit of one of the host's tclets, when it comes (at once if it has ended).

Host side of the trust boundary: ``id`` is the client's word, looked up by the host's table.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    found = session.host.table.find(header.get("id"))

    async def until_it_ends() -> None:
        result = await session.host.wait(found.id)
        exit_frame = {"event": "exit", "id": found.id, "status": result.status}
        session.send({**exit_frame, "reason": result.reason, "by_host": result.by_host})

    session.spawn(until_it_ends())


OPERATION = Operation("wait", handle, "wait for a tclet to end; reply: its exit")
