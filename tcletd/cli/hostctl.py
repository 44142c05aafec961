"""The operator's commands on a resident host's tclets: ``launch``, ``ps``, ``logs``, ``kill``,
``wait`` and ``events``.

Operator side, outside the host: each command opens one connection to ``tcletd serve``
(:func:`tcletd.cli.client.connect`, which says hello), sends one request and prints the replies
(docs/protocol.md). Like the rest of the client it imports only the standard library's socket
layer and JSON, so a command costs a Python start. A host's error reply is printed as
``tcletd: MESSAGE`` and its status is the command's.
"""

from __future__ import annotations

import json
import sys

from tcletd.cli.client import HostUnreachable, connect, request_frame
from tcletd.shared.control import MAX_OUTPUT_CHUNK, FrameReader, encode
from tcletd.shared.errors import EXIT_OK, EXIT_SOFTWARE
from tcletd.shared.streams import write_own

TYPE_CHECKING = False  # not typing's: see tcletd.cli.client
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    Frame = tuple[dict[str, Any], bytes]

PS_KEYS = (
    "id", "state", "policy", "origin", "script", "pid", "sockets", "cpu", "rss", "age",
    "status", "reason",
)  # fmt: skip


class HostError(Exception):
    """The host refused the request: its message and the status to exit with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def replies(host: str, frame: bytes) -> Iterator[Frame]:
    """Send ``frame`` and yield the host's replies (not its greeting) until it hangs up; an
    error reply raises HostError."""
    sock = connect(host)
    try:
        sock.sendall(frame)
        reader = FrameReader(MAX_OUTPUT_CHUNK)
        while data := sock.recv(262144):
            for header, payload in reader.feed(data):
                event = header.get("event")
                if event == "error":
                    status = header.get("status")
                    raise HostError(
                        str(header.get("message")), status if type(status) is int else EXIT_SOFTWARE
                    )
                if event != "hello":
                    yield header, payload
    finally:
        sock.close()
    raise HostUnreachable("the tcletd host closed the connection")


def _reply(host: str, frame: bytes, event: str) -> dict[str, Any]:
    for header, _ in replies(host, frame):
        if header.get("event") == event:
            return header
    raise AssertionError("not reached")  # replies raises when the host hangs up


def _rows(host: str, frame: bytes, event: str) -> list[Any]:
    """The rows of a listing the host sends as one or more ``event`` frames (each but the last
    says ``"more": true``: a header holds 64 KiB)."""
    rows: list[Any] = []
    for header, _ in replies(host, frame):
        if header.get("event") == event:
            got = header.get("tclets")
            rows.extend(got if isinstance(got, list) else [])
            if header.get("more") is not True:
                return rows
    raise AssertionError("not reached")  # replies raises when the host hangs up


def _streamed(host: str, frame: bytes, take: Callable[[str, dict[str, Any], bytes], None]) -> int:
    """Hand each reply but the greeting to ``take`` until the host's ``eof`` (0)."""
    for header, payload in replies(host, frame):
        event = str(header.get("event"))
        if event == "eof":
            break
        take(event, header, payload)
    return EXIT_OK


def _said(run: Any) -> int:
    """Run one command; the host's refusal is a one-line error and its status."""
    try:
        return int(run())
    except HostError as exc:
        print(f"tcletd: {exc}", file=sys.stderr)
        return exc.status


def launch(args: Any, host: str) -> int:
    """``tcletd launch``: start a detached tclet; print its id and exit at once."""

    def go() -> int:
        reply = _reply(host, request_frame(args, "launch"), "launched")
        print(reply.get("id"), flush=True)
        return EXIT_OK

    return _said(go)


def ps(args: Any, host: str) -> int:
    """``tcletd ps``: a row per tclet, as a table or (``--json``) a JSON array."""

    def go() -> int:
        rows = _rows(host, encode({"op": "ps", "all": bool(args.all)}), "ps")
        rows = [{k: row.get(k) for k in PS_KEYS} for row in rows if isinstance(row, dict)]
        if args.json:
            print(json.dumps(rows, indent=None), flush=True)
        else:
            print(table(rows, with_exit=bool(args.all)), flush=True)
        return EXIT_OK

    return _said(go)


def table(rows: list[dict[str, Any]], *, with_exit: bool) -> str:
    """``ps`` rows for people: fixed columns, the origin and script last (they are long)."""
    keys = ["id", "state", "policy", "pid", "sockets", "cpu", "rss", "age"]
    keys += ["status", "reason"] if with_exit else []
    keys += ["origin", "script"]
    cells = [[k.upper() for k in keys]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else str(row.get(k)) for k in keys])
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in cells
    )


def logs(args: Any, host: str) -> int:
    """``tcletd logs``: the tclet's output on our stdout and stderr, as it wrote them."""
    streams = ["stdout"] if args.stdout else ["stderr"] if args.stderr else ["stdout", "stderr"]
    request = {"op": "logs", "id": args.id, "follow": args.follow, "tail": args.tail}

    def take(event: str, header: dict[str, Any], payload: bytes) -> None:
        if event in ("stdout", "stderr"):
            write_own(event, payload)
        elif event == "dropped":
            note = f"tcletd: logs: {header.get('bytes')} earlier bytes were not kept"
            print(note, file=sys.stderr, flush=True)

    return _said(lambda: _streamed(host, encode({**request, "streams": streams}), take))


def kill(args: Any, host: str) -> int:
    """``tcletd kill``: end a tclet; print its id."""

    def go() -> int:
        frame = encode({"op": "kill", "id": args.id, "signal": args.signal})
        print(_reply(host, frame, "killed").get("id"), flush=True)
        return EXIT_OK

    return _said(go)


def wait(args: Any, host: str) -> int:
    """``tcletd wait``: until the tclet ends; its status is ours, and why the host ended it (a
    limit, the operator) is on stderr."""

    def go() -> int:
        reply = _reply(host, encode({"op": "wait", "id": args.id}), "exit")
        if reply.get("by_host"):
            print(f"tcletd: tclet ended: {reply.get('reason')}", file=sys.stderr, flush=True)
        status = reply.get("status")
        return status if type(status) is int else EXIT_SOFTWARE

    return _said(go)


def events(args: Any, host: str) -> int:
    """``tcletd events``: the host's audit records as JSON lines."""
    request = {"op": "events", "follow": args.follow, "id": args.id}

    def take(event: str, header: dict[str, Any], payload: bytes) -> None:
        if event == "record":
            line = json.dumps(header.get("record"), separators=(",", ":")) + "\n"
            write_own("stdout", line.encode())
        elif event == "lost":
            note = f"tcletd: events: {header.get('records')} records lost (read too slowly)"
            print(note, file=sys.stderr, flush=True)

    return _said(lambda: _streamed(host, encode(request), take))
