"""The host: a private run directory, a zygote, the ROUTER its workers talk to, the broker
that makes their sockets, the watchdog and the audit log, and the tclets it runs.

Host side of the trust boundary. Embedders reach it through :mod:`tcletd.api`; the resident
host's control server (:mod:`tcletd.host.control`) and the CLI's embedded run drive it too.
Each tclet runs under its policy's quotas and limits (``--limit`` style overrides per launch);
the host as a whole holds at most ``max_workers`` tclets and ``max_sockets`` sockets.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec

import msgspec

from tcletd.host.audit import AuditLog, TcletRecords
from tcletd.host.broker import Broker
from tcletd.host.cgroups import Cgroups
from tcletd.host.factory import MAX_WARM
from tcletd.host.hub import Hub
from tcletd.host.ids import TcletIds
from tcletd.host.outputlog import DEFAULT_KEEP, OutputLog
from tcletd.host.quotas import (
    HostFull,
    HostTotals,
    ceilings,
    control_room,
    descriptors_short,
    workers_message,
)
from tcletd.host.registry import DEFAULT_KEEP_ENDED, TcletTable
from tcletd.host.resolver import Resolver, nameservers_from
from tcletd.host.rundir import RunDir, reclaim
from tcletd.host.supervisor import Supervisor
from tcletd.host.tclet import Services, Tclet
from tcletd.host.verbs import TcletVerbs
from tcletd.host.watchdog import PENALTY, PENALTY_LAUNCH, PenaltyBox, PenaltyHeld, Watchdog
from tcletd.policy import Origin, Policy, load_policy
from tcletd.policy.addresses import origin_problem
from tcletd.policy.master import MasterConfig, load_master
from tcletd.policy.quantities import worker_limits
from tcletd.shared import protocol as p
from tcletd.shared.errors import ConfigError
from tcletd.shared.launch import DEFAULT_SCRIPT_NAME, LaunchRequest
from tcletd.shared.origins import default_origin
from tcletd.shared.states import EXIT_TERMINATED, TcletResult
from tcletd.shared.streams import OwnWriter

DEFAULT_POLICY = "home"
# Host-wide totals; every tclet also has its own policy quotas (8 sockets under home).
DEFAULT_MAX_WORKERS = 64
DEFAULT_MAX_SOCKETS = 1024
# At close, seconds the host waits for a stalled reader of its own stdout/stderr to take the
# output it accepted; a reader that takes nothing for that long loses the rest.
OUTPUT_AT_EXIT = 5.0


_P = ParamSpec("_P")


def _to_its_end(launch: Callable[_P, Tclet]) -> Callable[_P, Coroutine[Any, Any, TcletResult]]:
    """``launch`` awaited to the tclet's end: the same arguments, declared once, on launch."""

    async def run_tclet(*args: _P.args, **kwargs: _P.kwargs) -> TcletResult:
        """Run one tclet to its end and return its result; takes what :meth:`launch` takes
        (its output goes to the callbacks, default: our own stdout and stderr)."""
        return await launch(*args, **kwargs).wait()

    # For help() and inspect: launch's arguments, this result.
    signature = inspect.signature(launch).replace(return_annotation=TcletResult.__name__)
    run_tclet.__signature__ = signature  # type: ignore[attr-defined]
    return run_tclet


class Host(TcletVerbs):
    """Runs tclets, each in its own worker process, under the policies it is given."""

    def __init__(
        self,
        *,
        audit: str | Path | None = None,
        master: str | Path | None = None,
        grace: float = 0.5,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_sockets: int = DEFAULT_MAX_SOCKETS,
        penalty: float = PENALTY,
        policy_dir: str | Path | None = None,
        cgroups: bool = True,
        nameservers: Sequence[str] | None = None,
        keep_ended: int = DEFAULT_KEEP_ENDED,
        keep_output: int = DEFAULT_KEEP,
        log_dir: str | Path | None = None,
        warm: int = 0,
    ) -> None:
        """``grace``: seconds between SIGTERM and SIGKILL when the host ends a worker;
        ``penalty``: seconds a site whose tclet was ended at a limit stays in the penalty box,
        where its tclets start demoted and at most one a second (0: no box); ``policy_dir``: the
        operator's directory of policies (``NAME.toml``), named in launch requests beside the
        shipped ones (and before them); ``cgroups``: run each worker in a cgroup of its own
        (hard memory and pids limits, CPU weight) where the host may create one;
        ``nameservers``: ``ADDR[:PORT]`` of the DNS servers for tclets' names (default
        ``$TCLETD_NAMESERVERS``, else the system's); a bad one raises ValueError naming it;
        ``keep_ended``: how many ended tclets :meth:`list` and :meth:`logs` still know;
        ``keep_output``: bytes of each tclet's output kept for :meth:`logs` (the oldest go
        first); ``log_dir``: a directory where each tclet's output is also written, to
        ``ID.log`` (up to 16 MiB each); ``warm``: workers kept forked ahead, each in its own
        network namespace, that become tclets on demand (0: each launch forks one)."""
        if not penalty >= 0:
            raise ValueError(f"Host(penalty=...): seconds must be 0 or more, not {penalty!r}")
        if not 0 <= warm <= MAX_WARM:
            raise ValueError(f"Host(warm=...): workers must be 0 to {MAX_WARM}, not {warm!r}")
        self._warm = warm
        self._penalty = penalty
        self._nameservers = nameservers_from(nameservers)
        self._cgroups = cgroups
        self._policy_dir = None if policy_dir is None else Path(policy_dir)
        if self._policy_dir is not None and not self._policy_dir.is_dir():
            raise ConfigError("policy directory: not a directory", file=str(policy_dir))
        self._log_dir = None if log_dir is None else Path(log_dir)
        if self._log_dir is not None and not self._log_dir.is_dir():
            raise ConfigError("log directory: not a directory", file=str(log_dir))
        if keep_ended < 0 or keep_output < 0:
            raise ValueError("Host(keep_ended=..., keep_output=...): 0 or more")
        self._keep_output = keep_output
        self._ids = TcletIds()
        self._tclets: dict[str, Tclet] = {}
        self.table = TcletTable(self._tclets, keep=keep_ended)
        self._audit_path = audit
        self._master_path = master
        self._grace = grace
        self._totals = HostTotals(max_workers=max_workers, max_sockets=max_sockets, warm=warm)
        self._services: Services | None = None
        self._watchdog: Watchdog | None = None
        self._run_dir: RunDir | None = None
        self._own: dict[str, OwnWriter] = {}  # our stdout/stderr, once a tclet writes to them

    async def __aenter__(self) -> Host:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the host: its zygote (taken, if one was started early), ROUTER and watchdog."""
        loop = asyncio.get_running_loop()
        master: MasterConfig = load_master(self._master_path)
        groups = Cgroups.open() if self._cgroups else Cgroups(reason="turned off (cgroups=False)")
        supervisor = Supervisor(grace=self._grace, cgroups=groups, warm=self._warm)
        reclaim()  # what hosts killed before they could close left behind
        self._run_dir = RunDir()
        hub = Hub(f"ipc://{self._run_dir.path}/hub", loop)
        supervisor.start(loop, hub.endpoint)  # the hub first: warm children connect to it ahead
        self._services = Services(
            loop=loop,
            hub=hub,
            broker=Broker(loop, Resolver(self._nameservers, loop=loop)),
            supervisor=supervisor,
            audit=AuditLog(self._audit_path),
            master=master,
            totals=self._totals,
            penalties=PenaltyBox(self._penalty),
            policy_dir=self._policy_dir,
            tclets=self._tclets,
            on_ended=self.table.ended,
        )
        self._watchdog = Watchdog(self._services.tclets)
        self._watchdog.start(loop)
        self._totals.own = len(os.listdir("/proc/self/fd"))

    def control_descriptors(self, held: int, ahead: int) -> bool:
        """The control endpoint now holds ``held`` connections and may accept ``ahead`` more
        before it says so again: whether the host keeps its descriptor margin and room for a
        launch with them (when not, the newest must evict another or be refused)."""
        self._totals.control = held
        return control_room(self._totals, ahead)

    async def close(self) -> None:
        """End every tclet still running and release the host's resources."""
        if self._services is None:
            return
        tclets = list(self._services.tclets.values())
        await asyncio.gather(*(t.end("host closing", EXIT_TERMINATED) for t in tclets))
        await asyncio.gather(*(t.wait() for t in tclets))
        await asyncio.gather(*(own.drain(OUTPUT_AT_EXIT) for own in self._own.values()))
        for own in self._own.values():
            own.close()
        self._own.clear()
        if self._watchdog is not None:
            await self._watchdog.stop()
        # The zygote's exit overlaps the rest of the close (its end of file is the task's first
        # step: every tclet has ended above): measured (strace), the zygote took 4 ms from end
        # of file to reaped, the host's ROUTER, resolver and audit log 1-2 ms after it, all of
        # it in a one-shot run's wall time.
        shutdown = asyncio.ensure_future(self._services.supervisor.shutdown())
        await asyncio.sleep(0)
        try:
            self._services.hub.close()
            await self._services.broker.close()
            self._services.audit.close()
        finally:
            await shutdown
        if self._run_dir is not None:
            self._run_dir.close()
            self._run_dir = None
        self._services = None

    @property
    def audit(self) -> AuditLog | None:
        """The host's audit log (the control server records its closings there); None before
        :meth:`start`."""
        return self._services.audit if self._services is not None else None

    @property
    def cgroups(self) -> Cgroups | None:
        """The workers' cgroups (``active``, and ``reason``: what is confirmed, or why they are
        off); None before :meth:`start`."""
        return self._services.supervisor.cgroups if self._services is not None else None

    def _own_writer(self, stream: str) -> OwnWriter:
        """This process's ``stream`` as a non-blocking sink, shared by the tclets that use it."""
        assert self._services is not None
        if stream not in self._own:
            self._own[stream] = OwnWriter(stream, self._services.loop)
        return self._own[stream]

    def status(self) -> list[dict[str, object]]:
        """One dict per running tclet: id, pid, policy, state, sockets, bytes_sent,
        bytes_received, cpu (seconds), rss (bytes), age (seconds since launch), demoted (its
        priority was lowered for hogging a core), output (stdout and stderr bytes so far)."""
        if self._services is None:
            return []
        return [t.status() for t in list(self._services.tclets.values())]

    def launch(
        self,
        script: str,
        *,
        script_name: str = DEFAULT_SCRIPT_NAME,
        policy: str | Path | Policy | None = None,
        origin: str | None = None,
        argv: Sequence[str] = (),
        embed_args: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        limits: Sequence[str] = (),
        client: Mapping[str, int] | None = None,
        detached: bool = False,
    ) -> Tclet:
        """Start a tclet and return at once; ``await tclet.wait()`` for its result.

        The keywords are a :class:`~tcletd.shared.launch.LaunchRequest`'s fields (see
        :meth:`launch_request`), but ``policy`` may also be a loaded :class:`Policy` or a
        :class:`~pathlib.Path` to a TOML file. ``limits`` are ``NAME=VALUE`` overrides of the
        policy's quotas and limits (``cpu=5s``, ``sockets=4``), applied also to a policy the
        tclet later asks for; a bad one raises ConfigError naming the key. Past the host's worker
        total, raises :class:`HostFull`; from a site in the penalty box less than a second after
        its last launch, :class:`PenaltyHeld`. ``client`` (who asked for the tclet: the resident
        host's client's ``pid`` and ``uid``) is recorded in the audit log's launch record.
        ``detached``: its output is only kept for :meth:`logs` (and the log directory), not
        written to our stdout and stderr. Without ``origin`` the tclet's origin is what
        ``tcletd run -`` gives a script without a file, the current directory's ``file://`` URL
        (:func:`~tcletd.shared.origins.default_origin`: socket host ``localhost``); a given
        ``origin`` that cannot be parsed raises ConfigError naming ``origin``.
        """
        loaded: Policy | None = None
        if isinstance(policy, Policy):
            loaded, policy = policy, policy.name
        request = LaunchRequest(
            script=script,
            script_name=script_name,
            policy=None if policy is None else str(policy),  # a name, or a file's path
            origin=origin if origin is not None else default_origin(),
            argv=list(argv),
            embed_args=dict(embed_args or {}),
            limits=list(limits),
        )
        return self.launch_request(
            request,
            policy=loaded,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            client=client,
            detached=detached,
        )

    run_tclet = _to_its_end(launch)

    async def prepare(self, request: LaunchRequest) -> LaunchRequest:
        """``request`` ready to launch: a script named by ``url`` fetched (raises
        :class:`~tcletd.host.fetch.FetchFailed` naming the URL and the cause), its origin the
        final URL unless the request gave one; any other request as it is."""
        if request.url is None:
            return request
        # Here, not at the top: http.client, ssl and email cost an embedded run that names no URL
        # 8-15 ms of its start.
        from tcletd.host.fetch import fetch_script

        fetched = await fetch_script(request.url)
        return msgspec.structs.replace(
            request,
            script=fetched.text,
            script_name=request.url,
            origin=request.origin if request.origin is not None else fetched.url,
            url=None,
        )

    def launch_request(
        self,
        request: LaunchRequest,
        *,
        policy: Policy | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
        client: Mapping[str, int] | None = None,
        detached: bool = False,
    ) -> Tclet:
        """Start the tclet ``request`` describes (the control server's and the CLI's way in; the
        rest is as for :meth:`launch`). ``policy``: a loaded policy to use instead of loading
        ``request.policy``. ``request.origin`` None is no origin (unknown); one that cannot be
        parsed raises ConfigError naming ``origin``."""
        if self._services is None:
            raise RuntimeError("Host is not started")
        if request.origin is not None and (problem := origin_problem(request.origin)):
            raise ConfigError(problem, key="origin")
        if self._totals.workers >= self._totals.max_workers:
            raise HostFull(workers_message(self._totals.max_workers))
        if (short := descriptors_short(self._totals)) is not None:
            raise HostFull(short)
        fixed = policy is not None or request.policy is not None
        if policy is None:
            name = request.policy if request.policy is not None else DEFAULT_POLICY
            policy = load_policy(name, self._policy_dir)
        policy = policy.with_overrides(*request.limits)
        tclet_id = self._ids()
        where = Origin.parse(request.origin)
        spec = p.WorkerSpec(
            tclet_id=tclet_id,
            token=secrets.token_hex(32),
            endpoint=self._services.hub.endpoint,
            script=request.script,
            script_name=request.script_name,
            argv=list(request.argv),
            embed_args=dict(request.embed_args),
            policy=policy.name,
            hidden_options=list(policy.hidden_options),
            # What the worker enforces on itself: descriptors on top of the runtime's own (its
            # socket quota), the Tcl command count, and OS backstops under the host's watchdog.
            **worker_limits(policy.quotas, policy.limits),
            **ceilings(
                policy, fixed, self._services.master, where, request.limits, self._policy_dir
            ),
        )
        defaults = (("stdout", on_stdout), ("stderr", on_stderr))
        own = [] if detached else [self._own_writer(n) for n, given in defaults if given is None]
        sinks = {
            n: given or (None if detached else self._own_writer(n).write) for n, given in defaults
        }
        log_path = None if self._log_dir is None else self._log_dir / f"{tclet_id}.log"
        tclet = Tclet(
            self._services,
            spec,
            policy,
            where,
            policy_fixed=fixed,
            on_stdout=sinks["stdout"],
            on_stderr=sinks["stderr"],
            overrides=request.limits,
            log=OutputLog(self._keep_output, log_path),
        )
        for writer in own:  # a stalled reader of ours holds the tclet's output (backpressure)
            writer.watch(tclet.output)
            tclet.output.unhold_at_end = True
        try:
            undo = self._services.penalties.admit_launch(where.site, time.monotonic())
        except PenaltyHeld as exc:
            TcletRecords(self._services.audit, tclet_id, where.url, lambda: policy.name)(
                "quota",
                quota="site_launches",
                limit=1,
                value=round(PENALTY_LAUNCH - exc.wait, 3),
                action="refused",
                request="launch",
                site=exc.site,
            )
            raise
        try:
            tclet.launch(**({"client": dict(client)} if client else {}))
        except BaseException:
            undo()  # no worker: the launch does not count against the site
            raise
        return tclet
