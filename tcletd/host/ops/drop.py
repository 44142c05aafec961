"""``drop``: the client's own stdout or stderr is gone (a closed pipe); the host stops relaying
that stream, and the tclet's writes to it fail as they would in tclsh.

Host side of the trust boundary: ``stream`` is the client's word; only the two streams are taken.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import NotAnOperation, Operation, Session

STREAMS = ("stdout", "stderr")


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    stream = header.get("stream")
    if stream not in STREAMS:
        raise NotAnOperation
    if session.tclet is not None:
        session.tclet.output.drop(str(stream))


OPERATION = Operation("drop", handle, "stop relaying one of the tclet's streams to the client")
