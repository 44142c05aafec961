"""A worker's Tcl runtime in this process, for tclets that open no socket: its link records the
heartbeats and limits the runtime reports, and fails any socket or policy request."""

from __future__ import annotations

import msgspec

from tcletd.shared.errors import RequestError
from tcletd.shared.protocol import PolicyGranted, WorkerSpec
from tcletd.worker.tclrt import TclRuntime

REACHED = "the host was asked"
"""The message of the error a socket request gets from :class:`NoSocketLink`."""


class NoSocketLink:
    """The runtime's host link; a socket or policy request fails with :data:`REACHED`."""

    def __init__(self) -> None:
        self.limits: list[tuple[str, str]] = []
        self.beats: list[int] = []
        self.requests = 0

    def connect(
        self, host: str, port: str, myaddr: str, myport: str, asynchronous: bool
    ) -> tuple[int, int]:
        self.requests += 1
        raise RequestError(REACHED)

    def listen(self, port: str, myaddr: str) -> tuple[int, list[list[str]]]:
        self.requests += 1
        raise RequestError(REACHED)

    def close(self, sock_id: int) -> None:
        raise AssertionError("no socket was granted")

    def request_policy(self, name: str) -> PolicyGranted:
        self.requests += 1
        raise RequestError(REACHED)

    def heartbeat(self, state: str, commands: int, waiting: bool = False) -> None:
        self.beats.append(commands)

    def limit_hit(self, limit: str, detail: str) -> None:
        self.limits.append((limit, detail))


def make_spec(script: str, **fields: object) -> WorkerSpec:
    """A spec as the host sends it for a home tclet; ``fields`` replace any of its fields."""
    spec = WorkerSpec(
        tclet_id="t1",
        token="tok",
        endpoint="ipc:///nonexistent",
        script=script,
        script_name="t.tcl",
        argv=[],
        embed_args={},
        policy="home",
        hidden_options=["-peername"],
    )
    return msgspec.structs.replace(spec, **fields)


def runtime(script: str, link: NoSocketLink, **fields: object) -> TclRuntime:
    """A runtime for ``script`` as the host would start a home tclet; ``fields`` replace any of
    its spec's (``commands=100000``). A tclet still running after 30 s is stopped (status 99)."""
    rt = TclRuntime(make_spec(script, **fields), link)
    rt.tk.after(30_000, lambda: rt.stop(99))
    return rt


def run_script(script: str, **fields: object) -> tuple[int, NoSocketLink]:
    """Run ``script`` in a fresh runtime (see :func:`runtime`): its status and its link."""
    link = NoSocketLink()
    return runtime(script, link, **fields).run(), link
