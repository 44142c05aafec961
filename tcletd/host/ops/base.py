"""What a control operation is, and what it may do with the connection that asked for it.

Host side of the trust boundary: an operation's handler gets a client's frame as the wire
delivered it (a JSON object, and its payload) and must check every field it reads; whatever it
raises as a :class:`~tcletd.shared.errors.TcletdError` goes back to the client as an error frame
and the connection closes (:class:`tcletd.host.control.ControlConnection`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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


@dataclass(frozen=True)
class Operation:
    """A control operation: the ``op`` a frame names, the handler it runs, and one line of help."""

    name: str
    handle: Handler
    help: str


class NotAnOperation(Exception):
    """Raised by a handler when a frame names its op but has none of its forms; the client gets
    the unknown-op error, which lists the operations the host knows."""
