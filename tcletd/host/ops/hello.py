"""``hello``: a client's first frame, naming the control protocol version it speaks.

Host side of the trust boundary: ``protocol`` is the client's word; any other version than the
host's is refused with an error that names both, and the connection is closed.
"""

from __future__ import annotations

from typing import Any

from tcletd.host.ops.base import Operation, Session
from tcletd.shared.control import PROTOCOL, FrameError


def handle(session: Session, header: dict[str, Any], payload: bytes) -> None:
    version = header.get("protocol")
    if session.greeted:
        raise FrameError("hello: already said on this connection")
    if type(version) is not int or version != PROTOCOL:
        raise FrameError(
            f"hello: protocol version {version!r:.20} is not spoken by this host "
            f"(it speaks {PROTOCOL}); use a tcletd client of the host's version"
        )
    session.greeted = True


OPERATION = Operation("hello", handle, "say the protocol version the client speaks (first)")
