"""The embedding API: :class:`Host` runs tclets; the CLI is a thin client of it.

Host side of the trust boundary. A Host owns a private run directory (mode 0700) holding the
``ipc://`` endpoint, the fork server its workers come from, the ROUTER they talk to, the broker
that makes their sockets, and the audit log. Use it as an async context manager::

    async with Host(audit="audit.jsonl") as host:
        result = await host.run_tclet("puts hello", script_name="hello.tcl")
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tcletd import protocol as p
from tcletd.host.audit import AuditLog
from tcletd.host.broker import Broker
from tcletd.host.hub import Hub
from tcletd.host.supervisor import Supervisor
from tcletd.host.tclet import Services, Tclet, TcletResult
from tcletd.policy import Origin, Policy, load_policy
from tcletd.policyfile import MasterConfig, load_master

__all__ = ["Host", "TcletResult"]

DEFAULT_POLICY = "home"


def _write_to(stream: str) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(data)
        out.buffer.flush()

    return write


class Host:
    """Runs tclets, each in its own worker process, under the policies it is given."""

    def __init__(
        self,
        *,
        audit: str | Path | None = None,
        master: str | Path | None = None,
        grace: float = 1.0,
    ) -> None:
        self._audit_path = audit
        self._master_path = master
        self._grace = grace
        self._services: Services | None = None
        self._run_dir: Path | None = None
        self._tclets: dict[str, Tclet] = {}

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
        """Start the fork server, then the ROUTER: forks must precede any ZeroMQ context."""
        loop = asyncio.get_running_loop()
        master: MasterConfig = load_master(self._master_path)
        supervisor = Supervisor(grace=self._grace)
        supervisor.start()
        self._run_dir = Path(tempfile.mkdtemp(prefix="tcletd-"))
        self._run_dir.chmod(0o700)
        hub = Hub(f"ipc://{self._run_dir}/hub", loop)
        self._services = Services(
            loop=loop,
            hub=hub,
            broker=Broker(loop),
            supervisor=supervisor,
            audit=AuditLog(self._audit_path),
            master=master,
        )

    async def close(self) -> None:
        """End every tclet still running and release the host's resources."""
        if self._services is None:
            return
        await asyncio.gather(*(t.end("host closing") for t in list(self._tclets.values())))
        await self._services.supervisor.shutdown()
        self._services.hub.close()
        self._services.audit.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._services = None

    async def run_tclet(
        self,
        script: str,
        *,
        script_name: str = "tclet.tcl",
        policy: str | Path | Policy | None = None,
        origin: str | None = None,
        argv: Sequence[str] = (),
        embed_args: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> TcletResult:
        """Run one tclet to its end; its output goes to the callbacks (default: our own)."""
        tclet = self.launch(
            script,
            script_name=script_name,
            policy=policy,
            origin=origin,
            argv=argv,
            embed_args=embed_args,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        try:
            return await tclet.wait()
        finally:
            self._tclets.pop(tclet.id, None)

    def launch(
        self,
        script: str,
        *,
        script_name: str = "tclet.tcl",
        policy: str | Path | Policy | None = None,
        origin: str | None = None,
        argv: Sequence[str] = (),
        embed_args: Mapping[str, str] | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> Tclet:
        """Start a tclet and return at once; ``await tclet.wait()`` for its result."""
        if self._services is None:
            raise RuntimeError("Host is not started")
        fixed = policy is not None
        if not isinstance(policy, Policy):
            policy = load_policy(str(policy) if policy is not None else DEFAULT_POLICY)
        tclet_id = secrets.token_hex(16)
        spec = p.WorkerSpec(
            tclet_id=tclet_id,
            token=secrets.token_hex(32),
            endpoint=self._services.hub.endpoint,
            script=script,
            script_name=script_name,
            argv=list(argv),
            embed_args=dict(embed_args or {}),
            policy=policy.name,
            hidden_options=list(policy.hidden_options),
        )
        tclet = Tclet(
            self._services,
            spec,
            policy,
            Origin.parse(origin),
            policy_fixed=fixed,
            on_stdout=on_stdout or _write_to("stdout"),
            on_stderr=on_stderr or _write_to("stderr"),
        )
        self._tclets[tclet_id] = tclet
        tclet.launch()
        return tclet
