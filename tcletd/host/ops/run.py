"""``run``: launch one tclet on this connection; its output and its exit come back as frames.

Host side of the trust boundary: the frame's fields and its payload (the script) are the
client's, decoded and checked by :func:`tcletd.shared.launch.decode_run` before anything starts.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.shared.control import FrameError
from tcletd.shared.launch import decode_run


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    if session.tclet is not None:
        raise FrameError("one run per connection")
    tclet = session.host.launch_request(
        decode_run(header, payload),
        on_stdout=session.output("stdout"),
        on_stderr=session.output("stderr"),
        client=session.client,
    )
    session.adopt(tclet)
    pid = tclet.worker.pid if tclet.worker is not None else None
    session.send({"event": "started", "id": tclet.id, "pid": pid})


OPERATION = Operation("run", handle, "launch a tclet; the connection follows it to its exit")
