"""``tcletd run``, ``tcletd version`` and ``tcletd doctor``: the CLI's host-side commands.

Host side of the trust boundary. Turns command-line arguments into one embedded :class:`Host`
running one tclet, and maps the outcome to the process's exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from tcletd import __version__
from tcletd.errors import EXIT_CONFIG, ConfigError, ScriptNotFound, TcletdError


def _read_script(name: str) -> tuple[str, str]:
    """The script's text and its name as the tclet's argv0."""
    if name == "-":
        return sys.stdin.read(), "-"
    path = Path(name)
    try:
        return path.read_text(encoding="utf-8"), name
    except FileNotFoundError:
        raise ScriptNotFound(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptNotFound(f"{name}: cannot read: {exc}") from None


def _embed_args(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--arg {pair!r}: expected NAME=VALUE")
        out[name.lower()] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Run one tclet; the exit status is the tclet's."""
    script, script_name = _read_script(args.script)
    from tcletd.host import forkserver

    # First, so that the fork server's own start-up overlaps the host's imports below.
    forkserver.start()
    from tcletd.api import Host

    origin = args.origin
    if origin is None and script_name != "-":
        origin = Path(script_name).resolve().as_uri()
    embed = _embed_args(args.arg)

    async def main() -> int:
        async with Host(audit=args.audit) as host:
            tclet = host.launch(
                script,
                script_name=script_name,
                policy=args.policy,
                origin=origin,
                argv=args.args,
                embed_args=embed,
            )
            loop = asyncio.get_running_loop()

            ending: set[asyncio.Task[None]] = set()

            # Signal handlers only enqueue: the loop ends the tclet in order.
            def on_signal(signum: int) -> None:
                task = loop.create_task(tclet.end(f"host got signal {signum}", 128 + signum))
                ending.add(task)
                task.add_done_callback(ending.discard)

            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
            result = await tclet.wait()
            return result.status

    return asyncio.run(main())


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
        print(f"Tcl {tcl.eval('info patchlevel')}")
    except Exception as exc:
        print(f"Tcl unavailable: {exc}")
        return 69
    if verbose:
        from tcletd.worker.channels import probe

        mode, detail = probe(tcl)
        if mode == "native":
            print(f"channels: native Tcl sockets through the C API of {detail}")
        else:
            print(f"channels: reflected-channel fallback ({detail}); half-close unavailable")
    return 0


__all__ = ["EXIT_CONFIG", "TcletdError", "doctor", "run"]
