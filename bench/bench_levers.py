"""What each isolation lever contributes: the whole attack catalogue at once, beside the probe,
on hosts that each lack one lever, side by side in one run.

    .venv/bin/python bench/bench_levers.py              # 3 rounds, quick deadlines
    .venv/bin/python bench/bench_levers.py --rounds 5 --json levers.json

Levers (each host is ``tcletd serve`` started by this script, as ``tcletd attack`` starts its
own; the policy is the shipped ``home``; ``bench/lever_host.py`` takes a lever out of the host's
code before serving):

- ``shipped``: every lever, as shipped;
- ``no-penalty``: ``--penalty 0``: no penalty box (a site whose tclet was ended at a limit
  starts its next tclets at full weight, as fast as it likes);
- ``no-cgroups``: ``TCLETD_CGROUPS=0``: no cgroup per worker (no cgroup memory or pids limit:
  the watchdog's RSS look ends a tclet at its memory limit);
- ``no-demotion``: the host never demotes (no idle scheduling class, no CPU kept free);
- ``no-crowds``: a site's tclets past its first four start at full priority;
- ``no-affinity``: no CPU kept for tclets that behave (the host, its zygote and demoted workers
  may run on every CPU; the bench itself keeps off the lowest in every run, as the tool does);
- ``no-pacing``: control clients are never paced;
- ``no-realtime``: the host runs in the normal scheduling class, not ahead of its workers;
- ``none``: all of them out.

Each round runs every lever once, in an order rotated from round to round, and each run is an
alone phase then the catalogue all together (``tcletd.attack.runner``); the figure is the median
over rounds of the echo probe's p99 under attack over its p99 alone, with min and max. The
machine's load by other processes is checked during every alone phase, as ``tcletd attack``
does; a lever whose baselines were disturbed says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

from tcletd.attack.catalogue import load_catalogue
from tcletd.attack.dnsserver import DnsServer
from tcletd.attack.runner import FAST_DOMAIN, SLOW_ANSWER, SLOW_DOMAIN, Runner, RunOptions
from tcletd.attack.servers import ServerSet
from tcletd.attack.targets import EmbeddedHost
from tcletd.shared import cpus

HERE = Path(__file__).resolve().parent
LEVER_HOST = [sys.executable, str(HERE / "lever_host.py")]
LEVERS: dict[str, tuple[list[str], dict[str, str], list[str]]] = {
    # name: (command, extra environment, serve options)
    "shipped": ([sys.executable, "-m", "tcletd"], {}, []),
    "no-penalty": ([sys.executable, "-m", "tcletd"], {}, ["--penalty", "0"]),
    "no-cgroups": ([sys.executable, "-m", "tcletd"], {"TCLETD_CGROUPS": "0"}, []),
    "no-demotion": (LEVER_HOST, {"TCLETD_LEVERS_OUT": "demotion"}, []),
    "no-crowds": (LEVER_HOST, {"TCLETD_LEVERS_OUT": "crowds"}, []),
    "no-affinity": (LEVER_HOST, {"TCLETD_LEVERS_OUT": "affinity"}, []),
    "no-pacing": (LEVER_HOST, {"TCLETD_LEVERS_OUT": "pacing"}, []),
    "no-realtime": (LEVER_HOST, {"TCLETD_LEVERS_OUT": "realtime"}, []),
    "none": (
        LEVER_HOST,
        {"TCLETD_CGROUPS": "0", "TCLETD_LEVERS_OUT": "demotion,crowds,affinity,pacing,realtime"},
        ["--penalty", "0"],
    ),
}


async def one(
    lever: str, servers: ServerSet, dns: DnsServer, quick: bool
) -> tuple[float | None, bool, str, float | None, bool]:
    command, extra, options = LEVERS[lever]
    attacks = load_catalogue()
    host = EmbeddedHost(
        policy="home",
        policy_dir=None,
        nameserver=dns.address,
        max_workers=1000,
        serve_options=options,
        command=command,
        env={**os.environ, **extra},
    )
    async with host as target:
        runner = Runner(
            target, servers, dns, RunOptions(rounds=1, quick=quick, probe_trips=2000), 8
        )
        result = await runner.attack(attacks, "all_together")
        ok, _figures, note = runner.baseline()
    figures = (result.control_p99_ms, result.contained)
    return result.probe_p99_ratio, ok, note or result.why, *figures


async def bench(args: argparse.Namespace) -> dict[str, list[float]]:
    ratios: dict[str, list[float]] = {lever: [] for lever in args.levers}
    notes: dict[str, list[str]] = {lever: [] for lever in args.levers}
    records = {f"*.{FAST_DOMAIN}": ["127.0.0.1"], f"*.{SLOW_DOMAIN}": ["127.0.0.1"]}
    with ServerSet() as servers, DnsServer(records, delays={SLOW_DOMAIN: SLOW_ANSWER}) as dns:
        for r in range(args.rounds):
            order = args.levers[r % len(args.levers) :] + args.levers[: r % len(args.levers)]
            for lever in order:
                ratio, ok, note, control, contained = await one(lever, servers, dns, not args.full)
                flag = "" if ok else f"  (baseline disturbed: {note})"
                verdict = "contained" if contained else f"NOT contained: {note[:160]}"
                print(
                    f"  round {r + 1} {lever:<12} p99 ratio {ratio}, control p99 {control} ms,"
                    f" {verdict}{flag}",
                    flush=True,
                )
                if ratio is not None and ok:
                    ratios[lever].append(ratio)
                elif not ok:
                    notes[lever].append(note)
    print(f"\n{'lever taken out':<14} {'median':>7} {'min':>6} {'max':>6}  rounds")
    for lever, got in ratios.items():
        if got:
            print(
                f"{lever:<14} {statistics.median(got):>7.2f} {min(got):>6.2f} {max(got):>6.2f}"
                f"  {len(got)}" + (f" ({len(notes[lever])} disturbed)" if notes[lever] else "")
            )
        else:
            print(f"{lever:<14} {'-':>7}  no undisturbed round")
    return ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the catalogue's full deadlines")
    ap.add_argument("--levers", default=",".join(LEVERS), help="which hosts (default: all)")
    ap.add_argument("--json", type=Path, help="also write the ratios as JSON")
    args = ap.parse_args()
    args.levers = [x for x in args.levers.split(",") if x]
    unknown = set(args.levers) - set(LEVERS)
    if unknown:
        ap.error(f"unknown levers {sorted(unknown)}; known: {', '.join(LEVERS)}")
    print(f"levers bench: {args.rounds} rounds, {os.cpu_count()} CPUs", flush=True)
    cpus.keep_off_lowest()  # as tcletd attack does: its own looks are not the host's
    ratios = asyncio.run(bench(args))
    if args.json:
        args.json.write_text(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
