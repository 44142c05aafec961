"""Running tclets on an in-process :class:`~tcletd.api.Host`: output callbacks, and a run that
reads the worker's rlimits while it runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from tcletd.api import Host
from tcletd.host.factory import Zygote
from tcletd.host.tclet import Tclet
from tcletd.worker.sandbox import read_limits


class Sinks(TypedDict):
    """``host.launch(..., **sinks)``: where a tclet's stdout and stderr go."""

    on_stdout: Callable[[bytes], None]
    on_stderr: Callable[[bytes], None]


def worker_pid(tclet: Tclet) -> int:
    """The pid of the tclet's worker, which must be forked by now (it printed, or is running)."""
    assert tclet.worker is not None and tclet.worker.pid is not None, "its worker is not forked yet"
    return tclet.worker.pid


def zygote_of(host: Host) -> Zygote:
    """The zygote a started host forks its workers from."""
    assert host._services is not None
    zygote = host._services.supervisor._zygote
    assert zygote is not None
    return zygote


def _drop(_data: bytes) -> None:
    pass


def quiet() -> Sinks:
    """Sinks that drop both streams."""
    return {"on_stdout": _drop, "on_stderr": _drop}


Limits = dict[str, tuple[str, str]]


def run_and_probe(
    script: str,
    *,
    origin: str,
    master: Path,
    audit: Path,
    policy: str | None = None,
    policy_dir: Path | None = None,
    probe: bool = False,
) -> tuple[int, str, Limits]:
    """Run ``script`` on a host with ``master`` (and the operator's ``policy_dir``); its status,
    its stdout and stderr, and, when ``probe``, the worker's rlimits read once it printed
    ``ready`` (the tclet is then ended)."""
    out: list[bytes] = []
    limits: Limits = {}

    async def scenario() -> int:
        async with Host(master=master, audit=audit, policy_dir=policy_dir) as host:
            ready = asyncio.Event()

            def take(data: bytes) -> None:
                out.append(data)
                if b"ready" in b"".join(out):
                    ready.set()

            tclet = host.launch(
                script, policy=policy, origin=origin, on_stdout=take, on_stderr=take
            )
            if probe:
                await asyncio.wait_for(ready.wait(), 20)
                assert tclet.worker is not None
                limits.update(read_limits(worker_pid(tclet)))
                await tclet.end("test over")
            return (await tclet.wait()).status

    status = asyncio.run(scenario())
    return status, b"".join(out).decode(), limits
