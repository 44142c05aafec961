"""The warm pool: children forked ahead wait in a cgroup the host made for each, with every
thread they made ahead (libzmq's, Tcl's notifier) in it; the launch that takes one has every
layer (cgroup with its policy's memory limit, own network namespace, seccomp on every thread,
rlimits); without cgroups the pool still serves; a warm child that died is replaced by a cold
fork into the same cgroup."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from support.hosting import quiet, worker_pid, zygote_of
from support.system import descendants, sched_classes
from support.waiting import until

from tcletd.api import Host
from tcletd.host import cgroups as cg
from tcletd.host.factory import Zygote
from tcletd.host.tclet import Tclet

pytestmark = pytest.mark.timeout(60)

MiB = 2**20
AVAILABLE = cg.probe()
needs_cgroups = pytest.mark.skipif(
    not AVAILABLE.active, reason=f"no cgroup for workers here: {AVAILABLE.reason}"
)
# A worker's threads once its runtime is up: main, libzmq's I/O thread and reaper, Tcl's notifier.
THREADS = 4


def _slots(zygote: Zygote) -> list[cg.WorkerCgroup]:
    """The host's warm cgroups not claimed yet."""
    assert zygote._warm_cgroups is not None
    return list(zygote._warm_cgroups.slots)


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _cgroup_paths(pid: int, tid: int) -> dict[str, str]:
    """The thread's cgroup path per v1 controller (v2: under the key "")."""
    paths = {}
    with open(f"/proc/{pid}/task/{tid}/cgroup", encoding="ascii") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _in(dirs: dict[str, Path], pid: int) -> bool:
    """Whether every thread of ``pid`` is in these cgroup directories (one per controller)."""
    tids = _threads(pid)
    for tid in tids:
        own = _cgroup_paths(pid, tid)
        for controller, directory in dirs.items():
            key = controller if AVAILABLE.version == 1 else ""
            if not str(directory).endswith(own[key]):
                return False
    return bool(tids)


def _waiting(zygote: Zygote, *running: int) -> set[int]:
    """The zygote's children that run no tclet (none of ``running``): its warm pool."""
    return {
        pid
        for pid in descendants(zygote.process.pid) - set(running)
        if len(_threads(pid)) == THREADS
    }


async def _up(tclet: Tclet, out: list[bytes]) -> None:
    await until(lambda: b"up\n" in b"".join(out), timeout=20, message=lambda: f"{out!r}")


@needs_cgroups
def test_warm_children_wait_in_their_own_cgroups_and_the_taken_one_has_every_layer() -> None:
    async def scenario() -> None:
        async with Host(warm=2) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_waiting(zygote)) == 2, timeout=20)
            # Each waiting child is, with every thread it made ahead, in one of the cgroups
            # the host made for the pool, and no two share one.
            slots = _slots(zygote)
            assert len(slots) == 2
            placed = {
                pid: [i for i, s in enumerate(slots) if _in(s.dirs, pid)]
                for pid in _waiting(zygote)
            }
            assert sorted(i for found in placed.values() for i in found) == [0, 1], placed
            warm = set(placed)

            out: list[bytes] = []
            tclet = host.launch(
                "puts up; vwait forever",
                limits=["memory=96MiB"],
                on_stdout=out.append,
                on_stderr=print,
            )
            await _up(tclet, out)
            pid = worker_pid(tclet)
            assert pid in warm, "the launch did not take a warm child"
            worker = tclet.worker
            assert worker is not None and worker.cgroup is not None
            assert worker.cgroup in slots
            # Cgroup: every thread in the worker's, under its policy's limit.
            assert len(_threads(pid)) == THREADS
            assert _in(worker.cgroup.dirs, pid)
            memory = worker.cgroup.dirs["memory"]
            name = "memory.limit_in_bytes" if AVAILABLE.version == 1 else "memory.max"
            assert int((memory / name).read_text()) == 96 * MiB + cg.MEMORY_HEADROOM
            # Its own network namespace, the filter on every thread, no new process or thread.
            assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            for tid in _threads(pid):
                with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                assert status["Seccomp"].strip() == "2", tid
            with open(f"/proc/{pid}/limits", encoding="ascii") as f:
                nproc = next(line for line in f if line.startswith("Max processes"))
            assert nproc.split()[2:4] == ["0", "0"], nproc
            # The pool is refilled, in a new cgroup.
            await until(lambda: len(_waiting(zygote, pid)) == 2, timeout=20)
            assert len(_slots(zygote)) == 2 and worker.cgroup not in _slots(zygote)
            await tclet.end("test over")
            await tclet.wait()

    asyncio.run(scenario())


def test_without_cgroups_the_pool_still_serves_every_launch() -> None:
    async def scenario() -> None:
        async with Host(warm=2, cgroups=False) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_waiting(zygote)) == 2, timeout=20)
            for _ in range(3):  # the pool is topped up after each
                warm = _waiting(zygote)
                out: list[bytes] = []
                tclet = host.launch("puts up; vwait forever", on_stdout=out.append, on_stderr=print)
                await _up(tclet, out)
                assert worker_pid(tclet) in warm
                await tclet.end("test over")
                await tclet.wait()
                await until(lambda: len(_waiting(zygote)) == 2, timeout=20)

    asyncio.run(scenario())


@needs_cgroups
def test_a_warm_child_that_died_is_forked_again_into_its_cgroup() -> None:
    async def scenario() -> None:
        async with Host(warm=1) as host:
            zygote = zygote_of(host)
            await until(lambda: len(_waiting(zygote)) == 1, timeout=20)
            (dead,) = _waiting(zygote)
            (slot,) = _slots(zygote)
            assert _in(slot.dirs, dead)
            os.kill(dead, signal.SIGKILL)
            await until(lambda: _waiting(zygote) - {dead}, timeout=20)
            (again,) = _waiting(zygote)
            assert _in(slot.dirs, again)
            out: list[bytes] = []
            tclet = host.launch("puts up; vwait forever", on_stdout=out.append, on_stderr=print)
            await _up(tclet, out)
            assert worker_pid(tclet) == again
            assert tclet.worker is not None and tclet.worker.cgroup is slot
            await tclet.end("test over")
            await tclet.wait()

    asyncio.run(scenario())


def test_a_demoted_launch_puts_every_thread_a_warm_child_made_ahead_in_the_idle_class() -> None:
    hog_site = "http://127.0.0.1:8080"

    async def scenario() -> tuple[bool, set[int]]:
        async with Host(warm=2) as host:
            zygote = zygote_of(host)
            hog = host.launch(
                "while 1 {incr i}", origin=f"{hog_site}/hog.tcl", limits=["cpu=0.3s"], **quiet()
            )
            assert (await hog.wait()).reason == "cpu limit 0.3 s"  # its site is boxed
            await until(lambda: len(_waiting(zygote)) == 2, timeout=20)
            warm = _waiting(zygote)
            out: list[bytes] = []
            tclet = host.launch(
                "puts up; vwait forever",
                origin=f"{hog_site}/page.tcl",
                on_stdout=out.append,
                on_stderr=print,
            )
            await _up(tclet, out)
            assert tclet.demoted
            classes = sched_classes(worker_pid(tclet))
            taken = worker_pid(tclet) in warm
            await tclet.end("test over")
            await tclet.wait()
            return taken, classes

    taken, classes = asyncio.run(scenario())
    assert taken, "the demoted launch did not take a warm child"
    assert classes == {os.SCHED_IDLE}  # every thread, libzmq's and Tcl's made ahead too
