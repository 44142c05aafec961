"""``run``: launch one tclet attached to this connection; its output and its exit come back as
frames, and it ends if the client goes away.

Host side of the trust boundary: the frame's fields and its payload (the script) are the
client's, decoded and checked by :func:`tcletd.shared.launch.decode_run` before anything starts.
A script named by ``url`` is fetched by the host first (:meth:`tcletd.host.host.Host.prepare`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.host.tclet import Tclet
from tcletd.shared.control import FrameError
from tcletd.shared.launch import LaunchRequest, decode_run

Start = Callable[[Session, LaunchRequest], Tclet]


def start_from(session: Session, header: dict[str, Any], payload: bytes, start: Start) -> None:
    """Decode a run or launch frame and ``start`` its tclet: at once, or once its script is
    fetched (a task of the connection, which its client may leave)."""
    request = decode_run(header, payload)
    if request.url is None:
        start(session, request)
        return

    async def fetch_then_start() -> None:
        session.pending = True
        try:
            ready = await session.host.prepare(request)
        finally:
            session.pending = False
        start(session, ready)

    session.spawn(fetch_then_start())


def attached(session: Session, request: LaunchRequest) -> Tclet:
    tclet = session.host.launch_request(
        request,
        on_stdout=session.output("stdout"),
        on_stderr=session.output("stderr"),
        client=session.client,
    )
    session.adopt(tclet)
    tclet.when_started(lambda pid: session.send({"event": "started", "id": tclet.id, "pid": pid}))
    return tclet


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    if session.tclet is not None or session.pending:
        raise FrameError("one run per connection")
    start_from(session, header, payload, attached)


OPERATION = Operation("run", handle, "launch a tclet; the connection follows it to its exit")
