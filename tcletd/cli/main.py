"""The ``tcletd`` command line: a thin client of :mod:`tcletd.api` and the policy engine.

Host side. Only this module configures logging or prints for the user; library code raises.
Each command is declared once, in :data:`COMMANDS`: its name, its help, the set-up of its
arguments and its handler; :func:`main` parses and dispatches. Handlers import what they need
when they run, so that ``tcletd run --host`` imports neither asyncio, pyzmq, msgspec, the
policy engine nor the host (:mod:`tcletd.cli.client`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tcletd import __version__
from tcletd.cli.client import ENV_HOST
from tcletd.cli.client import default_socket as client_default_socket
from tcletd.policy.actions import ACTIONS
from tcletd.shared.errors import EXIT_INTERRUPTED, TcletdError

RUN_EPILOG = """\
exit status:
  the tclet's own status (0, or the code it gave to exit); 1 on an uncaught Tcl error;
  2 usage, unknown policy or bad --limit; 66 script missing or unreadable; 69 Tcl unavailable;
  70 internal error; 124 wall limit; 137 ended for another limit or quota (cpu, memory,
  commands, output); 128+N ended because tcletd got signal N (143 SIGTERM) or the worker
  died by signal N. When the host ended the tclet, stderr says why:
  "tcletd: tclet ended: cpu limit 10 s". SIGUSR1 prints a status line on stderr.

examples:
  tcletd run examples/hello.tcl
  tcletd run --limit cpu=2s --limit sockets=2 --limit bytes_sent=1MiB examples/hello.tcl
  tcletd run --policy trusted examples/echo_client.tcl -- 127.0.0.1 7777
  echo 'puts hi' | tcletd run -
"""

SERVE_EPILOG = """\
A resident host keeps its fork server and its imports warm: a tclet run through it
(tcletd run --host SOCKET, or TCLETD_HOST=SOCKET tcletd run) starts in tens of milliseconds
instead of the embedded host's few hundred. Each client connection runs one tclet, which ends
when its client goes away. Only this user (or root) may connect. SIGINT or SIGTERM ends every
tclet and the host; SIGUSR1 prints a status line per tclet on stderr.
"""

POLICY_EPILOG = """\
exit status (check): 0 allowed, 1 denied, 2 bad policy or arguments.
exit status (lint): 0 clean, 1 problems found, 2 the file cannot be read or parsed.
"""


# ``--limit``'s help comes from the quotas and limits registry, read when help is printed: the
# registry imports more than a ``tcletd run --host`` should pay for at every start.
LIMIT_HELP = "(the quotas and limits registry's examples)"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help == LIMIT_HELP:
            from tcletd.policy.quantities import limit_help

            return limit_help()
        return super()._get_help_string(action)


Handler = Callable[[argparse.Namespace], int]
SetUp = Callable[[argparse.ArgumentParser], None]


class Command:
    """One command (or action of one): its name and one line of help for the list of commands,
    the set-up of its parser, and its handler, or else the actions it is a group of."""

    def __init__(
        self,
        name: str,
        help: str,
        handle: Handler | None = None,
        *,
        arguments: SetUp | None = None,
        epilog: str | None = None,
        actions: tuple[Command, ...] = (),
    ) -> None:
        self.name = name
        self.help = help
        self.handle = handle
        self.arguments = arguments
        self.epilog = epilog
        self.actions = actions


def _count(text: str) -> int:
    """A count of 1 or more for an option."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    """A duration of more than 0 for an option."""
    seconds = _seconds(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a duration of more than 0, got {text!r}")
    return seconds


def _seconds(text: str) -> float:
    """A duration of 0 or more (``60s``, ``2m``, ``0``) for an option."""
    from tcletd.policy.quantities import parse_duration  # only when the option is given

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration of 0 or more, got {text!r}")
    return seconds


def _nameserver(text: str) -> str:
    """``ADDR[:PORT]`` of a DNS server for an option, checked when the option is given."""
    from tcletd.host.resolver import parse_nameserver

    try:
        return parse_nameserver(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _nameserver_argument(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument(
        "--nameserver",
        action="append",
        type=_nameserver,
        default=None,
        metavar="ADDR[:PORT]",
        help=f"a DNS server for the names tclets ask for{note} (repeatable; default: "
        "$TCLETD_NAMESERVERS if set, else the system's resolv.conf; the hosts file is read "
        "first either way)",
    )


# ---- run --------------------------------------------------------------------------------------


def _run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--policy", default=None, help="policy name or TOML file (default: home)")
    run.add_argument("--origin", default=None, help="the tclet's origin URL (default: file URL)")
    run.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an embed argument, seen by the tclet in embed_args (repeatable)",
    )
    run.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=LIMIT_HELP,
    )
    run.add_argument("--audit", default=None, metavar="FILE", help="append audit records here")
    _nameserver_argument(run, ", on the embedded host (not with --host)")
    run.add_argument(
        "--host",
        default=os.environ.get(ENV_HOST) or None,
        metavar="SOCKET",
        help="run on a resident host (tcletd serve) listening on SOCKET instead of an embedded "
        f"one (default: ${ENV_HOST} if set)",
    )
    run.add_argument("script", help="the tclet's script, or - for standard input")
    run.add_argument("args", nargs="*", help="the tclet's argv (after --)")


def _run(args: argparse.Namespace) -> int:
    if args.host:
        from tcletd.cli import client

        if args.nameserver:
            print("tcletd: --nameserver: a resident host uses its own nameservers", file=sys.stderr)
            return 2
        return client.run(args, args.host)
    from tcletd.cli import runner

    return runner.run(args)


# ---- policy check, policy lint ----------------------------------------------------------------


def _check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument("--policy", default="home", help="policy name or TOML file")
    check.add_argument("--origin", default=None, help="the tclet's origin URL")
    check.add_argument("--action", default="connect", choices=list(ACTIONS))
    _nameserver_argument(check, ", as the host would use it")
    check.add_argument("host")
    check.add_argument("port")


def _check(args: argparse.Namespace) -> int:
    from tcletd.cli import policytool

    return policytool.check(args)


def _lint_arguments(lint: argparse.ArgumentParser) -> None:
    lint.add_argument("file")


def _lint(args: argparse.Namespace) -> int:
    from tcletd.cli import policytool

    return policytool.lint(args)


# ---- serve, status ----------------------------------------------------------------------------


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--socket",
        default=None,
        help=f"the control socket (default: ${ENV_HOST}, else tcletd-UID/control.sock in "
        "$XDG_RUNTIME_DIR or the temporary directory)",
    )
    serve.add_argument("--audit", default=None, metavar="FILE", help="append audit records here")
    serve.add_argument("--master", default=None, metavar="FILE", help="master config (policies)")
    _nameserver_argument(serve)
    serve.add_argument("--max-workers", type=int, default=64, help="tclets at once (64)")
    serve.add_argument("--max-sockets", type=int, default=1024, help="sockets at once (1024)")
    serve.add_argument(
        "--max-connections",
        type=_count,
        default=256,
        metavar="N",
        help="client connections at once (256); at the cap a new one evicts the one idle the "
        "longest, and is refused only when every connection runs a tclet",
    )
    serve.add_argument(
        "--frame-deadline",
        type=_positive_seconds,
        default=10.0,
        metavar="DURATION",
        help="how long a client may take to send a whole frame from its first byte (10s)",
    )
    serve.add_argument(
        "--idle-deadline",
        type=_positive_seconds,
        default=30.0,
        metavar="DURATION",
        help="how long a connection without a tclet may go without a request (30s)",
    )
    serve.add_argument(
        "--policy-dir",
        default=None,
        metavar="DIR",
        help="the operator's policies (DIR/NAME.toml): clients may name these as well as the "
        "shipped ones (never a path)",
    )
    serve.add_argument(
        "--penalty",
        type=_seconds,
        default=60.0,
        metavar="DURATION",
        help="how long a site whose tclet was ended at a limit stays in the penalty box, where "
        "its tclets start demoted and at most one a second (60s; 0: no box)",
    )


def _serve(args: argparse.Namespace) -> int:
    from tcletd.cli import runner

    if args.socket is None:
        args.socket = client_default_socket()
    return runner.serve(args)


def _status_arguments(status: argparse.ArgumentParser) -> None:
    status.add_argument("--host", default=None, metavar="SOCKET", help="its control socket")


def _status(args: argparse.Namespace) -> int:
    from tcletd.cli import client

    return client.status(args.host or client_default_socket())


# ---- version, doctor --------------------------------------------------------------------------


def _version(args: argparse.Namespace) -> int:
    from tcletd.cli import runner

    return runner.doctor(verbose=False)


def _doctor(args: argparse.Namespace) -> int:
    from tcletd.cli import runner

    return runner.doctor(verbose=True)


COMMANDS = (
    Command(
        "run",
        "run one tclet on an embedded host",
        _run,
        arguments=_run_arguments,
        epilog=RUN_EPILOG,
    ),
    Command(
        "policy",
        "check or lint policies",
        actions=(
            Command(
                "check",
                "decide one request as the host would",
                _check,
                arguments=_check_arguments,
                epilog=POLICY_EPILOG,
            ),
            Command(
                "lint",
                "validate a policy file",
                _lint,
                arguments=_lint_arguments,
                epilog=POLICY_EPILOG,
            ),
        ),
    ),
    Command(
        "serve",
        "run a resident host that clients run tclets on (tcletd run --host)",
        _serve,
        arguments=_serve_arguments,
        epilog=SERVE_EPILOG,
    ),
    Command(
        "status", "list the tclets running on a resident host", _status, arguments=_status_arguments
    ),
    Command("version", "print tcletd, Python, pyzmq and Tcl versions", _version),
    Command("doctor", "check that this machine can run tclets", _doctor),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcletd",
        description="Run untrusted Tcl scripts (tclets) in isolated worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"tcletd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_commands(sub, COMMANDS)
    return parser


def _add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], commands: Sequence[Command]
) -> None:
    for command in commands:
        if command.epilog is None:
            parser = sub.add_parser(command.name, help=command.help, formatter_class=_HelpFormatter)
        else:  # an epilog is laid out by hand: tables and examples
            parser = sub.add_parser(
                command.name,
                help=command.help,
                epilog=command.epilog,
                formatter_class=_HelpFormatter,
            )
        if command.arguments is not None:
            command.arguments(parser)
        if command.actions:
            actions = parser.add_subparsers(
                dest=f"{command.name}_command", required=True, metavar="ACTION"
            )
            _add_commands(actions, command.actions)
        else:
            parser.set_defaults(handle=command.handle)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handle: Handler = args.handle
    try:
        return handle(args)
    except TcletdError as exc:
        print(f"tcletd: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
