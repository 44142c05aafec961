"""The command line's option types and the argument groups several commands share.

Operator side. Each type checks one option's value when it is given and says what it expected
(argparse prints it as a usage error, exit 2); what a check needs (the quantities parsers, the
resolver's address parser, the origin check) is imported only then, so that a ``tcletd run
--host`` pays for none of it. The help formatters are here too, for the same reason.
"""

from __future__ import annotations

import argparse
import os
import sys

from tcletd.shared.errors import ConfigError

# ``--limit``'s help comes from the quotas and limits registry, read when help is printed: the
# registry imports more than a ``tcletd run --host`` should pay for at every start.
LIMIT_HELP = "(the quotas and limits registry's examples)"


def count(text: str) -> int:
    """A count of 1 or more for an option."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def whole(text: str) -> int:
    """A count of 0 or more for an option."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return value


def share(text: str) -> float:
    """A share of one core, more than 0 and at most 1 (``0.25``), for an option."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"expected a share of one core, more than 0 and at most 1, got {text!r}"
        )
    return value


def positive_seconds(text: str) -> float:
    """A duration of more than 0 for an option."""
    value = seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a duration of more than 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A duration of 0 or more (``60s``, ``2m``, ``0``) for an option."""
    from tcletd.policy.quantities import parse_duration  # only when the option is given

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration of 0 or more, got {text!r}")
    return value


def nameserver(text: str) -> str:
    """``ADDR[:PORT]`` of a DNS server for an option, checked when the option is given."""
    from tcletd.host.resolver import parse_nameserver

    try:
        return parse_nameserver(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def nameserver_argument(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument(
        "--nameserver",
        action="append",
        type=nameserver,
        default=None,
        metavar="ADDR[:PORT]",
        help=f"a DNS server for the names tclets ask for{note} (repeatable; default: "
        "$TCLETD_NAMESERVERS if set, else the system's resolv.conf; the hosts file is read "
        "first either way)",
    )


def check_origin(origin: str) -> None:
    """An ``--origin`` that cannot be parsed is a usage error (exit 2), as in ``policy check``."""
    from tcletd.policy.addresses import origin_problem  # only when the option is given

    problem = origin_problem(origin)
    if problem is not None:
        raise ConfigError(problem, key="--origin")


# ---- help -------------------------------------------------------------------------------------


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, as argparse's formatters take it, without shutil:
    argparse makes a formatter for every argument it adds (to check its metavar), and the first
    one imported shutil (bz2, lzma, fnmatch: 4-7 ms here) for a run that prints no help."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):  # closed, detached, or not a terminal
            columns = 0
    return columns if columns > 0 else 80


class TopFormatter(argparse.HelpFormatter):
    """argparse's own formatter, less the import of shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _columns() - 2 if width is None else width  # as argparse's own default
        super().__init__(prog, indent_increment, max_help_position, width)


class HelpFormatter(TopFormatter, argparse.RawDescriptionHelpFormatter):
    """A command's: its epilog laid out by hand (tables, examples), ``--limit``'s help read
    from the registry when help is printed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help == LIMIT_HELP:
            from tcletd.policy.quantities import limit_help

            return limit_help()
        return super()._get_help_string(action)
