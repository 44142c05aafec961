"""The ``tcletd`` commands: each declared once, in :data:`COMMANDS` (its name, its help, the set-up
of its arguments and its handler), and the parser built from them (:func:`build_parser`).

Operator side. Handlers import what they need when they run, so that ``tcletd run --host``
imports neither asyncio, pyzmq, msgspec, the policy engine nor the host
(:mod:`tcletd.cli.client`). :mod:`tcletd.cli.main` parses with this module and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from tcletd import __version__
from tcletd.cli.client import ENV_HOST
from tcletd.cli.client import default_socket as client_default_socket
from tcletd.cli.hostcommands import (
    events_arguments,
    hostctl,
    kill_arguments,
    launch_arguments,
    logs_arguments,
    page,
    page_arguments,
    ps_arguments,
    wait_arguments,
)
from tcletd.cli.options import (
    LIMIT_HELP,
    HelpFormatter,
    TopFormatter,
    check_origin,
    count,
    nameserver_argument,
    positive_seconds,
    seconds,
    share,
    whole,
)

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
A resident host keeps its zygote and its imports warm: a tclet run through it
(tcletd run --host SOCKET, or TCLETD_HOST=SOCKET tcletd run) starts in tens of milliseconds
instead of the embedded host's few hundred. A tclet run through it ends when its client goes
away; one started with tcletd launch belongs to the host: tcletd ps, logs, kill and wait name it
by id, and tcletd events follows the host's audit records. Only this user (or root) may connect
(docs/protocol.md documents the control socket's protocol). SIGINT or SIGTERM ends every
tclet and the host; SIGUSR1 prints a status line per tclet on stderr.

exit status: 0 after SIGINT or SIGTERM; 2 usage; 73 the socket is in use by another live
host (the message names its pid); 70 internal error.
"""

PAGE_EPILOG = """\
Each <embed src=...> of the page is a tclet: src is resolved against the page's URL (a local
page's is its file: URL); every attribute of the tag is in the tclet's embed_args. A local
script runs with its file: URL as origin; an http(s) one is fetched by the host and runs with
the URL it came from as origin (a web page may not embed a local file). Each output line is
prefixed "NAME | " (the tag's name attribute, else its src).

exit status: the first non-zero status of the tclets, in page order, else 0; 66 the page or a
script cannot be read or fetched, or the page has no tclets; 2 usage or bad --limit.
"""

POLICY_EPILOG = """\
exit status (check): 0 allowed, 1 denied, 2 bad policy or arguments.
exit status (lint): 0 clean, 1 problems found, 2 the file cannot be read or parsed.
"""


ATTACK_EPILOG = """\
Each attack of the catalogue runs alone, then all of them together, beside a probe tclet timing
echo round trips; rounds alternate alone/attack and the ratio is the median of the rounds'.
A verdict per attack comes from what the tool saw (the host's exits, its own servers' counts,
its DNS server's log), never from what the attack printed. On a machine busy with other work
while the baseline runs, there is no verdict on latency. docs/attack.md says what each judge
means and every JSON field.

exit status: 0 every attack contained; 1 one was not; 2 usage (bad catalogue, unknown attack,
a policy file with --host); 3 the run could not measure (a probe failed, the host went away).

examples:
  tcletd attack --quick
  tcletd attack --policy mine.toml --only busy_loop,socket_loop --json out.json
  tcletd attack --host /run/tcletd/control.sock --policy home --plot attack.png
"""


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
    run.add_argument(
        "--id-file",
        default=None,
        metavar="FILE",
        help="write the tclet's id here once it starts (for tcletd ps, logs, kill on a host)",
    )
    run.add_argument(
        "--master",
        default=None,
        metavar="FILE",
        help="master config: which policies the tclet may ask for (not with --host)",
    )
    run.add_argument(
        "--policy-dir",
        default=None,
        metavar="DIR",
        help="the operator's policies, looked up by name before the shipped ones (not with --host)",
    )
    nameserver_argument(run, ", on the embedded host (not with --host)")
    run.add_argument(
        "--host",
        default=os.environ.get(ENV_HOST) or None,
        metavar="SOCKET",
        help="run on a resident host (tcletd serve) listening on SOCKET instead of an embedded "
        f"one (default: ${ENV_HOST} if set)",
    )
    run.add_argument(
        "script", help="the tclet's script: a file, - for standard input, or a URL the host fetches"
    )
    run.add_argument("args", nargs="*", help="the tclet's argv (after --)")


# What a resident host decides for itself, never a client: an option that names one of these.
_HOST_OWN = (
    ("nameserver", "--nameserver", "nameservers"),
    ("master", "--master", "master config"),
    ("policy_dir", "--policy-dir", "policy directory"),
)


def _run(args: argparse.Namespace) -> int:
    if args.origin is not None:
        check_origin(args.origin)
    if args.host:
        from tcletd.cli import client

        for attribute, option, what in _HOST_OWN:
            if getattr(args, attribute):
                print(f"tcletd: {option}: a resident host uses its own {what}", file=sys.stderr)
                return 2
        return client.run(args, args.host)
    from tcletd.cli import runner

    return runner.run(args)


# ---- policy check, policy lint ----------------------------------------------------------------


def _check_arguments(check: argparse.ArgumentParser) -> None:
    from tcletd.policy.actions import ACTIONS  # here: a run's parser does not set check up

    check.add_argument("--policy", default="home", help="policy name or TOML file")
    check.add_argument("--origin", default=None, help="the tclet's origin URL")
    check.add_argument("--action", default="connect", choices=list(ACTIONS))
    nameserver_argument(check, ", as the host would use it")
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
    nameserver_argument(serve)
    serve.add_argument("--max-workers", type=int, default=64, help="tclets at once (64)")
    serve.add_argument("--max-sockets", type=int, default=1024, help="sockets at once (1024)")
    serve.add_argument(
        "--max-connections",
        type=count,
        default=256,
        metavar="N",
        help="client connections at once (256); at the cap a new one evicts the one idle the "
        "longest, and is refused only when every connection runs a tclet",
    )
    serve.add_argument(
        "--frame-deadline",
        type=positive_seconds,
        default=10.0,
        metavar="DURATION",
        help="how long a client may take to send a whole frame from its first byte (10s)",
    )
    serve.add_argument(
        "--idle-deadline",
        type=positive_seconds,
        default=30.0,
        metavar="DURATION",
        help="how long a connection without a tclet may go without a request (30s)",
    )
    serve.add_argument(
        "--client-share",
        type=share,
        default=0.1,
        metavar="FRACTION",
        help="of one core, the host time one connection's requests may take past a burst of "
        "0.5 s (0.1; each request counts 1 ms at least); all connections together take twice "
        "that at most, and a connection past either waits",
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
        type=seconds,
        default=60.0,
        metavar="DURATION",
        help="how long a site whose tclet was ended at a limit stays in the penalty box, where "
        "its tclets start demoted and at most one a second (60s; 0: no box)",
    )
    serve.add_argument(
        "--log-dir",
        default=None,
        metavar="DIR",
        help="also write each tclet's output to DIR/ID.log (up to 16 MiB each)",
    )
    serve.add_argument(
        "--keep-ended",
        type=whole,
        default=1000,
        metavar="N",
        help="ended tclets kept for ps --all, logs and wait (1000)",
    )
    serve.add_argument(
        "--warm",
        type=whole,
        default=2,
        metavar="N",
        help="workers kept forked ahead, each in its own cgroup and network namespace with "
        "its link started, that become tclets on demand (2; at most 64; 0: each launch "
        "forks one)",
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


# ---- attack ------------------------------------------------------------------------------------


def _attack_arguments(parser: argparse.ArgumentParser) -> None:
    from tcletd.cli.attack import attack_arguments

    attack_arguments(parser)


def _attack(args: argparse.Namespace) -> int:
    from tcletd.cli.attack import attack

    return attack(args)


COMMANDS = (
    Command(
        "run",
        "run one tclet to its end: on an embedded host, or attached on --host",
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
        "run a resident host: tclets for run --host, launch, ps, logs, kill, wait",
        _serve,
        arguments=_serve_arguments,
        epilog=SERVE_EPILOG,
    ),
    Command(
        "status",
        "one status line per tclet running on a resident host",
        _status,
        arguments=_status_arguments,
    ),
    Command(
        "launch",
        "start a detached tclet on a resident host; print its id",
        hostctl("launch"),
        arguments=launch_arguments,
    ),
    Command("ps", "list a resident host's tclets", hostctl("ps"), arguments=ps_arguments),
    Command("logs", "print a tclet's output", hostctl("logs"), arguments=logs_arguments),
    Command("kill", "end a tclet on a resident host", hostctl("kill"), arguments=kill_arguments),
    Command(
        "wait",
        "wait for a tclet to end; exit with its status",
        hostctl("wait"),
        arguments=wait_arguments,
    ),
    Command(
        "events",
        "print a resident host's audit records (JSON lines)",
        hostctl("events"),
        arguments=events_arguments,
    ),
    Command(
        "page",
        "run every <embed src=...> tclet of a web page at once, output prefixed by name",
        page,
        arguments=page_arguments,
        epilog=PAGE_EPILOG,
    ),
    Command(
        "attack",
        "attack a policy and a host with the resource-attack catalogue; a verdict per attack",
        _attack,
        arguments=_attack_arguments,
        epilog=ATTACK_EPILOG,
    ),
    Command("version", "print tcletd, Python, pyzmq and Tcl versions", _version),
    Command("doctor", "check that this machine can run tclets", _doctor),
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command line; for an ``argv`` that starts with a command's name, of that
    command alone. Everything after the name is that command's parser's to take, so the others
    change nothing but cost a one-shot run the set-up of all their arguments (8-10 ms here,
    a sixth of a ``tcletd run --host``). Help and usage errors list every command."""
    parser = argparse.ArgumentParser(
        prog="tcletd",
        description="Run untrusted Tcl scripts (tclets) in isolated worker processes.",
        formatter_class=TopFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tcletd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = [c for c in COMMANDS if argv and c.name == argv[0]]
    _add_commands(sub, named or COMMANDS)
    return parser


def _add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], commands: Sequence[Command]
) -> None:
    for command in commands:
        if command.epilog is None:
            parser = sub.add_parser(command.name, help=command.help, formatter_class=HelpFormatter)
        else:  # an epilog is laid out by hand: tables and examples
            parser = sub.add_parser(
                command.name,
                help=command.help,
                epilog=command.epilog,
                formatter_class=HelpFormatter,
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
