"""The host answers a request without a turn of its loop when the request never waits.

:func:`tcletd.host.broker.start_eagerly` runs a handler up to its first real wait at once; only a
handler that waits (a name lookup, a connect still in progress) becomes a task, which must then
behave exactly as a task would: finish, fail, or be cancelled when its tclet is released.
"""

from __future__ import annotations

import asyncio

import pytest

from tcletd.host.broker import start_eagerly

pytestmark = pytest.mark.timeout(10)


def test_a_handler_that_never_waits_runs_to_its_end_before_the_call_returns() -> None:
    seen: list[str] = []

    async def handler() -> None:
        seen.append("answered")

    async def scenario() -> None:
        task = start_eagerly(asyncio.get_running_loop(), handler())
        assert task is None
        assert seen == ["answered"]  # no turn of the loop was needed

    asyncio.run(scenario())


def test_a_handler_that_waits_is_finished_by_a_task_with_what_it_waited_for() -> None:
    seen: list[object] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()

        async def handler() -> None:
            seen.append("asked")
            seen.append(await ready)
            await asyncio.sleep(0)  # and a second wait, on a bare yield
            seen.append("answered")

        task = start_eagerly(loop, handler())
        assert task is not None and seen == ["asked"]
        loop.call_later(0.01, ready.set_result, 42)
        await task
        assert seen == ["asked", 42, "answered"]

    asyncio.run(scenario())


def test_a_waiting_handler_is_cancelled_inside_like_a_task() -> None:
    cleaned: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def handler() -> None:
            try:
                await loop.create_future()  # never answered
            finally:
                cleaned.append("released")

        task = start_eagerly(loop, handler())
        assert task is not None
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert cleaned == ["released"]


def test_a_failing_handler_is_reported_and_the_caller_goes_on() -> None:
    reported: list[BaseException | None] = []

    async def handler() -> None:
        raise ValueError("broken handler")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx.get("exception")))
        assert start_eagerly(loop, handler()) is None

    asyncio.run(scenario())
    assert len(reported) == 1 and isinstance(reported[0], ValueError)
