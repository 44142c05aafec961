"""``signal``: a signal the client got, passed on to the tclet it runs, as the embedded host
would take it: SIGUSR1 asks for a status frame, SIGINT, SIGTERM and SIGHUP end the tclet.

Host side of the trust boundary: ``signum`` is the client's word, and only those four are taken.
"""

from __future__ import annotations

import signal
from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.shared.control import FrameError
from tcletd.shared.states import signal_ending

ENDING = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    signum = header.get("signum")
    if session.tclet is None:
        raise FrameError("signal: no tclet is running on this connection")
    if signum == signal.SIGUSR1:
        session.send({"event": "status", "tclets": [session.tclet.status()]})
    elif signum in ENDING:
        assert isinstance(signum, int)
        session.end(*signal_ending(signum))
    else:
        raise FrameError(f"signal: {signum!r} is not one a client may pass on")


OPERATION = Operation("signal", handle, "pass a signal on to this connection's tclet")
