"""What a control operation is, and what it may do with the connection that asked for it.

Host side of the trust boundary: an operation's handler gets a client's frame as the wire
delivered it (a JSON object, and its payload) and must check every field it reads; whatever it
raises as a :class:`~tcletd.shared.errors.TcletdError` goes back to the client as an error frame
and the connection closes (:class:`tcletd.host.control.ControlConnection`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from tcletd.shared.control import MAX_HEADER

if TYPE_CHECKING:
    from tcletd.host.host import Host
    from tcletd.host.tclet import Tclet


class Session(Protocol):
    """One client's connection, as an operation sees it."""

    host: Host
    tclet: Tclet | None  # the tclet this connection runs, once a run started one
    client: dict[str, int]  # the client's pid and uid, as the kernel saw them at connect
    greeted: bool  # its hello named the host's protocol version
    pending: bool  # a run's script is being fetched
    replies_due: int  # launches whose reply waits for their worker's fork

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        """Queue a frame for the client."""

    def send_frame(self, frame: bytes) -> None:
        """Queue a frame already encoded (:func:`row_frames`'s) for the client."""

    def output(self, stream: str) -> Callable[[bytes], None]:
        """A sink relaying a tclet's stream (``stdout``, ``stderr``) to the client."""

    def adopt(self, tclet: Tclet) -> None:
        """Make ``tclet`` this connection's: it lives as long as the connection, and the client
        gets its exit."""

    def end(self, reason: str, status: int) -> None:
        """End this connection's tclet (in the background)."""

    def spawn(self, request: Coroutine[Any, Any, None]) -> None:
        """Run a request that takes time (a fetch, a wait, a stream) as a task of this
        connection: cancelled if the client goes; a TcletdError it raises is the client's error."""

    async def drained(self) -> None:
        """Until the client has read what was sent it (down to the low-water mark)."""


Handler = Callable[[Session, dict[str, Any], bytes], None]

# Room left in a header for the event's name and the ``more`` flag around the rows.
_FRAME_SLACK = 256


def row_frames(event: str, rows: Sequence[dict[str, Any]]) -> Iterator[bytes]:
    """``{"event": event, "tclets": rows}`` as encoded frames each within the wire's header
    limit: a host of 2,000 tclets has ~400 KiB of ``ps`` rows, and a header longer than 64 KiB
    is a broken frame to every client. All but the last say ``"more": true``; one frame,
    without it, when the rows fit (as before, for any number of tclets a header holds)."""
    # Each row encoded once, by msgspec: encoded twice by json (to measure it, then to send
    # it), a status flood's answers took 60 % of the host's loop beside a hundred tclets.
    name = json.dumps(event).encode()
    batch: list[bytes] = []
    size = 0
    for row in rows:
        encoded = _ROW_ENCODER.encode(row)
        if batch and size + len(encoded) + 1 > MAX_HEADER - _FRAME_SLACK:
            yield b'{"event":%s,"more":true,"tclets":[%s]}\n' % (name, b",".join(batch))
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    yield b'{"event":%s,"tclets":[%s]}\n' % (name, b",".join(batch))


_ROW_ENCODER = msgspec.json.Encoder()


def send_rows(session: Session, event: str, rows: Sequence[dict[str, Any]]) -> None:
    """Send ``rows`` as :func:`row_frames` cuts them."""
    for frame in row_frames(event, rows):
        session.send_frame(frame)


@dataclass(frozen=True)
class Operation:
    """A control operation: the ``op`` a frame names, the handler it runs, and one line of help."""

    name: str
    handle: Handler
    help: str


class NotAnOperation(Exception):
    """Raised by a handler when a frame names its op but has none of its forms; the client gets
    the unknown-op error, which lists the operations the host knows."""
