"""A cgroup per worker, proved from inside real workers: the worker is in its cgroup before its
script (here a test-only probe) runs, an allocation burst the RSS poll would miss is OOM-killed at
the hard memory limit and ended as ``memory limit 128 MiB``, a thread bomb stops at the pids
limit, the CPU weight drops on demotion, a grant moves the memory limit, and nothing is left in
the cgroup filesystem. Skipped only where the host can have no cgroup (the reason is shown).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.audit import audit_records
from support.hosting import quiet, worker_pid
from support.processes import run_tcletd
from support.runtime import make_spec
from support.system import sched_classes
from support.waiting import until

from tcletd.api import Host
from tcletd.host import cgroups as cg
from tcletd.host import enforcement
from tcletd.host.supervisor import Supervisor, WorkerProcess
from tcletd.host.watchdog import check_limits
from tcletd.policy import load_policy
from tcletd.shared import protocol as p
from tcletd.shared.states import TcletState

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
AVAILABLE = cg.probe()
needs_cgroups = pytest.mark.skipif(
    not AVAILABLE.active, reason=f"no cgroup for workers here: {AVAILABLE.reason}"
)


def _spec(probe: str, memory: int = 0) -> p.WorkerSpec:
    # A probe never says hello: the endpoint is never used.
    return make_spec("", tclet_id=os.urandom(16).hex(), memory=memory, probe=probe)


def _read_all(worker: WorkerProcess, stream: str = "stdout") -> str:
    """The worker's stdout (or stderr), to its end (the worker has exited)."""
    sock = worker.stdout if stream == "stdout" else worker.stderr
    sock.setblocking(True)
    sock.settimeout(5)
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks).decode()


def _probe(probe: str, memory: int = 0) -> tuple[int, str, WorkerProcess, cg.Cgroups]:
    """Run one probe worker on a Supervisor with cgroups: status, stdout, the worker and the
    host's cgroups (closed by then, every directory gone)."""

    async def scenario() -> tuple[int, str, WorkerProcess, cg.Cgroups]:
        groups = cg.Cgroups.open()
        assert groups.active, groups.reason
        supervisor = Supervisor(grace=0.5, cgroups=groups)
        supervisor.start(asyncio.get_running_loop())
        try:
            worker = supervisor.launch(_spec(probe, memory), asyncio.get_running_loop())
            assert await worker.started, worker.failure  # its cgroup is made before the fork
            assert worker.cgroup is not None
            status = await asyncio.wait_for(worker.exited, 30)
            out = _read_all(worker) + _read_all(worker, "stderr")
            assert worker.cgroup.removed, "the worker's cgroup outlived it"
            supervisor.forget(worker)
        finally:
            await supervisor.shutdown()
        return status, out, worker, groups

    return asyncio.run(scenario())


@needs_cgroups
def test_the_worker_is_in_its_cgroup_before_its_script_and_nothing_is_left_after() -> None:
    status, out, worker, groups = _probe("cgroup")
    assert status == 0, out
    assert worker.cgroup is not None
    own = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in out.split()[2:]}
    controllers = cg.V1_CONTROLLERS if groups.version == 1 else cg.CONTROLLERS
    assert sorted(worker.cgroup.dirs) == sorted(controllers)  # v1: no cpu group per worker
    for controller in controllers:
        key = controller if groups.version == 1 else ""
        directory = worker.cgroup.dirs[controller]
        assert directory.name == f"w-{worker.tclet_id[:16]}"
        assert str(directory).endswith(own[key]), (controller, out)
    # The worker's cgroups went at its exit, the host's parents at its close.
    mine = f"{cg.PREFIX}{os.getpid()}"
    for controller, directory in worker.cgroup.dirs.items():
        assert not directory.exists()
        beside = AVAILABLE.parents[controller]  # the host's own cgroup
        assert not [e for e in beside.iterdir() if e.name.startswith(mine)], controller


@needs_cgroups
def test_a_worker_that_cannot_enter_its_cgroup_runs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the cgroup went away between its making and the worker's start.
    monkeypatch.setattr(cg.WorkerCgroup, "procs", property(lambda self: ["/nonexistent/x"]))
    status, out, _worker, _groups = _probe("cgroup")
    assert status == 70, out  # EXIT_SOFTWARE
    assert "PROBE" not in out
    assert "tcletd worker: cannot enter its cgroup /nonexistent/x" in out


@needs_cgroups
def test_an_allocation_burst_is_stopped_by_the_memory_limit() -> None:
    # 128 MiB: the kernel kills at 128 + 16 MiB charged; the worker's RLIMIT_AS backstop
    # (its VmSize + 2 x 128 MiB) is further away, so only the cgroup can stop the burst there.
    status, out, worker, _groups = _probe(f"alloc {400 * MiB}", memory=128 * MiB)
    assert status == 137, out  # SIGKILL from the kernel's OOM killer
    assert "PROBE" not in out  # it never got to report an allocation
    assert worker.oom_kills >= 1
    assert 128 * MiB < worker.memory_peak <= 128 * MiB + cg.MEMORY_HEADROOM


@needs_cgroups
def test_the_pids_limit_stops_a_thread_bomb() -> None:
    status, out, _worker, _groups = _probe("threads 200")
    assert status == 0, out
    words = out.split()  # PROBE threads started N before M failed RuntimeError
    started, before = int(words[3]), int(words[5])
    assert words[6] == "failed", out
    assert started + before == cg.PIDS_MAX, out


def _with_probe(monkeypatch: pytest.MonkeyPatch, probe: str) -> None:
    """Every worker the host launches runs ``probe`` instead of its script (test-only hook)."""
    launch = Supervisor.launch

    def probed(self: Supervisor, spec: p.WorkerSpec, *args: Any, **kwargs: Any) -> WorkerProcess:
        return launch(self, msgspec.structs.replace(spec, probe=probe), *args, **kwargs)

    monkeypatch.setattr(Supervisor, "launch", probed)


@needs_cgroups
def test_a_burst_the_rss_poll_misses_ends_the_tclet_at_its_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blind the host's RSS poll (only memory: cpu and wall still count), so the kernel's limit is
    # the only one that can end the burst, whatever the watchdog's timing.
    checked = check_limits

    def no_rss_poll(limits: Any, usage: Any, age: float) -> Any:
        found = checked(limits, usage, age)
        return None if found is not None and found.limit == "memory" else found

    monkeypatch.setattr(enforcement, "check_limits", no_rss_poll)
    _with_probe(monkeypatch, f"alloc {400 * MiB}")
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[int, str]:
        async with Host(audit=audit) as host:
            result = await host.run_tclet("puts never", limits=["memory=128MiB"], **quiet())
        return result.status, result.reason

    assert asyncio.run(scenario()) == (137, "memory limit 128 MiB")
    [record] = audit_records(audit, "limit")
    assert (record["limit"], record["source"]) == ("memory", "cgroup")
    assert record["maximum"] == 128 * MiB


def _memory_limit(cgroup: cg.WorkerCgroup) -> int:
    name = "memory.max" if cgroup.version == 2 else "memory.limit_in_bytes"
    return int((cgroup.dirs["memory"] / name).read_text())


@needs_cgroups
def test_demotion_lowers_the_cpu_weight_or_leaves_the_worker_beside_the_host() -> None:
    """v2: the worker's cpu group goes to the least weight and idle. v1: a worker has no cpu
    group (it competes in the host's, as a process), and demotion is its threads' class."""

    async def scenario() -> tuple[int | None, int | None, str, str, set[int]]:
        async with Host() as host:
            tclet = host.launch("after 5000", **quiet())
            await until(lambda: tclet.state is not TcletState.STARTING)
            worker = tclet.worker
            assert worker is not None and worker.cgroup is not None
            before = worker.cgroup.weight()
            tclet.enforcer.demote(test=1)
            after = worker.cgroup.weight()
            if "cpu" in worker.cgroup.dirs:
                idle = worker.cgroup.dirs["cpu"] / "cpu.idle"
                assert not idle.exists() or idle.read_text().strip() == "1"
            cpu = _cpu_cgroup(worker_pid(tclet))
            classes = sched_classes(worker_pid(tclet))
            await tclet.end("done")
            await tclet.wait()
            assert host.cgroups is not None
            return before, after, host.cgroups.reason, cpu, classes

    before, after, reason, cpu, classes = asyncio.run(scenario())
    assert classes == {os.SCHED_IDLE}
    assert "confirmed" in reason
    if AVAILABLE.version == 2:
        assert (before, after) == (cg.WEIGHT, cg.WEIGHT_DEMOTED)
    else:
        assert (before, after) == (None, None)
        assert cpu == _cpu_cgroup(os.getpid())  # beside the host, in no group of its own


def _cpu_cgroup(pid: int) -> str:
    """The v1 cpu cgroup of ``pid`` (the unified one's path under v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        if "cpu" in names.split(",") or not names:
            return path
    return ""


@needs_cgroups
def test_a_granted_policy_moves_the_memory_limit(tmp_path: Path) -> None:
    master = tmp_path / "master.toml"
    master.write_text('[[grant]]\npolicy = "*"\norigins = ["http://127.0.0.1:8080/*"]\n')

    async def scenario() -> tuple[int, int]:
        async with Host(master=master) as host:
            ready = asyncio.Event()
            tclet = host.launch(
                "policy trusted\nputs ready\nflush stdout\nafter 5000",
                origin="http://127.0.0.1:8080/app.tcl",
                on_stdout=lambda data: ready.set(),
                on_stderr=lambda data: None,
            )
            # Made before the fork, with the limit of the policy the tclet starts under.
            assert tclet.worker is not None and await tclet.worker.started
            assert tclet.worker.cgroup is not None
            before = _memory_limit(tclet.worker.cgroup)
            await asyncio.wait_for(ready.wait(), 20)
            after = _memory_limit(tclet.worker.cgroup)
            await tclet.end("done")
            await tclet.wait()
            return before, after

    before, after = asyncio.run(scenario())
    assert before == load_policy("home").limits.memory + cg.MEMORY_HEADROOM
    assert after == load_policy("trusted").limits.memory + cg.MEMORY_HEADROOM


def test_a_host_without_cgroups_says_why_and_runs_its_workers_without() -> None:
    async def scenario() -> tuple[str, bool, int]:
        async with Host(cgroups=False) as host:
            assert host.cgroups is not None and not host.cgroups.active
            tclet = host.launch("puts hi", **quiet())
            await until(lambda: tclet.worker is not None)
            assert tclet.worker is not None
            has_cgroup = tclet.worker.cgroup is not None
            result = await tclet.wait()
            return host.cgroups.reason, has_cgroup, result.status

    reason, has_cgroup, status = asyncio.run(scenario())
    assert reason == "turned off (cgroups=False)"
    assert not has_cgroup and status == 0


@needs_cgroups
def test_a_dead_hosts_cgroups_are_reclaimed() -> None:
    own_memory_cgroup = AVAILABLE.parents["memory"]  # where a host makes its parent
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = own_memory_cgroup / f"{cg.PREFIX}{gone.pid}"
    (stale / "w-stale").mkdir(parents=True)
    groups = cg.Cgroups.open()
    try:
        assert groups.active, groups.reason
        assert not stale.exists()
    finally:
        groups.close()
        cg._remove_tree(stale)


@needs_cgroups
def test_doctor_says_whether_the_cgroup_layer_is_active(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = run_tcletd(["doctor"])
    assert ran.status == 0, ran.stderr
    cpu = ", cpu" if AVAILABLE.version == 2 else ""
    line = f"sandbox: cgroup: active (v{AVAILABLE.version} memory, pids{cpu}; "
    assert line in ran.stdout, ran.stdout
    monkeypatch.setenv("TCLETD_CGROUPS", "0")
    off = run_tcletd(["doctor"])
    assert "sandbox: cgroup: inactive: turned off (TCLETD_CGROUPS=0)" in off.stdout, off.stdout
