"""The control wire between an operator's client and a resident host (``tcletd serve``).

Both ends import this module: the host's control server (:mod:`tcletd.host.control`) and every
client (:mod:`tcletd.cli.client`, and tests speaking raw frames). It imports only the standard
library, so that a client costs a Python start and no more.

A Unix stream socket carries frames. A frame is one line of JSON (an object, at most
``MAX_HEADER`` bytes) and, when the object has ``"size": N``, N raw bytes after the newline (a
script, or a chunk of a tclet's output). A stream socket rather than ZeroMQ because the host
must know when a client goes away (its tclet ends with it) and who the client is
(``SO_PEERCRED``: only the host's own user, or root, may use it).

A client's frames name an ``op`` (the host's registry of them is :mod:`tcletd.host.ops`). A run
frame carries a launch request (:class:`tcletd.shared.launch.LaunchRequest`): its fields in the
header, but the script as the payload (UTF-8), so that a script needs no JSON escaping.
"""

from __future__ import annotations

import json

from tcletd.shared.errors import EXIT_USAGE, TcletdError

# The control protocol's version: the host says it in its greeting, a client in its hello, and a
# client speaking another is refused before anything is done for it (docs/protocol.md).
PROTOCOL = 1
MAX_HEADER = 64 * 1024
MAX_SCRIPT = 16 * 1024 * 1024
MAX_OUTPUT_CHUNK = 1024 * 1024  # the host sends chunks of at most READ_CHUNK (host/output.py)

# Not typing.TYPE_CHECKING: importing typing costs a client start-up time (mypy takes any name
# TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    Frame = tuple[dict[str, Any], bytes]


# LaunchRequest's fields, in its order. A client builds its run request as a plain dict of
# these: importing msgspec (which LaunchRequest is made with) would add 25-40 ms to a ~100 ms
# run. tests/host/test_control_ops.py checks that the two lists agree.
RUN_FIELDS = (
    "script", "script_name", "policy", "origin", "argv", "embed_args", "limits", "url"
)  # fmt: skip


class FrameError(TcletdError):
    """A frame that breaks the control wire's rules; the connection is closed. The client's
    mistake, not the host's: its status is a usage error's."""

    exit_status = EXIT_USAGE


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    if payload:
        header = {**header, "size": len(payload)}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def hello() -> bytes:
    """A client's first frame: the protocol version it speaks."""
    return encode({"op": "hello", "protocol": PROTOCOL})


def run_header(fields: dict[str, Any], op: str = "run") -> dict[str, Any]:
    """A run (or launch) frame's header: LaunchRequest's ``fields`` but the script (the frame's
    payload)."""
    unknown = fields.keys() - set(RUN_FIELDS)
    if unknown:  # the host ignores fields it does not know: a misspelt one would be lost
        raise ValueError(f"not launch request fields: {', '.join(sorted(unknown))}")
    return {"op": op, **{k: v for k, v in fields.items() if k != "script"}}


class FrameReader:
    """Incremental frame parser for both ends; ``max_payload`` bounds what the peer may send.

    :meth:`push` buffers bytes and :meth:`next` takes one frame at a time, so that a reader may
    stop after a few frames and take the rest later (the host handles a bounded number of a
    connection's frames per loop turn); :meth:`feed` does both until no frame is complete."""

    def __init__(self, max_payload: int) -> None:
        self._buf = bytearray()
        self._header: dict[str, Any] | None = None
        self._need = 0
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes held: a frame's start not yet complete, and frames not yet taken."""
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and is not yet taken."""
        return self._header is not None or bool(self._buf)

    def push(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> Frame | None:
        """The next complete frame, or None; raises FrameError on a bad one."""
        if self._header is None:
            end = self._buf.find(b"\n", 0, MAX_HEADER + 1)
            if end < 0:
                if len(self._buf) > MAX_HEADER:
                    raise FrameError(f"frame header longer than {MAX_HEADER} bytes")
                return None
            self._header = self._parse_header(bytes(self._buf[:end]))
            del self._buf[: end + 1]
            self._need = self._header.get("size", 0)
        if len(self._buf) < self._need:
            return None
        payload = bytes(self._buf[: self._need])
        del self._buf[: self._need]
        header, self._header = self._header, None
        return header, payload

    def clear(self) -> None:
        """Forget every byte held (the connection is failing)."""
        self._buf = bytearray()
        self._header = None

    def feed(self, data: bytes) -> Iterator[Frame]:
        """Frames completed by ``data``; raises FrameError on the first bad one."""
        self.push(data)
        while (frame := self.next()) is not None:
            yield frame

    def _parse_header(self, line: bytes) -> dict[str, Any]:
        try:
            header = json.loads(line)
        except ValueError as exc:
            raise FrameError(f"frame header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise FrameError("frame header is not a JSON object")
        size = header.get("size", 0)
        if type(size) is not int or not 0 <= size <= self._max_payload:
            raise FrameError(f"frame size: expected 0..{self._max_payload}, got {size!r}")
        return header
