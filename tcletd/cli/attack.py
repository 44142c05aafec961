"""``tcletd attack``: the resource-attack test of a policy and a host, as a command.

Operator side. Sets up what the run needs (the local servers, the DNS server on 127.0.0.1, the
host: embedded, or resident with ``--host``), runs the catalogue (:mod:`tcletd.attack.runner`),
and reports: a table, optionally JSON and a plot. Exit status 0 only if every attack was
contained; 1 if one was not; 2 for a usage error (a bad catalogue, an unknown attack, a policy
file for a resident host); 3 when the run could not measure (a probe failed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tcletd import __version__

if TYPE_CHECKING:
    from tcletd.attack.catalogue import Attack
    from tcletd.attack.report import AttackResult, Report
    from tcletd.attack.runner import Runner


EXIT_NOT_CONTAINED = 1
EXIT_USAGE = 2
EXIT_UNMEASURED = 3


def attack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", default="home", metavar="NAME|FILE", help="the policy attacked (home)"
    )
    parser.add_argument("--policy-dir", type=Path, metavar="DIR", help="where NAME is looked up")
    parser.add_argument("--host", metavar="PATH", help="a resident host's control socket")
    parser.add_argument("--only", default="", metavar="NAME,...", help="only these attacks")
    parser.add_argument(
        "--catalogue", action="append", type=Path, default=[], metavar="DIR",
        help="a directory of your own attacks (NAME.tcl with a header); repeatable",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, metavar="N", help="rounds per attack (3; 1 quick)")
    parser.add_argument("--quick", action="store_true", help="short deadlines and probes")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the probe's latency")


def attack(args: argparse.Namespace) -> int:
    from tcletd.attack.catalogue import CatalogueError, load_catalogue, select
    from tcletd.attack.report import PlotUnavailable
    from tcletd.policy.store import is_policy_path

    if args.rounds is not None and not 1 <= args.rounds <= 50:
        return _usage(f"--rounds: expected 1 to 50, got {args.rounds}")
    if args.host and is_policy_path(args.policy):
        return _usage(
            f"--policy {args.policy}: a resident host takes policies by name; start it with "
            "--policy-dir DIR holding the file and give its NAME"
        )
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _usage(
                str(PlotUnavailable("--plot needs matplotlib: pip install 'tcletd[plot]'"))
            )
    try:
        attacks = load_catalogue(args.catalogue)
        if args.only:
            attacks = select(attacks, [n for n in args.only.split(",") if n])
    except CatalogueError as exc:
        return _usage(str(exc))
    return asyncio.run(_attack(args, attacks))


def _usage(message: str) -> int:
    print(f"tcletd: attack: {message}", file=sys.stderr)
    return EXIT_USAGE


async def _attack(args: argparse.Namespace, attacks: list[Attack]) -> int:
    from tcletd.attack.dnsserver import DnsServer
    from tcletd.attack.probes import ProbeError
    from tcletd.attack.runner import FAST_DOMAIN, SLOW_ANSWER, SLOW_DOMAIN, Runner, RunOptions
    from tcletd.attack.servers import ServerSet
    from tcletd.attack.targets import EmbeddedHost, Target, TargetError
    from tcletd.shared import cpus

    # The tool's own looks (a /proc walk every 0.1 s, the watch's answers read) are no attack: off
    # the CPU the host leaves to tclets, as the host keeps itself, they are not counted against
    # the host (the tool's children, its servers and attackers, run anywhere).
    cpus.keep_off_lowest()
    quick = bool(args.quick)
    options = RunOptions(
        rounds=args.rounds or (1 if quick else 3), quick=quick, probe_trips=1000 if quick else 3000
    )
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    began = time.monotonic()
    records = {f"*.{FAST_DOMAIN}": ["127.0.0.1"], f"*.{SLOW_DOMAIN}": ["127.0.0.1"]}
    try:
        quota = _sockets_quota(args)
        with ServerSet() as servers, DnsServer(records, delays={SLOW_DOMAIN: SLOW_ANSWER}) as dns:
            if args.host:
                target = Target(Path(args.host), kind="resident", policy=args.policy, dns=False)
                await target.open()  # its pid, from the kernel
                runner = Runner(target, servers, dns, options, quota)
                results = await _run(runner, attacks)
            else:
                embedded = EmbeddedHost(
                    policy=args.policy,
                    policy_dir=args.policy_dir,
                    nameserver=dns.address,
                    max_workers=1000,
                )
                async with embedded as target:
                    runner = Runner(target, servers, dns, options, quota)
                    results = await _run(runner, attacks)
                    died = embedded.died()
                if died is not None:  # every attack after it failed to connect: say why
                    print(f"tcletd: attack: {died}", file=sys.stderr)
    except TargetError as exc:
        return _usage(str(exc))
    except ProbeError as exc:
        print(f"tcletd: attack: no measurement: {exc}", file=sys.stderr)
        return EXIT_UNMEASURED
    report = _report(args, runner, results, started, time.monotonic() - began)
    from rich.console import Console

    from tcletd.attack.report import plot, render_table, to_json

    # Off a terminal (a log, a pipe) nothing is cropped: the why column is the finding.
    width = None if sys.stdout.isatty() else 200
    render_table(report, Console(file=sys.stdout, width=width))
    if args.json is not None:
        args.json.write_bytes(to_json(report))
    if args.plot is not None:
        plot(report, args.plot)
    return 0 if report.contained else EXIT_NOT_CONTAINED


async def _run(runner: Runner, attacks: list[Attack]) -> list[AttackResult]:
    from tcletd.attack.report import Progress
    from tcletd.attack.runner import run_catalogue

    total = len(attacks) + (1 if len(attacks) > 1 else 0)
    with Progress(total, sys.stderr) as progress:
        return await run_catalogue(runner, attacks, progress.next)


def _report(
    args: argparse.Namespace,
    runner: Runner,
    results: list[AttackResult],
    started: str,
    seconds: float,
) -> Report:
    from tcletd.attack.report import Report

    ok, figures, note = runner.baseline()
    if not ok:  # no latency verdict from a contaminated baseline
        for result in results:
            result.probe_p99_ratio = result.ratio_min = result.ratio_max = None
    return Report(
        policy=args.policy,
        host=runner.target.kind,
        contained=all(r.contained for r in results),
        baseline_ok=ok,
        baseline=figures,
        baseline_note=note,
        attacks=results,
        timeline=[(round(t, 3), us) for t, us in runner.timeline],
        version=__version__,
        started=started,
        seconds=round(seconds, 1),
        quick=bool(args.quick),
    )


def _sockets_quota(args: argparse.Namespace) -> int | None:
    """The policy's sockets quota, for the judge of socket attacks (None: no quota)."""
    from tcletd.attack.targets import TargetError
    from tcletd.policy import load_policy
    from tcletd.shared.errors import TcletdError

    try:
        policy = load_policy(args.policy, args.policy_dir)
    except TcletdError as exc:  # a resident host's own policy directory: not ours to read
        if args.host:
            return None
        raise TargetError(f"--policy {args.policy}: {exc}") from None
    value = policy.quotas.sockets
    return None if value == math.inf else int(value)
