"""Running the catalogue: each attack alone, then all together, beside the probes, in rounds.

Client side of the trust boundary (see :mod:`tcletd.attack.targets`). A round is an "alone"
phase (the echo probe with nothing else running) and an "attack" phase (the attack's tclets,
then the echo probe beside them), alternating which goes first from round to round so that a
drift of the machine does not read as the attack's effect; the ratio reported is the median of
the rounds' attack/alone p99, with min and max. While each alone phase runs, the machine's load
by everything else is measured (:mod:`tcletd.attack.machine`): a baseline taken on a busy
machine gives no latency verdict rather than a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from tcletd.attack.catalogue import Attack
from tcletd.attack.dnsserver import DnsServer
from tcletd.attack.drivers import ControlAttack
from tcletd.attack.judges import Evidence, ended_by, verdict
from tcletd.attack.machine import (
    BUSY_OTHERS_MAX,
    STEAL_MAX,
    Load,
    LoadMeter,
    descendants,
    fd_count,
    rss,
    tcp_inodes,
    tcp_sockets,
)
from tcletd.attack.probes import (
    ControlWatch,
    EchoSample,
    Neighbour,
    ProbeError,
    echo_probe,
    percentile,
)
from tcletd.attack.report import AttackResult
from tcletd.attack.servers import ServerSet
from tcletd.attack.targets import Run, Target

LEAK_DOMAIN = "leak.attack.test"
SLOW_DOMAIN = "slow.attack.test"
FAST_DOMAIN = "fast.attack.test"
SLOW_ANSWER = 5.0  # seconds the DNS server holds an answer for a name under SLOW_DOMAIN
SITE_PORT_BASE = 9100  # attacks come from http://127.0.0.1:(9100-9899)/: a site each
LEAD = 0.3  # seconds of attack before the probe starts
SETTLE = 3.0  # seconds an attack's leftovers may take to go once it has ended
SPAN_MARGIN = 1.0  # seconds of an attack's deadline the probe leaves for its start and end
QUICK_SPAN = 2.5  # seconds, at most, the probe's round trips are spread over with --quick
ALL_TOGETHER = "all_together"


@dataclass
class RunOptions:
    rounds: int
    quick: bool
    probe_trips: int


@dataclass
class Phase:
    """What one attack phase gathered."""

    evidence: Evidence
    sample: EchoSample | None
    spans: tuple[float, float]
    probe_failed: str = ""  # why the probe beside the attack gave no figure


@dataclass
class Runner:
    target: Target
    servers: ServerSet
    dns: DnsServer
    options: RunOptions
    sockets_quota: int | None
    started: float = field(default_factory=time.time)
    timeline: list[tuple[float, float]] = field(default_factory=list)
    alone_loads: list[Load] = field(default_factory=list)
    alone_p99: list[float] = field(default_factory=list)
    alone_p50: list[float] = field(default_factory=list)

    def ours(self) -> list[int]:
        """The tool and its host: with their descendants (servers, zygote, tclets), which
        :class:`LoadMeter` adds, what the machine's load by "others" leaves out."""
        return [os.getpid(), self.target.pid]

    # ---- one attack, its rounds -----------------------------------------------------------

    def unmet(self, attack: Attack) -> str | None:
        if "dns" in attack.needs and not self.target.dns:
            return (
                "needs the tool's DNS server: a resident host resolves with its own "
                "nameservers (run on the embedded host)"
            )
        if "low-port" in attack.needs and self.servers.low_port is None:
            return "needs a listener on port 25 (run as root)"
        return None

    async def attack(self, attacks: list[Attack], name: str) -> AttackResult:
        """Every round of ``attacks`` (one, or all together) and the verdict."""
        ratios: list[float] = []
        oks: list[bool] = []
        first: Phase | None = None
        whys: list[str] = []  # the first round's finding, or else every failed round's
        spans: list[tuple[float, float]] = []
        for r in range(self.options.rounds):
            order = ("alone", "attack") if r % 2 == 0 else ("attack", "alone")
            alone: EchoSample | None = None
            phase: Phase | None = None
            for kind in order:
                if kind == "alone":
                    alone = await self.alone(self.span(attacks))
                else:
                    phase = await self.phase(attacks)
            assert phase is not None
            spans.append(phase.spans)
            if first is None:
                first = phase
            ok, why = self.judge(phase, attacks)
            if phase.probe_failed:
                # A neighbour that could not run beside the attack was not protected from it.
                ok, why = False, f"{why}; {phase.probe_failed}"
            oks.append(ok)
            if not ok and all(oks[:-1]):
                whys = []  # say what failed, not what went well in other rounds
            if (not ok or not whys) and why not in whys:
                whys.append(why)
            if alone is not None and phase.sample is not None and alone.p99 > 0:
                ratios.append(phase.sample.p99 / alone.p99)
        assert first is not None
        ev = first.evidence
        reason, status = ended_by(ev.runs)
        ratio = statistics.median(ratios) if ratios else None
        control = percentile(ev.control_ms, 0.99) if ev.control_ms else None
        return AttackResult(
            name=name,
            contained=all(oks),
            ended_by=reason,
            status=status,
            seconds=round(ev.seconds, 3),
            probe_p99_ratio=None if ratio is None else round(ratio, 3),
            control_p99_ms=None if control is None else round(control, 2),
            leftover_fds=ev.leftover_fds,
            leftover_procs=ev.leftover_procs,
            why="; ".join(whys),
            stopped_by=sorted({s for a in attacks for s in a.stopped_by}),
            ratio_min=round(min(ratios), 3) if ratios else None,
            ratio_max=round(max(ratios), 3) if ratios else None,
            rounds=len(ratios),
            spans=spans,
        )

    def judge(self, phase: Phase, attacks: list[Attack]) -> tuple[bool, str]:
        if len(attacks) == 1:
            return verdict(phase.evidence)
        # All together: each attack's judge over its own tclets, with what was shared.
        ok_all, whys = True, []
        for attack in attacks:
            ev = phase.evidence
            mine = [r for r in ev.runs if r.name == attack.name]
            part = dataclasses.replace(ev, attack=attack, runs=mine)
            ok, why = verdict(part, together=True)
            if not ok:
                ok_all = False
                whys.append(f"{attack.name}: {why}")
        return ok_all, "; ".join(whys) or "every attack contained"

    # ---- phases ---------------------------------------------------------------------------

    def span(self, attacks: list[Attack]) -> float:
        """Seconds the probe's round trips are spread over: the attacks' time but its lead and
        a margin for the probe's own start and end (QUICK_SPAN at most, quick)."""
        span = max(self.deadline(a) for a in attacks) - LEAD - SPAN_MARGIN
        return max(0.5, min(span, QUICK_SPAN) if self.options.quick else span)

    async def alone(self, span: float) -> EchoSample | None:
        meter = LoadMeter(self.ours)
        meter.start()
        try:
            sample = await echo_probe(
                self.target, self.servers.probe_port, self.options.probe_trips, span=span
            )
        except ProbeError:
            return None
        finally:
            load = meter.stop()
        self.alone_loads.append(load)
        self.alone_p99.append(sample.p99)
        self.alone_p50.append(sample.p50)
        self._record(sample)
        return sample

    def _record(self, sample: EchoSample) -> None:
        self.timeline += [(at - self.started, us) for at, us in sample.timeline]

    async def phase(self, attacks: list[Attack]) -> Phase:
        quick = self.options.quick
        deadline = max(self.deadline(a) for a in attacks)
        host = self.target.pid
        fds0, procs0, rss0 = fd_count(host), len(descendants(host)), rss(host)
        self.servers.reset_hits()
        self.servers.reset_peak()
        self.dns.clear()
        watch = ControlWatch(self.target)
        await watch.start()
        neighbour: Neighbour | None = None
        if any(a.judge == "neighbour-connect" for a in attacks):
            neighbour = Neighbour()
            name = f"n{secrets.token_hex(4)}.{FAST_DOMAIN}"
            await neighbour.start(self.target, name, self.servers.probe_port)
        begun = time.monotonic()
        span_start = time.time() - self.started
        runs: list[Run] = []
        ends: list[float] = []  # each run's deadline: its own attack's
        drivers: list[ControlAttack] = []
        for attack in attacks:
            if attack.driver != "tclet":
                drivers.append(ControlAttack(self.target, attack.driver))
                await drivers[-1].start()
            count = attack.quick_count if quick else attack.count
            origin = f"http://127.0.0.1:{site_port(attack)}/"
            own = begun + self.deadline(attack)
            for _ in range(count):
                runs.append(
                    await self.target.run(
                        attack.script, name=attack.name, origin=origin, argv=self.argv()
                    )
                )
                ends.append(own)
        await asyncio.sleep(LEAD)
        probe = asyncio.ensure_future(
            echo_probe(
                self.target,
                self.servers.probe_port,
                self.options.probe_trips,
                span=self.span(attacks),
            )
        )
        worker_fds, growth, demoted = 0, 0, False
        # Only where a judge reads them: listing 60 workers' descriptors every 0.1 s is work the
        # tool would add beside the probe.
        counted = {a.name for a in attacks if a.judge == "worker-fds"}
        socketed = {a.name for a in attacks if a.judge == "peak-sockets"}
        tcp_max: dict[str, int] = {}
        until = begun + deadline
        while time.monotonic() < until and not (
            all(r.done.is_set() for r in runs) and probe.done()
        ):
            now = time.monotonic()
            tcp = tcp_inodes() if socketed else set()  # the host's whole table: once a look
            for run, end in zip(runs, ends, strict=True):
                if now >= end:
                    run.close()
                elif run.pid is not None and not run.done.is_set():
                    if run.name in counted:
                        worker_fds = max(worker_fds, fd_count(run.pid))
                    if run.name in socketed:
                        held = tcp_sockets(run.pid, tcp)
                        tcp_max[run.name] = max(tcp_max.get(run.name, 0), held)
            growth = max(growth, rss(host) - rss0)
            demoted = demoted or watch.demoted(r.tclet_id for r in runs)
            await asyncio.sleep(0.1)
        for run in runs:
            run.close()
        await asyncio.gather(*(r.wait(10.0) for r in runs))
        ended = max((r.ended_at or time.monotonic() for r in runs), default=time.monotonic())
        for driver in drivers:
            await driver.stop()
        sample: EchoSample | None
        probe_failed = ""
        try:
            sample = await probe
            self._record(sample)
        except ProbeError as exc:
            sample, probe_failed = None, str(exc)
        await watch.stop()
        if neighbour is not None:
            await neighbour.stop()
        span_end = time.time() - self.started
        leftover_fds, leftover_procs = await self.settle(fds0, procs0)
        evidence = Evidence(
            attack=attacks[0],
            runs=runs,
            seconds=ended - begun,
            deadline=deadline,
            sockets_quota=self.sockets_quota,
            peak_connections=self.servers.peak_connections(),
            listener_hits=self.servers.listener_hits(),
            leak_queries=self.dns.queries_under(LEAK_DOMAIN),
            neighbour_ms=neighbour.connects if neighbour else [],
            neighbour_errors=neighbour.errors if neighbour else [],
            host_growth=growth,
            worker_fds_max=worker_fds,
            worker_tcp=tcp_max,
            demoted=demoted,
            control_ms=watch.answers,
            control_failures=watch.failures,
            leftover_fds=leftover_fds,
            leftover_procs=leftover_procs,
        )
        return Phase(evidence, sample, (span_start, span_end), probe_failed)

    def deadline(self, attack: Attack) -> float:
        return attack.quick_deadline if self.options.quick else attack.deadline

    async def settle(self, fds0: int, procs0: int) -> tuple[int, int]:
        """What the attack left in the host once it had ``SETTLE`` seconds to go."""
        host = self.target.pid
        until = time.monotonic() + SETTLE
        while True:
            fds, procs = fd_count(host) - fds0, len(descendants(host)) - procs0
            if (fds <= 0 and procs <= 0) or time.monotonic() > until:
                return max(0, fds), max(0, procs)
            await asyncio.sleep(0.1)

    def argv(self) -> list[str]:
        s = self.servers
        pairs = {
            "host": "127.0.0.1",
            "echo_port": s.echo_port,
            "silent_port": s.silent_port,
            "sender_port": s.sender_port,
            "closed_port": s.closed_port,
            "listener_host": s.listener_host,
            "listener_port": s.listener_port,
            "low_port": s.low_port if s.low_port is not None else 0,
            "leak_domain": LEAK_DOMAIN,
            "slow_domain": SLOW_DOMAIN,
            "fast_domain": FAST_DOMAIN,
            "token": secrets.token_hex(8),
            "quick": int(self.options.quick),
        }
        return [str(x) for kv in pairs.items() for x in kv]

    # ---- the baseline ---------------------------------------------------------------------

    def baseline(self) -> tuple[bool, dict[str, float], str]:
        if not self.alone_loads:
            return False, {}, "no baseline was measured"
        busy = statistics.median(x.busy_others for x in self.alone_loads)
        steal = statistics.median(x.steal for x in self.alone_loads)
        figures = {
            "busy_others": round(busy, 3),
            "steal": round(steal, 4),
            "probe_p50_us": statistics.median(self.alone_p50) if self.alone_p50 else 0.0,
            "probe_p99_us": statistics.median(self.alone_p99) if self.alone_p99 else 0.0,
        }
        if busy > BUSY_OTHERS_MAX:
            return (
                False,
                figures,
                (
                    f"the machine was busy with other work during the baseline ({busy:.2f} of a "
                    f"core, over {BUSY_OTHERS_MAX:g}): no verdict on latency"
                ),
            )
        if steal > STEAL_MAX:
            return (
                False,
                figures,
                (
                    f"the hypervisor stole {steal:.0%} of the CPUs during the baseline (over "
                    f"{STEAL_MAX:.0%}): no verdict on latency"
                ),
            )
        return True, figures, ""


def site_port(attack: Attack) -> int:
    """A site of the attack's own, the same in every round (the penalty box remembers it)."""
    return SITE_PORT_BASE + zlib.crc32(attack.name.encode()) % 800


async def run_catalogue(
    runner: Runner, attacks: list[Attack], on_next: Callable[[str], None]
) -> list[AttackResult]:
    """Each attack alone (those whose needs the run cannot meet are reported skipped), then the
    runnable ones all together."""
    results: list[AttackResult] = []
    runnable: list[Attack] = []
    with contextlib.suppress(ProbeError):
        await echo_probe(runner.target, runner.servers.probe_port, 200)  # warm-up, not counted
    for attack in attacks:
        on_next(attack.name)
        why = runner.unmet(attack)
        if why is not None:
            results.append(skipped(attack, why))
            continue
        runnable.append(attack)
        results.append(await runner.attack([attack], attack.name))
    if len(runnable) > 1:
        on_next(ALL_TOGETHER)
        results.append(await runner.attack(runnable, ALL_TOGETHER))
    return results


def skipped(attack: Attack, why: str) -> AttackResult:
    return AttackResult(
        name=attack.name,
        contained=True,
        ended_by="skipped",
        status=None,
        seconds=0.0,
        probe_p99_ratio=None,
        control_p99_ms=None,
        leftover_fds=0,
        leftover_procs=0,
        why=why,
        stopped_by=list(attack.stopped_by),
        ratio_min=None,
        ratio_max=None,
        rounds=0,
        skipped=why,
    )
