"""Which CPUs tcletd's processes run on: a resident host leaves its lowest CPU to tclets that
behave (the host, demoted workers and the attack tool keep off it; the zygote and a tclet at
full priority run anywhere), and the host runs ahead of its workers there (the real-time class,
which its children do not inherit); an embedder's application does the same when it asks
(``tcletd.api.leave_a_cpu_to_tclets``).

Real processes throughout: a ``tcletd serve``, its zygote and workers, read from /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT
from support.waiting import wait_until
from support.wire import connect, serving, status

from tcletd.shared import cpus
from tcletd.shared.control import encode

pytestmark = pytest.mark.timeout(60)

EVERY = frozenset(os.sched_getaffinity(0))
REST = EVERY - {min(EVERY)}
many_cpus = pytest.mark.skipif(len(EVERY) < 2, reason="one CPU: none to keep free")


def _affinities(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of ``pid``."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def _python(code: str) -> list[str]:
    """What ``code`` prints, run in a Python process of its own."""
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()


def _kept_off(code: str) -> list[str]:
    """What ``code`` prints, run in a Python process that first keeps off the lowest CPU."""
    return _python(f"from tcletd.shared import cpus\ncpus.keep_off_lowest()\n{code}")


def _policies(pid: int) -> set[int]:
    """The scheduling policies of every thread of ``pid`` (with the reset-on-fork flag)."""
    return {os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


FIRST = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(word) for word in f.read().split()]


@many_cpus
def test_a_resident_host_keeps_off_the_lowest_cpu_and_a_crowd_past_four_too(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "control.sock"
    with serving(sock) as host:
        # Six tclets of one site on open connections (a run lasts as long as its connection):
        # the first four at full priority, the fifth and sixth start demoted (a crowd).
        conns = []
        for _ in range(6):
            conn = connect(sock)
            conn.sendall(encode({"op": "run", "origin": "http://127.0.0.1:7070/"}, b"after 20000"))
            conns.append(conn)
        try:
            wait_until(
                lambda: len([r for r in status(sock) if r.get("pid")]) == 6,
                timeout=20,
                message="six tclets started",
            )
            # A demoted one moves itself before its script's first command: wait for that.
            wait_until(
                lambda: all(r["state"] != "starting" for r in status(sock)),
                timeout=20,
                message="six scripts running",
            )
            rows = status(sock)
            (zygote,) = _children(host.pid)
            assert _affinities(host.pid) == {REST}, "the host keeps off the lowest CPU"
            assert _affinities(zygote) == {EVERY}, "the zygote runs anywhere"
            placed = sorted((bool(r["demoted"]), _affinities(int(str(r["pid"])))) for r in rows)
            assert placed == [(False, {EVERY})] * 4 + [(True, {REST})] * 2, placed
            # The host runs first (its loop's thread); nothing it starts inherits that (its
            # zygote, libzmq's and its helpers' threads).
            assert os.sched_getscheduler(host.pid) == FIRST
            others = [int(t) for t in os.listdir(f"/proc/{host.pid}/task") if int(t) != host.pid]
            assert others and {os.sched_getscheduler(t) for t in others} == {os.SCHED_OTHER}
            assert _policies(zygote) == {os.SCHED_OTHER}
            classes = sorted((bool(r["demoted"]), _policies(int(str(r["pid"])))) for r in rows)
            assert classes == [(False, {os.SCHED_OTHER})] * 4 + [(True, {os.SCHED_IDLE})] * 2
        finally:
            for conn in conns:
                conn.close()


@many_cpus
def test_the_probes_echo_server_runs_anywhere_and_the_attacks_servers_keep_off_a_cpu() -> None:
    code = (
        "import os\n"
        "from tcletd.attack.servers import ServerSet\n"
        "with ServerSet() as servers:\n"
        "    print(sorted(os.sched_getaffinity(0)))\n"
        "    print(sorted(os.sched_getaffinity(servers.probe_pid)))\n"
        "    for pid in servers.pids:\n"
        "        if pid != servers.probe_pid:\n"
        "            print(sorted(os.sched_getaffinity(pid)))\n"
    )
    tool, probe, *servers = _kept_off(code)
    assert tool == str(sorted(REST))
    assert probe == str(sorted(EVERY))
    assert len(servers) == 4 and set(servers) == {str(sorted(REST))}, servers


@many_cpus
def test_a_control_attacks_client_keeps_off_a_cpu_and_a_child_the_tool_measures_does_not(
    tmp_path: Path,
) -> None:
    # A real listening socket for the driver to flood; nothing in it answers. `sleep` stands
    # for the children started as the tool's host and watch are (end_with_parent).
    code = (
        "import asyncio, os, socket\n"
        "from tcletd.attack.drivers import ControlAttack\n"
        "from tcletd.attack.targets import end_with_parent\n"
        f"path = {str(tmp_path / 'control.sock')!r}\n"
        "server = socket.socket(socket.AF_UNIX)\n"
        "server.bind(path)\n"
        "server.listen()\n"
        "class Target:\n"
        "    path = path\n"
        "async def main():\n"
        "    attack = ControlAttack(Target(), 'status-flood')\n"
        "    await attack.start()\n"
        "    host = await asyncio.create_subprocess_exec(\n"
        "        'sleep', '30', preexec_fn=end_with_parent)\n"
        "    for pid in (attack.pid, host.pid):\n"
        "        print(sorted(os.sched_getaffinity(pid)))\n"
        "    host.kill()\n"
        "    await host.wait()\n"
        "    await attack.stop()\n"
        "asyncio.run(main())\n"
    )
    assert _kept_off(code) == [str(sorted(REST)), str(sorted(EVERY))]


def test_a_placement_travels_as_two_words_and_a_bad_one_is_named() -> None:
    placement = cpus.Placement(frozenset({0, 1, 3}), frozenset({1, 3}))
    back = cpus.Placement.from_argv(*placement.argv())
    assert placement.argv() == ["0,1,3", "1,3"]
    assert (back.behaving, back.rest) == (placement.behaving, placement.rest)
    with pytest.raises(ValueError, match=r"rest CPUs: not a comma-separated list.*'1;3'"):
        cpus.Placement.from_argv("0,1", "1;3")
    with pytest.raises(ValueError, match="behaving CPUs"):
        cpus.Placement.from_argv("", "1")


def test_the_zygote_refuses_a_cpu_list_it_cannot_read() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "tcletd.worker.zygote", "0", "0", "0,x", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 2
    assert "behaving CPUs: not a comma-separated list of numbers: '0,x'" in ran.stderr


def _embedder(run_first: bool) -> list[str]:
    """What an application prints that calls ``leave_a_cpu_to_tclets`` with an application
    thread of its own already running, then hosts a tclet: the call's answer, the application
    thread's CPUs, the loop thread's policy, then the zygote's and the worker's CPUs and
    policies (a zygote started by a host kept off a CPU runs anywhere, and so do its tclets)."""
    code = (
        "import asyncio, os, threading\n"
        "from tcletd.api import Host, leave_a_cpu_to_tclets\n"
        "done = threading.Event()\n"
        "app = threading.Thread(target=done.wait)\n"
        "app.start()\n"
        f"print(leave_a_cpu_to_tclets(run_first={run_first}))\n"
        "print(sorted(os.sched_getaffinity(app.native_id)))\n"
        "print(os.sched_getscheduler(0))\n"
        "async def main():\n"
        "    async with Host() as host:\n"
        "        tclet = host.launch('after 20000', policy='trusted')\n"
        "        while tclet.worker is None or tclet.worker.pid is None:\n"
        "            await asyncio.sleep(0.01)\n"
        "        zygote = int(open(f'/proc/{tclet.worker.pid}/stat').read().split()[3])\n"
        "        for pid in (zygote, tclet.worker.pid):\n"
        "            print(sorted(os.sched_getaffinity(pid)), os.sched_getscheduler(pid))\n"
        "        await tclet.end('test over')\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "finally:\n"
        "    done.set()\n"
    )
    return _python(code)


@many_cpus
@pytest.mark.parametrize(("run_first", "policy"), [(True, FIRST), (False, os.SCHED_OTHER)])
def test_an_embedder_leaves_a_cpu_to_tclets_and_its_loop_runs_first_if_asked(
    run_first: bool, policy: int
) -> None:
    everywhere = f"{sorted(EVERY)} {os.SCHED_OTHER}"
    assert _embedder(run_first) == ["None", str(sorted(REST)), str(policy), everywhere, everywhere]


CPU_V1 = Path("/sys/fs/cgroup/cpu")


def _doctor_host(group: Path | None) -> str:
    """``tcletd doctor``'s ``host:`` line, the doctor run in the cpu cgroup ``group`` if given."""
    ran = subprocess.run(
        [sys.executable, "-m", "tcletd", "doctor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=None if group is None else lambda: (group / "cgroup.procs").write_text("0"),
    )
    (line,) = [x for x in ran.stdout.splitlines() if x.startswith("host: ")] or [ran.stdout]
    return line


@many_cpus
@pytest.mark.skipif(
    not (CPU_V1 / "cpu.rt_runtime_us").exists() or os.geteuid() != 0,
    reason="needs the cgroup v1 cpu hierarchy, as root",
)
def test_a_host_refused_the_real_time_class_says_so_and_stays_normal(tmp_path: Path) -> None:
    # A new cpu cgroup has no real-time time (cpu.rt_runtime_us 0): the kernel refuses there.
    group = CPU_V1 / f"tcletd-test-{os.getpid()}"
    group.mkdir()
    try:
        code = (
            "import os\n"
            f"open('{group}/cgroup.procs', 'w').write(str(os.getpid()))\n"
            "print(cpus.run_first())\n"
            "print(os.sched_getscheduler(0))\n"
        )
        why, policy = _kept_off(code)
        assert why == "the host stays in the normal scheduling class: Operation not permitted"
        assert policy == str(os.SCHED_OTHER)
        # tcletd doctor says so before any host is started; elsewhere it says it would run first.
        assert _doctor_host(group) == (
            "host: real-time class refused (Operation not permitted): a resident host runs in"
            " the normal class"
        )
        # And where it is not refused, it is done (a process kept off a CPU).
        done, policy = _kept_off(
            "print(cpus.run_first())\nimport os\nprint(os.sched_getscheduler(0))"
        )
        assert (done, policy) == ("None", str(FIRST))
        assert _doctor_host(None) == (
            "host: the lowest CPU is left to tclets; a resident host's loop runs in the real-time"
            " class"
        )
    finally:
        group.rmdir()
