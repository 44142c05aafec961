"""The host ``tcletd attack`` attacks, and its way in: the control socket.

Client side of the trust boundary. Every tclet the tool starts, hostile or probe, is a ``run``
over the host's control socket (docs/protocol.md), on the tool's own host (``tcletd serve`` on a
private socket, in a process of its own, pointed at the tool's DNS server: "embedded" in the
report) or on a resident host (``--host PATH``). One path for both, so that what the tool
measures on the embedded host is what an operator's resident host does, and the control attacks
(slowloris, status flood, launch storm) meet the same endpoint either way. What comes back from
the host is parsed as frames and checked for the fields used; a tclet's output is only counted
or parsed by the probes that the tool wrote.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcletd.policy.store import is_policy_path
from tcletd.shared import cpus
from tcletd.shared.control import FrameReader, encode, hello, run_header

MAX_OUTPUT_FRAME = 1 << 20  # the host's own bound on a payload it sends


async def connect(
    path: Path, timeout: float = 10.0, limit: int = 1 << 17
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the control socket. A Unix socket's full backlog is EAGAIN, which
    asyncio's own connect mistakes for "in progress" and then reports connected (the first
    write fails with ENOTCONN): try again shortly instead, as tcletd's own clients do."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: the host's backlog stayed full") from None
            await asyncio.sleep(0.01)
            continue
        except OSError:
            sock.close()
            raise
        return await asyncio.open_unix_connection(sock=sock, limit=limit)


class TargetError(Exception):
    """The host cannot be used as asked (a policy file for a resident host, no host at PATH)."""


@dataclass
class Exit:
    status: int
    reason: str


@dataclass
class Run:
    """One tclet run over its own control connection; closing the connection ends the tclet
    (``client went away``), which is how the tool ends an attack at its deadline."""

    name: str
    tclet_id: str | None = None
    pid: int | None = None
    refused: str | None = None  # the host's error frame instead of a start (host full, ...)
    closed: bool = False  # the tool ended it by closing its connection
    exit: Exit | None = None
    ended_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _writer: asyncio.StreamWriter | None = None
    _task: asyncio.Task[None] | None = None  # its reader: held, as the loop keeps tasks weakly

    def close(self) -> None:
        if self._writer is not None and not self.done.is_set():
            self.closed = True
            self._writer.close()

    async def wait(self, timeout: float | None = None) -> bool:
        """Whether it ended (or was refused) within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), timeout)
        return self.done.is_set()


class Target:
    """A host reached through its control socket at ``path``; ``pid`` is the host process's
    (from ``SO_PEERCRED``), so that its descriptors and processes can be counted."""

    def __init__(self, path: Path, *, kind: str, policy: str, dns: bool) -> None:
        self.path = path
        self.kind = kind  # "embedded" or "resident"
        self.policy = policy  # the name the host knows it by
        self.dns = dns  # whether the host resolves names with the tool's DNS server
        self.pid = 0

    async def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError as exc:
            raise TargetError(f"--host {self.path}: cannot connect: {exc.strerror}") from None
        finally:
            sock.close()
        self.pid = struct.unpack("3i", creds)[0]

    async def run(
        self,
        script: str,
        *,
        name: str,
        origin: str,
        argv: Sequence[str] = (),
        on_stdout: Callable[[bytes], None] | None = None,
        policy: str | None = None,
    ) -> Run:
        """Start a tclet; the returned :class:`Run` is filled in as its frames come."""
        fields: dict[str, Any] = {
            "script_name": f"{name}.tcl",
            "policy": policy or self.policy,
            "origin": origin,
            "argv": list(argv),
        }
        frame = hello() + encode(run_header(fields), script.encode())
        run = Run(name=name)
        try:
            reader, writer = await connect(self.path, limit=1 << 16)
        except (OSError, TimeoutError) as exc:
            run.refused = f"cannot connect: {exc}"
            run.done.set()
            return run
        run._writer = writer
        writer.write(frame)
        run._task = asyncio.ensure_future(_follow(run, reader, on_stdout))
        return run

    async def ps(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The host's running tclets (``ps``)."""
        reader, writer = await connect(self.path, timeout)
        rows: list[dict[str, Any]] = []
        try:
            writer.write(hello() + encode({"op": "status"}))
            frames = FrameReader(MAX_OUTPUT_FRAME)
            while data := await asyncio.wait_for(reader.read(1 << 16), timeout):
                for head, _payload in frames.feed(data):
                    if head.get("event") == "error":
                        raise OSError(str(head.get("message")))
                    if head.get("event") == "status":
                        got = head.get("tclets")
                        rows += (
                            [r for r in got if isinstance(r, dict)] if isinstance(got, list) else []
                        )
                        if head.get("more") is not True:
                            return rows
        finally:
            writer.close()
        return rows


async def _follow(
    run: Run, reader: asyncio.StreamReader, on_stdout: Callable[[bytes], None] | None
) -> None:
    frames = FrameReader(MAX_OUTPUT_FRAME)
    try:
        while data := await reader.read(1 << 16):
            for head, payload in frames.feed(data):
                event = head.get("event")
                if event == "started":
                    run.tclet_id = str(head.get("id"))
                    pid = head.get("pid")
                    run.pid = pid if isinstance(pid, int) else None
                elif event == "stdout" and on_stdout is not None:
                    on_stdout(payload)
                elif event == "exit":
                    status, reason = head.get("status"), head.get("reason")
                    run.exit = Exit(status if isinstance(status, int) else -1, str(reason))
                elif event == "error":
                    run.refused = str(head.get("message"))
    except (OSError, ValueError) as exc:  # ValueError: FrameError, a broken frame
        if run.exit is None and run.refused is None:
            run.refused = f"connection failed: {exc}"
    finally:
        run.ended_at = time.monotonic()
        if run.exit is None and run.refused is None and not run.closed:
            run.refused = "the host closed the connection without an exit"
        run.done.set()
        if run._writer is not None:
            run._writer.close()


async def end_child(proc: asyncio.subprocess.Process | None) -> None:
    """End a child of the tool's by its PID: SIGTERM, then SIGKILL if it is not gone in 5 s."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 5.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def end_with_parent() -> None:
    """In the tool's child that measures or is measured (its host, the control watch), before
    its exec: SIGTERM when the tool dies, however it dies (a killed tool must not leave its
    host and tclets running), and every CPU the tool was given (the tool keeps itself off one,
    :func:`tcletd.shared.cpus.keep_off_lowest`)."""
    load_with_parent()
    cpus.widen()


def load_with_parent() -> None:
    """In the tool's child that only makes load (a control attack's client), before its exec:
    SIGTERM when the tool dies, and it stays on the tool's CPUs, off the one left to tclets
    that behave. Its CPU time is the tool's, spent outside any sandbox, not something the host
    let through: on the probe's CPU, the status flood's client (a tenth of a core) was what the
    probe's round trips waited behind in 12 of their 26 waits over 0.15 ms (perf sched)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class EmbeddedHost:
    """The tool's own host for the run: ``tcletd serve`` in a process of its own (so that the
    tool's clients, probes and flooders never share the host's interpreter), on a private
    socket, its policy directory holding the user's policy file (a control client names
    policies, never paths), its names resolved by the tool's DNS server."""

    def __init__(
        self,
        *,
        policy: str,
        policy_dir: Path | None,
        nameserver: str,
        max_workers: int,
        serve_options: Sequence[str] = (),
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``command``: what runs ``tcletd`` (default ``python -m tcletd``; a benchmark may run
        a host with a lever taken out); ``env``: its environment (default: the tool's)."""
        self._policy = policy
        self._policy_dir = policy_dir
        self._nameserver = nameserver
        self._max_workers = max_workers
        self._options = list(serve_options)
        self._command = list(command or [sys.executable, "-m", "tcletd"])
        self._env = env
        self._tmp = Path(tempfile.mkdtemp(prefix="tcletd-attack-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._said: collections.deque[str] = collections.deque(maxlen=12)  # its last lines

    async def __aenter__(self) -> Target:
        name, policy_dir = self._policy, self._policy_dir
        path = Path(self._policy)
        if is_policy_path(self._policy):
            if not path.is_file():
                raise TargetError(f"--policy {self._policy}: no such file")
            policy_dir = self._tmp / "policies"
            policy_dir.mkdir()
            name = "attacked"
            shutil.copyfile(path, policy_dir / f"{name}.toml")
        sock = self._tmp / "run" / "control.sock"
        argv = [
            "serve", "--socket", str(sock), "--nameserver", self._nameserver,
            "--max-workers", str(self._max_workers),
            "--max-sockets", str(max(4096, self._max_workers * 10)),
            # Each attack's tclet is a run, attached to its connection: a full launch storm
            # (300) beside the slowloris took every connection of the default 256, and the
            # watch's requests were evicted.
            "--max-connections", str(self._max_workers + 256),
            *(["--policy-dir", str(policy_dir)] if policy_dir is not None else []),
            *self._options,
        ]  # fmt: skip
        self._proc = await asyncio.create_subprocess_exec(
            *self._command, *argv, env=self._env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=end_with_parent,
        )  # fmt: skip
        assert self._proc.stderr is not None
        first = await asyncio.wait_for(self._proc.stderr.readline(), 60.0)
        if not first.startswith(b"tcletd: serving on "):
            rest = await asyncio.wait_for(self._proc.stderr.read(4096), 5.0)
            said = (first + rest).decode(errors="replace").strip()
            await self.__aexit__()
            raise TargetError(f"the tool's host did not start: {said}")
        self._drain = asyncio.ensure_future(self._read_stderr(self._proc.stderr))
        target = Target(sock, kind="embedded", policy=name, dns=True)
        target.pid = self._proc.pid
        return target

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        """Keep reading what the host says once it serves (a full pipe would block it), its last
        lines kept: they say why, if it dies."""
        while chunk := await stream.read(1 << 16):
            # A line cut between two reads is kept as two: a tail, not a log.
            self._said.extend(line[:300] for line in chunk.decode(errors="replace").splitlines())

    def died(self) -> str | None:
        """Why the tool's host is gone, if it is: its exit and its last words."""
        proc = self._proc
        if proc is None or proc.returncode is None:
            return None
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"status {proc.returncode}"
        said = " / ".join(self._said) or "nothing on stderr"
        return f"the tool's host exited ({how}): {said}"

    async def __aexit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()  # the host ends its tclets, its zygote and itself
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
        shutil.rmtree(self._tmp, ignore_errors=True)
