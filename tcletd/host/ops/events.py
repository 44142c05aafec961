"""``events``: the host's audit records (the ``--audit`` schema): those it still holds, then, with
``follow``, each new one. A client that reads too slowly misses records and is told how many.

Host side of the trust boundary: ``follow`` and ``id`` are the client's words, checked first.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.shared.launch import RequestInvalid


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    follow, tclet_id = header.get("follow", False), header.get("id")
    if not isinstance(follow, bool):
        raise RequestInvalid(f"events: follow: expected true or false, got {str(follow)[:20]!r}")
    records = session.host.events(follow=follow, tclet_id=tclet_id)

    async def relay() -> None:
        async with contextlib.aclosing(records):  # a client gone: unsubscribed at once
            async for record in records:
                if record["event"] == "lost" and "tclet" not in record:
                    session.send({"event": "lost", "records": record["records"]})
                else:
                    session.send({"event": "record", "record": record})
                await session.drained()
        session.send({"event": "eof"})

    session.spawn(relay())


OPERATION = Operation("events", handle, "the host's audit records; with follow, as they come")
