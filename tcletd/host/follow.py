"""Following a tclet's output and the host's audit records as async iterators, with bounds.

Host side. These are what :meth:`tcletd.host.host.Host.logs` and ``Host.events`` return, and
what the control operations ``logs`` and ``events`` relay to a client. A consumer that
reads slower than the producer is handled as each producer can bear: a tclet's output holds the
tclet (its relay stops reading, the worker's writes block: nothing is lost, the host buffers
at most ``HIGH_WATER`` bytes for the consumer); audit records cannot wait, so past ``MAX_RECORDS``
queued the follower skips them and is told how many (a ``lost`` record).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from tcletd.host.outputlog import STREAMS, Chunk, OutputLog

if TYPE_CHECKING:
    from tcletd.host.audit import AuditLog
    from tcletd.host.output import OutputRelay

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
MAX_RECORDS = 10_000


async def follow_log(
    log: OutputLog,
    relay: OutputRelay | None,
    ended: Callable[[], Awaitable[object]] | None,
    *,
    streams: Iterable[str] = STREAMS,
    tail: int | None = None,
) -> AsyncGenerator[Chunk, None]:
    """``log``'s kept chunks of ``streams`` (the last ``tail`` lines of each), then, while
    ``ended()`` is pending (a running tclet's end; None: do not follow), each new one until the
    tclet ends. ``relay`` is held while more than HIGH_WATER bytes wait for the consumer."""
    wanted = frozenset(streams)
    queue: deque[Chunk] = deque()
    waiting = 0
    held = False
    wake = asyncio.Event()
    me = object()  # this follower, as a holder of the relay

    def take(stream: str, data: bytes) -> None:
        nonlocal waiting, held
        if stream in wanted:
            queue.append((stream, data))
            waiting += len(data)
            wake.set()
            if relay is not None and not held and waiting > HIGH_WATER:
                held = True
                relay.hold(True, me)

    # The history and the subscription are taken in one step: no chunk falls between them.
    history = log.history(wanted, tail)
    stop = log.follow(take) if ended is not None else None
    try:
        for chunk in history:
            yield chunk
        if ended is None or stop is None:
            return
        end = asyncio.ensure_future(ended())
        try:
            while True:
                while queue:
                    stream, data = queue.popleft()
                    waiting -= len(data)
                    if held and relay is not None and waiting <= LOW_WATER:
                        held = False
                        relay.hold(False, me)
                    yield stream, data
                if end.done():
                    return
                wake.clear()
                waker = asyncio.ensure_future(wake.wait())
                await asyncio.wait({waker, end}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            end.cancel()
    finally:
        if stop is not None:
            stop()
        if held and relay is not None:
            relay.hold(False, me)


async def follow_audit(
    audit: AuditLog, *, follow: bool, tclet: str | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """The audit records the host still holds (of ``tclet`` only, if given), then, with
    ``follow``, each new one; when the consumer fell more than MAX_RECORDS behind, a record
    ``{"event": "lost", "records": N}`` stands for those it missed."""

    def wanted(record: dict[str, Any]) -> bool:
        return tclet is None or record.get("tclet") == tclet

    queue: deque[dict[str, Any]] = deque()
    lost = 0
    wake = asyncio.Event()

    def take(record: dict[str, Any]) -> None:
        nonlocal lost
        if not wanted(record):
            return
        if len(queue) >= MAX_RECORDS:
            lost += 1
            return
        queue.append(record)
        wake.set()

    history = [r for r in audit.recent if wanted(r)]
    stop = audit.subscribe(take) if follow else None
    try:
        for record in history:
            yield record
        while stop is not None:
            while queue:
                yield queue.popleft()
            if lost:
                yield {"time": round(time.time(), 6), "event": "lost", "records": lost}
                lost = 0
                continue
            wake.clear()
            await wake.wait()
    finally:
        if stop is not None:
            stop()
