"""The control watch's lines, as the tool reads them from its process: strictly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tcletd.attack.probes import ControlWatch
from tcletd.attack.targets import Target


def _watch(period: float = 0.05) -> ControlWatch:
    target = Target(Path("/nonexistent/control.sock"), kind="resident", policy="home", dns=False)
    return ControlWatch(target, period)


def test_answers_failures_and_demotions_are_read_from_the_watchs_lines() -> None:
    watch = _watch()
    watch.take("A 12.500 ")
    watch.take("A 3.250 abc,def")
    watch.take("F 5000.000 timed out")
    assert watch.answers == [12.5, 3.25, 5000.0]
    assert watch.failures == ["timed out"]
    assert watch.demoted(["def", None]) and not watch.demoted(["xyz"])


def test_a_line_that_does_not_parse_is_a_failure_not_a_figure() -> None:
    watch = _watch()
    for line in ["A soon", "B 1.0", "", "A"]:
        watch.take(line)
    assert watch.answers == []
    assert len(watch.failures) == 4
    assert all(f.startswith("watch: a line that does not parse") for f in watch.failures)


def _failures(watch: ControlWatch) -> list[str]:
    async def main() -> list[str]:
        await watch.start()
        await asyncio.sleep(1.5)
        await watch.stop()
        return watch.failures

    return asyncio.run(main())


def test_a_host_that_cannot_be_reached_is_a_failure_with_its_cause() -> None:
    failures = _failures(_watch())
    assert failures and all("No such file or directory" in f for f in failures), failures


def test_a_watch_whose_process_ends_early_is_a_failure() -> None:
    failures = _failures(_watch(period=-1.0))  # its process refuses the period and exits
    assert failures == ["watch: its process ended before the attack did (2)"], failures
