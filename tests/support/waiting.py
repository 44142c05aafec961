"""Waiting for a condition with a generous deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

Message = str | Callable[[], str]


def _polls(predicate: Callable[[], object], timeout: float, message: Message) -> Iterator[None]:
    """Yield (for the caller to pause) while the condition does not hold; fail after
    ``timeout`` seconds with ``message``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout} s)")
        yield


async def until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    message: Message = "condition not reached in time",
) -> None:
    """Poll a condition in the running event loop until it holds; fail after ``timeout``."""
    for _ in _polls(predicate, timeout, message):
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 10.0,
    *,
    interval: float = 0.02,
    message: Message = "condition not reached in time",
) -> None:
    """:func:`until` for code outside an event loop (the test's own thread)."""
    for _ in _polls(predicate, timeout, message):
        time.sleep(interval)
