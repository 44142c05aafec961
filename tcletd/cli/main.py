"""The ``tcletd`` program's entry: parse with :mod:`tcletd.cli.commands`, dispatch, exit.

Operator side. Only the CLI configures logging or prints for the user; library code raises.
This module imports next to nothing at its top, because the program imports it before anything
else: an embedded ``tcletd run`` starts its zygote from here (:func:`entry`), before argparse
and the command table are imported, so that the zygote's own start (the longest step of a
one-shot run, ~100 ms) overlaps all of the host's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tcletd.cli import ENV_HOST
from tcletd.shared.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, TcletdError


def entry() -> None:
    """The ``tcletd`` program (and ``python -m tcletd``): :func:`main`, then out without the
    interpreter's teardown (:func:`tcletd.cli.exiting.exit_now`)."""
    start_zygote_early(sys.argv[1:])
    status = main()
    from tcletd.cli.exiting import exit_now

    exit_now(status)


def start_zygote_early(argv: Sequence[str]) -> bool:
    """Start the zygote of an embedded ``tcletd run`` now, before the command line is parsed;
    True if started. Measured (strace, timestamps): the zygote took 100-130 ms from its exec to
    its readiness, and started 40 ms into the run, after the CLI's imports (argparse, the
    command table, the client); the host waited for it. Here it starts right after the
    interpreter's own start. Only for what can only be an embedded run: ``run`` without an
    option starting with ``--h`` or ``-h`` (``--host``, an abbreviation of it, or help) and
    without ``$TCLETD_HOST``; a run that then fails to start (no such script, a usage error)
    exits with its zygote unused, which ends itself when its parent is gone, as ever."""
    if not argv or argv[0] != "run" or os.environ.get(ENV_HOST):
        return False
    for word in argv[1:]:
        if word == "--":
            break
        if word.startswith(("--h", "-h")):
            return False
    from tcletd.host import factory

    factory.start()
    return True


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    from tcletd.cli.commands import Handler, build_parser

    try:
        args = build_parser(argv).parse_args(argv)  # help, too, may meet a closed pipe
        handle: Handler = args.handle
        status = handle(args)
        if sys.stdout is not None:  # None: started with stdout closed (>&-)
            sys.stdout.flush()  # a broken pipe shows here, not in the interpreter's last flush
        return status
    except TcletdError as exc:
        print(f"tcletd: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError as exc:
        from tcletd.shared.streams import OwnStreamGone

        if not (isinstance(exc, OwnStreamGone) or _reader_gone()):
            raise  # a socket's, not our output's: a real failure
        return EXIT_BROKEN_PIPE


def _reader_gone() -> bool:
    """Whether stdout or stderr is a pipe (or socket) whose reader went away (``tcletd doctor |
    head -1``); each one that is becomes /dev/null, so that the interpreter's last flush cannot
    fail."""
    import select

    gone = False
    poll = select.poll()
    for fd in (1, 2):
        poll.register(fd, 0)  # always reported: POLLERR for a pipe, POLLHUP for a socket
    for fd, events in poll.poll(0):
        if events & (select.POLLERR | select.POLLHUP):
            gone = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    return gone
