"""``logs``: a tclet's output as it wrote it: what the host kept, then, with ``follow``, the rest
until it ends; the client's slow reading holds the tclet (nothing is lost).

Host side of the trust boundary: ``id``, ``follow``, ``tail`` and ``streams`` are the client's
words, each checked before anything is sent.
"""

from __future__ import annotations

import contextlib
from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.host.outputlog import STREAMS
from tcletd.shared.launch import RequestInvalid


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    found = session.host.table.find(header.get("id"))
    follow, tail, streams = header.get("follow", False), header.get("tail"), header.get("streams")
    if not isinstance(follow, bool):
        raise RequestInvalid(f"logs: follow: expected true or false, got {str(follow)[:20]!r}")
    if tail is not None and (type(tail) is not int or tail < 0):
        raise RequestInvalid(f"logs: tail: expected a count of 0 or more, got {str(tail)[:20]!r}")
    if streams is None:
        streams = list(STREAMS)
    if not isinstance(streams, list) or not streams or not set(streams) <= set(STREAMS):
        raise RequestInvalid(
            f"logs: streams: expected a list of stdout, stderr, got {streams!r:.60}"
        )
    dropped = sum(found.log.dropped[s] for s in streams)
    chunks = session.host.logs(found.id, follow=follow, tail=tail, streams=streams)

    async def relay() -> None:
        if dropped and tail is None:
            session.send({"event": "dropped", "bytes": dropped})
        async with contextlib.aclosing(chunks):  # a client gone: its hold released at once
            async for stream, data in chunks:
                session.send({"event": stream}, data)
                await session.drained()
        session.send({"event": "eof", "id": found.id})

    session.spawn(relay())


OPERATION = Operation("logs", handle, "a tclet's output: what the host kept, then (follow) live")
