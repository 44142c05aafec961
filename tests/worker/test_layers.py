"""The layers under the Safe Base, proved from inside real workers: network namespace, seccomp.

Each worker comes from the real zygote through a :class:`Supervisor` and runs a probe
(``tcletd.worker.probes``) where its script would start, once the whole sandbox is in place;
the probe prints what the kernel let it do. A probe prefixed with ``no-seccomp`` runs without
the filter, which shows the network namespace alone stops a connection, and that the tests
would see the difference if the filter were gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ROOT
from support.runtime import make_spec

from tcletd.host.supervisor import Supervisor
from tcletd.worker import netns, sandbox

pytestmark = pytest.mark.timeout(60)


def _unshare_works(*flags: str) -> bool:
    """Whether util-linux's ``unshare FLAGS true`` succeeds: the kernel's word on whether a
    namespace can be had here, independent of the code under test."""
    try:
        ran = subprocess.run(["unshare", *flags, "true"], capture_output=True, timeout=10)
    except FileNotFoundError:
        return False
    return ran.returncode == 0


USERNS = _unshare_works("--user", "--net")
NETNS = _unshare_works("--net") or USERNS
needs_netns = pytest.mark.skipif(not NETNS, reason="this kernel or container gives no netns")
ACTIVE_NETNS = re.compile(
    r"network namespace: active \(own namespace(, through a user namespace.*)?, no interfaces up\)"
)


def run_probes(*probes: str) -> list[str]:
    """Launch one worker per probe, all at once; the ``PROBE`` line each printed."""

    async def main() -> list[str]:
        supervisor = Supervisor(grace=1.0)
        loop = asyncio.get_running_loop()
        supervisor.start(loop)
        workers = []
        try:
            for i, probe in enumerate(probes):
                # A probe never says hello: the endpoint is never used.
                spec = make_spec("", tclet_id=f"probe{i}", policy="trusted", probe=probe)
                workers.append(supervisor.launch(spec, loop))
            outs = []
            for worker in workers:
                status = await asyncio.wait_for(asyncio.shield(worker.exited), 30)
                worker.stdout.setblocking(True)
                worker.stdout.settimeout(5)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := worker.stdout.recv(65536):
                        data += chunk
                assert status == 0, (status, data)
                outs.append(data.decode())
            return outs
        finally:
            await supervisor.shutdown()

    outs = asyncio.run(main())
    lines = []
    for probe, out in zip(probes, outs, strict=True):
        found = [line for line in out.splitlines() if line.startswith("PROBE ")]
        assert len(found) == 1, (probe, out)
        lines.append(found[0])
    return lines


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 in the host's namespace, that must see no connection."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(0.3)
        yield sock
        with pytest.raises(TimeoutError):
            conn, peer = sock.accept()
            conn.close()
            raise AssertionError(f"the listener got a connection from {peer}")


def fields(line: str) -> dict[str, str]:
    return dict(word.split("=", 1) for word in line.split()[2:])


@needs_netns
def test_each_worker_has_its_own_namespace_and_a_filter_on_every_thread() -> None:
    host_ns = str(netns.namespace())
    first, second, bare = (fields(x) for x in run_probes("layers", "layers", "no-seccomp layers"))
    assert first["netns"] != host_ns and second["netns"] != host_ns
    assert first["netns"] != second["netns"]  # one namespace per worker, not one for all
    assert first["seccomp"] == "2" and int(first["filters"]) >= 1
    # The zygote compiled the filter once; each worker wrote its own pid in (the kill tests
    # below check that pid: signals to itself pass, to anyone else fail).
    assert first["compiled"] == second["compiled"] == "once"
    assert bare["seccomp"] == "0" and bare["netns"] != host_ns


@needs_netns
def test_a_socket_of_the_workers_own_reaches_nothing() -> None:
    with listener() as sock:
        port = sock.getsockname()[1]
        filtered, bare = run_probes(
            f"connect 127.0.0.1 {port}", f"no-seccomp connect 127.0.0.1 {port}"
        )
    # The filter refuses the socket itself; without it, the empty namespace has no route.
    assert filtered == "PROBE connect socket-failed EPERM"
    assert bare == "PROBE connect connect-failed ENETUNREACH"


def test_no_unix_socket_either_so_the_resident_hosts_socket_is_out_of_reach(
    tmp_path: Path,
) -> None:
    """A pathname Unix socket (like ``tcletd serve``'s control socket, which lets in its own
    uid) is not behind the network namespace: only the filter keeps the worker from it."""
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(4)
        filtered, bare = run_probes(f"unix {path}", f"no-seccomp unix {path}")
    assert filtered == "PROBE unix socket-failed EPERM"
    assert bare == "PROBE unix connected"


def test_exec_is_refused() -> None:
    assert run_probes("exec /bin/true") == ["PROBE exec exec-failed EPERM"]


def test_signals_reach_only_the_worker_itself() -> None:
    host = os.getpid()
    filtered, own, bare = run_probes(f"kill {host}", "kill self", f"no-seccomp kill {host}")
    assert filtered == "PROBE kill kill-failed EPERM"
    assert own == "PROBE kill killed"
    if os.geteuid() == 0:  # only root could signal the host without the filter
        assert bare == "PROBE kill killed"


@needs_netns
def test_selftest_reports_both_layers_active() -> None:
    lines = sandbox.selftest()
    assert any(ACTIVE_NETNS.fullmatch(line) for line in lines), lines
    assert any(
        line.startswith("seccomp: active (filter mode,") and "TSYNC on 2 threads" in line
        for line in lines
    ), lines


@pytest.mark.skipif(not USERNS, reason="no unprivileged user namespaces here")
def test_an_unprivileged_worker_gets_its_namespace_through_a_user_namespace() -> None:
    code = """
import ctypes, os
from tcletd.worker import netns
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # setuid made us non-dumpable: /proc/self unwritable
print(netns.enter().line("netns"))
with open("/proc/self/status") as status:
    print([line.split()[1] for line in status if line.startswith("CapEff")][0])
"""
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 0, ran.stderr
    line, caps = ran.stdout.splitlines()
    assert line == "netns: active (own namespace, through a user namespace, no interfaces up)"
    assert caps == "0000000000000000"  # the user namespace's capabilities were given up


def test_a_refused_namespace_is_reported_not_claimed() -> None:
    """Where unshare fails, the worker goes on and says why (here: a seccomp filter of ours)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # NO_NEW_PRIVS, so an unprivileged filter may load
            from tcletd.worker import seccomp

            seccomp.load()  # refuses unshare
            layer = netns.enter()
            if not layer.active and "failed: Operation not permitted" in layer.detail:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@needs_netns
def test_without_libseccomp_the_worker_runs_unfiltered_and_doctor_says_why() -> None:
    code = """
import ctypes, ctypes.util
find = ctypes.util.find_library
ctypes.util.find_library = lambda name: None if name == "seccomp" else find(name)
load = ctypes.CDLL.__init__
def refuse(self, name, *args, **kwargs):  # neither ldconfig nor the loader finds it
    if name and "libseccomp" in str(name):
        raise OSError(f"{name}: cannot open shared object file")
    load(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = refuse
from tcletd.worker import sandbox
print("\\n".join(sandbox.selftest()))
"""
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "seccomp: inactive: libseccomp cannot be loaded: Unable to find libseccomp" in lines
    assert any(ACTIVE_NETNS.fullmatch(line) for line in lines), lines
