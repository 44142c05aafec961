"""``tcletd run``, ``tcletd version`` and ``tcletd doctor``: the CLI's host-side commands.

Host side of the trust boundary. Turns command-line arguments into one embedded :class:`Host`
running one tclet, and maps the outcome to the process's exit status. Signals only enqueue; one
task in the loop takes them in order: SIGINT/SIGTERM end the tclet (status 128+N), SIGUSR1
prints a status line on stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys

from tcletd import __version__
from tcletd.cli.client import is_url, launch_fields, read_script, status_line, write_id
from tcletd.shared.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, TcletdError

# Not typing.TYPE_CHECKING, and pathlib and the tclet states (dataclasses) imported where they
# are used: a run starts its zygote only once this module is imported, and those took 20 ms of
# that here (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable

    from tcletd.host.tclet import Tclet


def _check_limits(policy: str | None, limits: list[str], policy_dir: str | None = None) -> None:
    """Fail fast (exit 2, naming the key) on a bad ``--limit``, before any tclet starts; the
    policy is looked up as the host will (``--policy-dir`` first)."""
    if limits:
        from pathlib import Path

        from tcletd.host.host import DEFAULT_POLICY
        from tcletd.policy import load_policy

        directory = None if policy_dir is None else Path(policy_dir)
        load_policy(policy or DEFAULT_POLICY, directory).with_overrides(*limits)


async def _take_signals(queue: asyncio.Queue[int], tclet: Tclet, show: Callable[[], None]) -> None:
    """The loop's side of the signal handlers: act on each signal in order."""
    from tcletd.shared.states import signal_ending

    while True:
        signum = await queue.get()
        if signum == signal.SIGUSR1:
            show()
        else:
            await tclet.end(*signal_ending(signum))


def enqueue_signals(
    loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[int], signals: Iterable[int]
) -> list[int]:
    """Handlers that only put each of ``signals`` on ``queue``, for the loop to act on in order;
    a signal ignored when we started stays ignored (``nohup``'s SIGHUP, a background job's
    SIGINT), as tclsh leaves it. Returns the signals taken."""
    taken = [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]
    for signum in taken:
        loop.add_signal_handler(signum, queue.put_nowait, signum)
    return taken


def run(args: argparse.Namespace) -> int:
    """Run one tclet; the exit status is the tclet's, or the host's status for how it ended it."""
    url = args.script if is_url(args.script) else None
    script, script_name = ("", args.script) if url else read_script(args.script)
    from tcletd.host import factory

    # First, so that the zygote's own start-up overlaps the host's imports below (asyncio and
    # the policy engine included: this module imports them late for that reason). A bad
    # --limit still fails before any tclet starts; the zygote goes when we exit.
    factory.start()
    _check_limits(args.policy, args.limit, args.policy_dir)
    import asyncio

    # The host itself, not tcletd.api, whose BlockingHost (threads) a run does not use.
    from tcletd.host.host import Host
    from tcletd.shared.launch import LaunchRequest

    asked = LaunchRequest(**launch_fields(args, script, script_name, url=url))

    async def main() -> int:
        async with Host(
            audit=args.audit,
            nameservers=args.nameserver,
            master=args.master,
            policy_dir=args.policy_dir,
            cgroups=_cgroups_wanted(),
        ) as host:
            # A URL's script is fetched here (FetchFailed: "fetch URL: cause", exit 66).
            request = await host.prepare(asked)
            tclet = host.launch_request(request)
            if args.id_file is not None:
                write_id(args.id_file, tclet.id)
            loop = asyncio.get_running_loop()
            signals: asyncio.Queue[int] = asyncio.Queue()

            def show() -> None:
                for entry in host.status():
                    print(status_line(entry), file=sys.stderr, flush=True)

            # Signal handlers only enqueue; _take_signals acts on them in the loop, in order.
            enqueue_signals(loop, signals, (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1))
            taker = loop.create_task(_take_signals(signals, tclet, show))
            try:
                result = await tclet.wait()
            finally:
                taker.cancel()
        # After the host's close: the tclet's own stderr, still buffered while our reader was
        # slow, comes first (it has its bounded wait there).
        if result.by_host:
            print(f"tcletd: tclet ended: {result.reason}", file=sys.stderr, flush=True)
        return result.status

    return asyncio.run(main())


def serve(args: argparse.Namespace) -> int:
    """A resident host: clients run tclets on it (``tcletd run --host``) until SIGINT/SIGTERM."""
    import gc
    from pathlib import Path

    from tcletd.host import factory
    from tcletd.shared import cpus

    if args.warm > factory.MAX_WARM:
        print(f"tcletd serve: --warm: at most {factory.MAX_WARM}, not {args.warm}", file=sys.stderr)
        return 2
    factory.start(args.warm)
    cpus.keep_off_lowest()
    import asyncio

    from tcletd.api import Host
    from tcletd.host.bounds import Bounds
    from tcletd.host.control import ControlServer

    async def main() -> int:
        host = Host(
            audit=args.audit,
            master=args.master,
            max_workers=args.max_workers,
            max_sockets=args.max_sockets,
            penalty=args.penalty,
            nameservers=args.nameserver,
            policy_dir=args.policy_dir,
            cgroups=_cgroups_wanted(),
            log_dir=args.log_dir,
            keep_ended=args.keep_ended,
            warm=args.warm,
        )
        bounds = Bounds(
            max_connections=args.max_connections,
            frame_deadline=args.frame_deadline,
            idle_deadline=args.idle_deadline,
            client_share=args.client_share,
        )
        control = ControlServer(host, Path(args.socket), bounds=bounds)
        async with host:
            await control.start()
            _run_first()
            # What the host has made by now lives as long as it does: out of the collector's
            # sight, a full collection walks only what tclets and clients add (a host's loop
            # otherwise stalls for every object its imports made, at each full pass).
            gc.collect()
            gc.freeze()
            loop = asyncio.get_running_loop()
            signals: asyncio.Queue[int] = asyncio.Queue()
            # Signal handlers only enqueue; this loop takes them in order.
            enqueue_signals(loop, signals, (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1))
            print(f"tcletd: serving on {control.path}", file=sys.stderr, flush=True)
            try:
                while (signum := await signals.get()) == signal.SIGUSR1:
                    for entry in host.status():
                        print(status_line(entry), file=sys.stderr, flush=True)
            finally:
                control.stop_accepting()
            name = signal.Signals(signum).name
            print(f"tcletd: {name}: ending {len(host.status())} tclet(s)", file=sys.stderr)
        await control.drain()
        return EXIT_OK

    return asyncio.run(main())


def _run_first() -> None:
    """The host ahead of its workers (:func:`tcletd.shared.cpus.run_first`), once the threads
    it keeps exist; said on stderr if the kernel refuses."""
    from tcletd.shared import cpus

    why = cpus.run_first()
    if why is not None:
        print(f"tcletd: {why}", file=sys.stderr, flush=True)


def doctor(*, verbose: bool) -> int:
    """Print versions (and, for doctor, whether tclets can run here)."""
    import platform

    import zmq

    print(f"tcletd {__version__}")
    print(f"Python {platform.python_version()}")
    print(f"pyzmq {zmq.pyzmq_version()} (libzmq {zmq.zmq_version()})")
    try:
        import tkinter

        tcl = tkinter.Tcl()
        patchlevel = tcl.eval("info patchlevel")
    except Exception as exc:
        print(f"Tcl unavailable: {exc}")
        return EXIT_UNAVAILABLE
    print(f"Tcl {patchlevel}")  # outside the try: a closed stdout is not Tcl's failure
    if verbose:
        from tcletd.worker.channels import probe

        mode, detail = probe(tcl)
        if mode == "native":
            print(f"channels: native Tcl sockets through the C API of {detail}")
        else:
            print(f"channels: reflected-channel fallback ({detail}); half-close unavailable")
        print(f"send_rate: {_pacing_support()}")
        print(f"host: {_placement_support()}")
        from tcletd.worker import sandbox

        # A sample sandbox applied in a forked child, with what the kernel then reports.
        for line in sandbox.selftest():
            print(f"sandbox: {line}")
        from tcletd.host import cgroups

        # Limits written into a test cgroup and read back: what a host here would get.
        found = cgroups.probe()
        if not _cgroups_wanted():
            print("sandbox: cgroup: inactive: turned off (TCLETD_CGROUPS=0)")
        elif found.active:
            print(f"sandbox: cgroup: active ({found.reason})")
        else:
            print(f"sandbox: cgroup: inactive: {found.reason}")
    return EXIT_OK


def _cgroups_wanted() -> bool:
    """A cgroup per worker unless ``TCLETD_CGROUPS=0`` (for comparing runs without them)."""
    import os

    return os.environ.get("TCLETD_CGROUPS", "1") != "0"


def _placement_support() -> str:
    """Whether a resident host here leaves a CPU to tclets and runs ahead of its workers."""
    from tcletd.shared import cpus

    if not cpus.placement().spares():
        return "one CPU: none is left to tclets, and the host runs in the normal class"
    why = cpus.refused_first()
    if why is not None:
        return f"real-time class refused ({why}): a resident host runs in the normal class"
    return "the lowest CPU is left to tclets; a resident host's loop runs in the real-time class"


def _pacing_support() -> str:
    """Whether the kernel takes SO_MAX_PACING_RATE (the send_rate quota) on a TCP socket."""
    import socket

    from tcletd.host.quotas import set_pacing

    with socket.socket() as sock:
        if set_pacing(sock, 2**20):
            return "kernel pacing (SO_MAX_PACING_RATE) available"
        return "SO_MAX_PACING_RATE unavailable: send rates are not limited"


__all__ = ["EXIT_CONFIG", "TcletdError", "doctor", "run"]
