"""The worker's self-imposed limits, proved on real worker processes.

``FakeHost`` plays the host for one worker started exactly as the zygote starts it
(``tcletd.worker.main.run`` with the spec, the descriptor socketpair and the output socketpairs),
so each test sets the WorkerSpec limits itself, sees every message the worker sends, and can send
any host message. Each test fails if its mechanism is removed: the limits are read back from
``/proc/PID/limits`` or their effect is observed (an error instead of exhaustion, a death).
"""

from __future__ import annotations

import array
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from support import ROOT
from support.waiting import wait_until

from tcletd.shared import protocol as p
from tcletd.shared.states import EXIT_KILLED, HEARTBEAT_INTERVAL
from tcletd.worker.sandbox import FD_HEADROOM, nofile_limit, read_limits

pytestmark = pytest.mark.timeout(60)

BOOT = """
import socket, sys
from tcletd.worker import main
main.run(bytes.fromhex(sys.argv[1]), *(socket.socket(fileno=int(fd)) for fd in sys.argv[2:5]))
"""


class FakeHost:
    """One worker process and the host's end of its wires."""

    def __init__(
        self,
        tmp_path: Path,
        script: str,
        *,
        nofile: int = 0,
        commands: int = 0,
        memory: int = 0,
        cpu: float = 0.0,
    ) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        endpoint = f"ipc://{tmp_path}/host.ipc"
        self.router.bind(endpoint)
        self.fdsock, worker_fd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        out, worker_out = socket.socketpair()
        err, worker_err = socket.socketpair()
        spec = p.WorkerSpec(
            tclet_id="w1",
            token="tok",
            endpoint=endpoint,
            script=script,
            script_name="t.tcl",
            argv=[],
            embed_args={},
            policy="trusted",
            hidden_options=[],
            nofile=nofile,
            commands=commands,
            memory=memory,
            cpu=cpu,
        )
        ends = (worker_fd, worker_out, worker_err)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, p.encode(spec).hex(), *(str(s.fileno()) for s in ends)],
            pass_fds=[s.fileno() for s in ends],
            cwd=ROOT,
            start_new_session=True,
        )
        for s in ends:
            s.close()
        self.out = bytearray()
        self.err = bytearray()
        self._readers = [
            threading.Thread(target=self._read, args=(out, self.out), daemon=True),
            threading.Thread(target=self._read, args=(err, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.messages: list[tuple[float, p.WorkerMessage]] = []
        self._next_sock = 1

    @staticmethod
    def _read(sock: socket.socket, into: bytearray) -> None:
        with sock:
            while data := sock.recv(65536):
                into.extend(data)

    def recv(self, timeout: float = 10.0) -> p.WorkerMessage | None:
        if not self.router.poll(int(timeout * 1000)):
            return None
        _ident, raw = self.router.recv_multipart()
        msg = p.WORKER_DECODER.decode(raw)
        self.messages.append((time.monotonic(), msg))
        return msg

    def expect(self, kind: type, timeout: float = 10.0) -> p.WorkerMessage:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and isinstance(msg, kind):
                return msg
        raise AssertionError(f"no {kind.__name__} in {timeout}s; got {self.messages}")

    def send(self, msg: p.HostMessage) -> None:
        self.router.send_multipart([b"w1", p.encode(msg)])

    def grant(self, req: int, sock: socket.socket) -> int:
        sock_id = self._next_sock
        self._next_sock += 1
        fds = array.array("i", [sock.fileno()])
        payload = p.encode(p.Granted(req=req, sock=sock_id))
        self.fdsock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        return sock_id

    def wait(self, timeout: float = 10.0) -> int:
        """Receive (and time-stamp) the worker's messages until it exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker still running after {timeout}s")
            self.recv(0.01)
        status = self.proc.wait()
        while self.recv(0.05) is not None:
            pass
        for t in self._readers:
            t.join(5)
        return status

    def printed(self, text: bytes) -> None:
        """Wait until the worker wrote ``text`` to its stdout."""
        wait_until(lambda: text in self.out, message=lambda: f"no {text!r} in {bytes(self.out)!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.router.close(0)
        self.fdsock.close()
        self.ctx.term()


class Workers:
    """The ``host`` fixture: ``host(script, nofile=..., commands=..., memory=..., cpu=...)``
    starts a worker with those limits and returns its FakeHost once the worker said hello."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[FakeHost] = []

    def __call__(
        self, script: str, *, nofile: int = 0, commands: int = 0, memory: int = 0, cpu: float = 0.0
    ) -> FakeHost:
        h = FakeHost(
            self.tmp_path, script, nofile=nofile, commands=commands, memory=memory, cpu=cpu
        )
        self.started.append(h)
        hello = h.expect(p.Hello)
        assert isinstance(hello, p.Hello) and hello.token == "tok"
        return h


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(tmp_path)
    yield workers
    for h in workers.started:
        h.close()


def test_limits_are_applied_before_the_script(host: Workers) -> None:
    h = host("puts ready; flush stdout; vwait forever", nofile=10, memory=2**28, cpu=30)
    h.printed(b"ready")
    limits = read_limits(h.proc.pid)
    assert limits["core"] == ("0", "0")
    assert limits["fsize"] == ("0", "0")
    assert limits["nproc"] == ("0", "0")
    assert limits["cpu"] == ("31", "32")
    # memory: the worker's size then, plus the budget (the worker itself is well under 1 GiB)
    soft_as = int(limits["as"][0])
    assert 2**28 < soft_as < 2**28 + 2**30
    # nofile: exactly nofile + headroom slots were free when it was applied (and still are)
    fds = [int(x) for x in os.listdir(f"/proc/{h.proc.pid}/fd")]
    want = nofile_limit(fds, 10 + FD_HEADROOM)
    assert limits["nofile"] == (str(want), str(want))
    with open(f"/proc/{h.proc.pid}/status", encoding="ascii") as status:
        assert "NoNewPrivs:\t1\n" in status.read()
    h.send(p.Stop(reason="test", status=143))
    assert h.wait() == 143


def test_no_limit_fields_means_no_rlimits_but_the_fixed_ones(host: Workers) -> None:
    h = host("puts ready; flush stdout; vwait forever")
    h.printed(b"ready")
    limits = read_limits(h.proc.pid)
    assert limits["core"] == ("0", "0") and limits["fsize"] == ("0", "0")
    assert limits["cpu"] == ("unlimited", "unlimited")
    assert limits["as"] == ("unlimited", "unlimited")
    h.send(p.Stop(reason="test", status=143))
    assert h.wait() == 143


def test_socket_loop_hits_the_descriptor_limit_not_exhaustion(host: Workers) -> None:
    """The host here grants every connect; the worker's RLIMIT_NOFILE still stops the tclet."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        h = host(
            f"""
            set n 0
            while {{$n < 200}} {{
                if {{[catch {{socket 127.0.0.1 {port}}} m o]}} break
                incr n
            }}
            puts "$n {{$m}} [dict get $o -errorcode]"
            """,
            nofile=3,
        )
        granted: list[socket.socket] = []
        while h.proc.poll() is None:
            msg = h.recv(0.2)
            if isinstance(msg, p.Connect):
                conn = socket.create_connection(("127.0.0.1", port))
                granted.append(conn)
                h.grant(msg.req, conn)
        assert h.wait() == 0
        for conn in granted:
            conn.close()
    text = os.strerror(24).lower()
    n = 3 + FD_HEADROOM
    assert h.out.decode() == f"{n} {{couldn't open socket: {text}}} POSIX EMFILE {{{text}}}\n"
    closes = [m.sock for _, m in h.messages if isinstance(m, p.Close)]
    assert n + 1 in closes  # the host hears that the one that did not fit is gone


def test_memory_bomb_dies_at_the_address_space_limit(host: Workers) -> None:
    h = host(
        "set s [string repeat x 1048576]\n"
        "while {[string length $s] < (1 << 29)} {append s $s}\n"
        "puts survived\n",
        memory=64 * 2**20,
    )
    status = h.wait(30)
    assert status < 0 or status not in (0, 1), status  # died (Tcl panics: SIGABRT)
    assert b"survived" not in h.out


def test_commandless_loop_is_ended_by_the_cpu_backstop(host: Workers) -> None:
    """``while 1 {}`` runs no command, so no command limit sees it: RLIMIT_CPU does."""
    h = host("catch {while 1 {}}", cpu=0.5, commands=1000)
    t0 = time.monotonic()
    assert h.wait(20) == -signal.SIGXCPU
    assert time.monotonic() - t0 < 10


def test_file_writes_fail_and_children_cannot_be_made(tmp_path: Path) -> None:
    """``sandbox.apply`` in a process that runs as an unprivileged user (NPROC binds only so)."""
    code = f"""
import os, errno
from tcletd.shared.protocol import WorkerSpec
from tcletd.worker import sandbox
f = open({str(tmp_path / "f")!r}, "w")  # opened before: only the size limit stands in the way
if os.geteuid() == 0:  # root is exempt from RLIMIT_NPROC: become nobody
    os.setgid(65534)
    os.setuid(65534)
spec = WorkerSpec("t", "", "", "", "", [], {{}}, "", [])
applied = sandbox.apply(spec)
print(applied.describe())
try:
    f.write("x")
    f.flush()
    print("wrote")
except OSError as e:
    print("write", errno.errorcode[e.errno])
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    print("forked")
except OSError as e:
    print("fork", errno.errorcode[e.errno])
"""
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 0, ran.stderr
    assert "'dumpable: 0'" in ran.stdout and "'no_new_privs: 1'" in ran.stdout
    assert "write EFBIG\n" in ran.stdout
    assert "fork EAGAIN\n" in ran.stdout


# ---- limits, heartbeats and host messages through the real link -------------------------------


def test_commands_limit_ends_a_caught_busy_loop(host: Workers) -> None:
    h = host("puts started\ncatch {while 1 {incr i}}\nputs survived\n", commands=100_000)
    hit = h.expect(p.LimitHit)
    assert hit == p.LimitHit(limit="commands", detail="commands limit 100000")
    assert h.wait() == EXIT_KILLED
    assert h.out == b"started\n"


def test_heartbeats_say_script_then_idle(host: Workers) -> None:
    h = host("after 700 {set go 1}\nvwait go\nafter 700 {set done 1}\n")
    assert h.wait() == 0
    beats = [(t, m) for t, m in h.messages if isinstance(m, p.Heartbeat)]
    states = [m.state for _, m in beats]
    assert states and states == sorted(states, key=lambda s: s != "script")  # script... idle...
    # It rests in each wait (its `vwait`, then the loop after its script) and is silent until
    # the `after 700` wakes it; its first word then says it runs.
    rests = [i for i, (_, m) in enumerate(beats) if m.waiting]
    assert [beats[i][1].state for i in rests] == ["script", "idle"], beats
    for i in rests:
        assert i + 1 < len(beats) and not beats[i + 1][1].waiting, beats
        assert beats[i + 1][0] - beats[i][0] > HEARTBEAT_INTERVAL, beats
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(beats) if not a[1].waiting]
    assert all(g < HEARTBEAT_INTERVAL * 3 for g in gaps), gaps  # beats while it runs
    assert all(m.commands > 0 for _, m in beats)


def test_quota_exceeded_is_a_background_error_and_the_tclet_goes_on(host: Workers) -> None:
    h = host("puts started; flush stdout\nafter 1500 {puts {still here}; set done 1}\nvwait done\n")
    h.printed(b"started")
    h.send(p.QuotaExceeded(quota="bytes_sent", message="bytes_sent quota exceeded (1024 bytes)"))
    assert h.wait() == 0
    assert h.out == b"started\nstill here\n"
    assert h.err.decode().startswith("bytes_sent quota exceeded (1024 bytes)")


def test_stop_ends_an_idle_tclet_promptly(host: Workers) -> None:
    t0 = time.monotonic()
    h = host("puts ready; flush stdout; after 60000 {puts late}")
    h.printed(b"ready")
    started_in = time.monotonic() - t0  # the baseline: this machine, now
    h.expect(p.Heartbeat)
    t0 = time.monotonic()
    h.send(p.Stop(reason="operator", status=143))
    h.proc.wait(timeout=10)
    stopped_in = time.monotonic() - t0
    assert h.wait() == 143
    print(f"stopped in {stopped_in:.3f} s; the worker started in {started_in:.3f} s")
    # Promptly: in less time than the worker took to start (its pending timer is a minute).
    assert stopped_in < started_in, (stopped_in, started_in)
    assert h.out == b"ready\n"
