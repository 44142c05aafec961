"""The command line's option types and the argument groups several commands share.

Operator side. Each type checks one option's value when it is given and says what it expected
(argparse prints it as a usage error, exit 2); what a check needs (the quantities parsers, the
resolver's address parser, the origin check) is imported only then, so that a ``tcletd run
--host`` pays for none of it.
"""

from __future__ import annotations

import argparse

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
