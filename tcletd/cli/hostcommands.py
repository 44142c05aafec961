"""The resident host's operator commands (``launch``, ``ps``, ``logs``, ``kill``, ``wait``,
``events``) and ``page``: their arguments and handlers, for :data:`tcletd.cli.commands.COMMANDS`.

Operator side. Handlers import their client module (:mod:`tcletd.cli.hostctl`,
:mod:`tcletd.cli.page`) when they run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from tcletd.cli.client import ENV_HOST
from tcletd.cli.client import default_socket as client_default_socket
from tcletd.cli.options import LIMIT_HELP, check_origin, whole

Handler = Callable[[argparse.Namespace], int]


def host_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=None,
        metavar="SOCKET",
        help=f"the resident host's control socket (default: ${ENV_HOST}, else the default one)",
    )


def launch_arguments(launch: argparse.ArgumentParser) -> None:
    launch.add_argument("--policy", default=None, help="policy name (default: home)")
    launch.add_argument("--origin", default=None, help="the tclet's origin URL (default: file URL)")
    launch.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an embed argument, seen by the tclet in embed_args (repeatable)",
    )
    launch.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE", help=LIMIT_HELP
    )
    host_argument(launch)
    launch.add_argument("script", help="the tclet's script: a file, - for standard input, or a URL")
    launch.add_argument("args", nargs="*", help="the tclet's argv (after --)")


def ps_arguments(ps: argparse.ArgumentParser) -> None:
    ps.add_argument("--all", "-a", action="store_true", help="the ended tclets the host keeps too")
    ps.add_argument(
        "--json", action="store_true", help="one JSON array of objects (see docs/protocol.md)"
    )
    host_argument(ps)


def id_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", help="the tclet's id (or a unique prefix of 4 digits or more)")


def logs_arguments(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("--follow", "-f", action="store_true", help="go on until the tclet ends")
    logs.add_argument(
        "--tail", type=whole, default=None, metavar="N", help="the last N lines of each stream"
    )
    which = logs.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only its stdout")
    which.add_argument("--stderr", action="store_true", help="only its stderr")
    host_argument(logs)
    id_argument(logs)


def kill_arguments(kill: argparse.ArgumentParser) -> None:
    kill.add_argument(
        "--signal",
        "-s",
        choices=("TERM", "KILL"),
        default="TERM",
        help="TERM: asked, then SIGTERM, then SIGKILL after the host's grace (default); KILL: now",
    )
    host_argument(kill)
    id_argument(kill)


def wait_arguments(wait: argparse.ArgumentParser) -> None:
    host_argument(wait)
    id_argument(wait)


def events_arguments(events: argparse.ArgumentParser) -> None:
    events.add_argument("--follow", "-f", action="store_true", help="go on with new records")
    events.add_argument("--id", default=None, help="only this tclet's records")
    host_argument(events)


def hostctl(verb: str) -> Handler:
    """The handler of one of the operator's verbs (tcletd.cli.hostctl), on --host's socket."""

    def handle(args: argparse.Namespace) -> int:
        from tcletd.cli import hostctl

        if verb == "launch" and args.origin is not None:
            check_origin(args.origin)
        action: Callable[[argparse.Namespace, str], int] = getattr(hostctl, verb)
        return action(args, args.host or client_default_socket())

    return handle


# ---- page -------------------------------------------------------------------------------------


def page_arguments(page: argparse.ArgumentParser) -> None:
    page.add_argument("--policy", default=None, help="every tclet's policy (default: home)")
    page.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE", help=LIMIT_HELP)
    page.add_argument(
        "--host",
        default=os.environ.get(ENV_HOST) or None,
        metavar="SOCKET",
        help=f"run the tclets on a resident host (tcletd serve) (default: ${ENV_HOST} if set)",
    )
    page.add_argument("page", help="an HTML file, or an http:// or https:// URL")


def page(args: argparse.Namespace) -> int:
    from tcletd.cli import page

    return page.run(args)
