"""The resident host's control operations, one module each, registered by name here.

Host side of the trust boundary: each operation takes a client's frame (hostile until its
handler has checked it) on a connection of :mod:`tcletd.host.control`, which only dispatches on
the frame's ``op``. A new operation is a module declaring its ``OPERATION`` (name, handler, one
line of help) and one entry below; the client that sends it is :mod:`tcletd.cli.client`.
"""

from __future__ import annotations

from tcletd.host.ops import drop, events, hello, kill, launch, logs, ps, run, signal, status, wait
from tcletd.host.ops.base import NotAnOperation, Operation, Session

OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        hello.OPERATION,
        run.OPERATION,
        launch.OPERATION,
        ps.OPERATION,
        logs.OPERATION,
        kill.OPERATION,
        wait.OPERATION,
        events.OPERATION,
        status.OPERATION,
        signal.OPERATION,
        drop.OPERATION,
    )
}


def unknown_op(op: object) -> str:
    """What the host says of an op it does not know: the ones it does, in registry order."""
    *rest, last = OPERATIONS
    return f"unknown op {op!r} (expected {', '.join(rest)} or {last})"


__all__ = ["OPERATIONS", "NotAnOperation", "Operation", "Session", "unknown_op"]
