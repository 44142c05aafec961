"""The embedding API: :class:`Host` runs tclets; the CLI is a thin client of it.

Host side of the trust boundary. A Host owns a private run directory (mode 0700) holding the
``ipc://`` endpoint, the zygote its workers come from, the ROUTER they talk to, the broker
that makes their sockets, and the audit log. Use it as an async context manager::

    async with Host(audit="audit.jsonl") as host:
        result = await host.run_tclet("puts hello", script_name="hello.tcl")

``launch`` starts a tclet and returns it at once; both take the script and the rest of a
:class:`LaunchRequest`'s fields as keywords, and ``launch_request`` takes a request whole.

Each tclet runs under its policy's quotas and limits (``--limit`` style overrides per launch);
the host as a whole holds at most ``max_workers`` tclets and ``max_sockets`` sockets. A watchdog
task in the host's loop measures every tclet and ends it at a limit (:mod:`tcletd.host.watchdog`).

The operator's verbs take a tclet's id (or a unique prefix of four digits or more): ``list``,
``kill``, ``wait``, ``logs``, ``dropped`` and ``events``. For a script without an event loop,
:class:`BlockingHost` (:mod:`tcletd.api_sync`) runs a Host on a thread of its own and offers the
same verbs as blocking calls::

    with BlockingHost() as host:
        tclet_id = host.launch("puts hello")
        print(host.wait(tclet_id).status, list(host.logs(tclet_id)))

An application that hosts tclets side by side can give them what ``tcletd serve`` gives its own
(:func:`leave_a_cpu_to_tclets`): a CPU kept for those that behave, and the host's loop ahead of
its workers.
"""

from __future__ import annotations

from tcletd.api_sync import BlockingHost
from tcletd.host.host import DEFAULT_POLICY, Host
from tcletd.host.quotas import HostFull
from tcletd.host.tclet import Tclet
from tcletd.host.watchdog import PenaltyHeld
from tcletd.shared import cpus
from tcletd.shared.launch import LaunchRequest
from tcletd.shared.states import TcletResult

__all__ = [
    "DEFAULT_POLICY",
    "BlockingHost",
    "Host",
    "HostFull",
    "LaunchRequest",
    "PenaltyHeld",
    "Tclet",
    "TcletResult",
    "leave_a_cpu_to_tclets",
]


def leave_a_cpu_to_tclets(*, run_first: bool = False) -> str | None:
    """Keep every thread of this process, yours too, and those they start, off the lowest CPU,
    which is left to tclets that behave, as ``tcletd serve`` keeps itself; the zygote and the
    workers of a Host started later still run on every CPU, and demoted ones keep off it too.
    ``run_first``: also put the calling thread, the one your event loop will run in, in the
    real-time class at its lowest priority (the processes and threads it starts do not inherit
    it), so that hundreds of tclets starting at once cannot keep the Host from answering. Call
    it before the Host starts. Nothing is done on a single CPU.

    Returns None, or why the kernel refused the real-time class (the thread stays normal).

    The real-time class is yours to weigh: a loop that spins in it takes 95 % of a CPU (the
    kernel's throttle) from everything else in the normal class."""
    cpus.keep_off_lowest()
    return cpus.run_first() if run_first else None
