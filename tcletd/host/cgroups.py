"""A cgroup per worker: a hard memory limit, a pids limit and a CPU weight the kernel enforces.

Host side of the trust boundary. The third layer under the Safe Base (after the worker's network
namespace and seccomp filter): where the host may create cgroups (cgroup v1 hierarchies as root,
or a cgroup v2 subtree whose controllers the host may enable), :meth:`Cgroups.open` makes a
host-level parent ``tcletd-<host pid>`` under the host's own cgroup (reclaiming those of dead
hosts; for cgroup v1's cpu, see :class:`Cgroups`), and :meth:`Cgroups.create` a cgroup per worker
before its fork. The worker moves itself into it as its very first act, reads its pid back
from ``cgroup.procs``, and exits rather than run its script outside it
(:func:`tcletd.worker.main.run`): no thread, no allocation and no script line of the worker
happens before it is in place, and placing it costs the host no round trip.

Where no cgroup can be had, the layer is off and :attr:`Cgroups.reason` (from :func:`probe`)
says why; the host's RSS poll stays the memory limit's only enforcement. Nothing is claimed that
the kernel did not confirm: :func:`probe` writes a limit into a test child and reads it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

# Above the policy's memory limit, so that the host's RSS poll (which counts the pages the worker
# shares with the zygote; the cgroup does not) ends a slowly growing tclet first, with its
# measured value, and the kernel ends only what outruns the poll. A worker has charged ~5 MiB to
# its cgroup by the time its script starts (memory.max_usage_in_bytes, Tcl 8.6, libzmq 4.3).
MEMORY_HEADROOM = 16 * 2**20
# A worker runs 4 threads once its runtime is up (main, libzmq's I/O thread and reaper, Tcl's
# notifier; counted in /proc/PID/task); the rest is room for a transient one, not for a bomb.
PIDS_MAX = 8
# CPU weights (v2 cpu.weight): the kernel's default, and the least it takes for a demoted worker.
WEIGHT, WEIGHT_DEMOTED = 100, 1
CONTROLLERS = ("memory", "pids", "cpu")  # a worker's cgroup v2 (one directory, all three)
V1_CONTROLLERS = ("memory", "pids")  # a worker's cgroups v1 (see Cgroups: no cpu)
PREFIX = "tcletd-"


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _own_cgroups() -> dict[str, str]:
    """``controller -> path`` of this process's cgroups (``""`` for the v2 unified one)."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines():
        _id, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            out[name] = path
    return out


def _mounts() -> dict[str, Path]:
    """``controller -> mount point`` of v1 hierarchies, ``"" -> mount point`` of the v2 one."""
    out: dict[str, Path] = {}
    for line in Path("/proc/mounts").read_text(encoding="ascii").splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        kind, where, options = fields[2], Path(fields[1]), fields[3].split(",")
        if kind == "cgroup2":
            out.setdefault("", where)
        elif kind == "cgroup":
            for name in CONTROLLERS:
                if name in options:
                    out.setdefault(name, where)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(top: Path) -> bool:
    """rmdir ``top`` and its child cgroups (cgroupfs has no files to delete); False if one is
    still in use. A worker's cgroup has no children (nothing in a worker can make one), so the
    first rmdir is the whole of it: walking its ~30 control files first cost ~1 ms per exit."""
    try:
        os.rmdir(top)
    except FileNotFoundError:
        return True
    except OSError:
        pass  # EBUSY: it has child cgroups (a dead host's parent), or a process is still in it
    else:
        return True
    ok = True
    with contextlib.suppress(OSError):
        for child in top.iterdir():
            if child.is_dir():
                ok = _remove_tree(child) and ok
    try:
        top.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return ok


def _reclaim(own: Path) -> None:
    """Remove the cgroups dead hosts left behind (a host killed before its close)."""
    with contextlib.suppress(OSError):
        for entry in own.iterdir():
            owner = entry.name[len(PREFIX) :].split("-")[0]  # tcletd-PID or tcletd-PID-w-ID
            if entry.name.startswith(PREFIX) and owner.isdigit():
                pid = int(owner)
                if pid != os.getpid() and not _alive(pid):
                    _remove_tree(entry)


@dataclass
class WorkerCgroup:
    """One worker's cgroup: one directory per v1 hierarchy (or one v2 directory)."""

    version: int
    dirs: dict[str, Path]  # controller -> directory (v2: the same directory for all)
    removed: bool = False

    @property
    def procs(self) -> list[str]:
        """The ``cgroup.procs`` files the worker writes its pid into, one per directory."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def set_memory(self, memory: int, *, fresh: bool = False) -> bool:
        """The hard memory limit for a policy's ``memory`` (0: none); False if the kernel
        refused it (a limit below what the worker already uses): the old one stays. ``fresh``:
        the cgroup was just made, so its limits are the kernel's unlimited (no read needed; a
        read per launch was a fifth of a launch's time in the host)."""
        limit = memory + MEMORY_HEADROOM if memory > 0 else 0
        if fresh and not limit:
            return True
        d = self.dirs["memory"]
        try:
            if self.version == 2:
                _write(d / "memory.max", str(limit) if limit else "max")
                return True
            value = str(limit) if limit else "-1"
            memsw = d / "memory.memsw.limit_in_bytes"
            # memsw (memory + swap) may never be below the memory limit: order the two writes.
            raising = not limit or (not fresh and limit > int(_read(d / "memory.limit_in_bytes")))
            if raising and memsw.exists():
                _write(memsw, value)
            _write(d / "memory.limit_in_bytes", value)
            if not raising and memsw.exists():
                _write(memsw, value)
        except OSError:
            return False
        return True

    def demote(self) -> bool:
        """The least CPU weight, and the idle flag where the kernel has one: under group
        scheduling a waking task preempts a worker's group at once only if the group is idle,
        as it preempts a SCHED_IDLE thread (kernel/sched/fair.c, check_preempt_wakeup_fair).
        Without a cpu cgroup (v1), nothing: the worker's scheduling class does it all."""
        d = self.dirs.get("cpu")
        if d is None:
            return True
        try:
            _write(d / "cpu.weight", str(WEIGHT_DEMOTED))
        except OSError:
            return False
        if (d / "cpu.idle").exists():
            with contextlib.suppress(OSError):
                _write(d / "cpu.idle", "1")
        return True

    def weight(self) -> int | None:
        """The CPU weight the kernel holds now (v2), None without a cpu cgroup (v1)."""
        d = self.dirs.get("cpu")
        return int(_read(d / "cpu.weight")) if d is not None else None

    def oom_kills(self) -> int:
        """How many of the worker's processes the kernel OOM-killed at the memory limit."""
        d = self.dirs["memory"]
        try:
            text = _read(d / ("memory.events" if self.version == 2 else "memory.oom_control"))
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak(self) -> int:
        """The most memory the cgroup was charged (bytes; 0 if the kernel does not say)."""
        d = self.dirs["memory"]
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int(_read(d / name))
        except (OSError, ValueError):
            return 0

    def remove(self) -> bool:
        """rmdir every directory (the worker has exited); True once all are gone."""
        if not self.removed:
            self.removed = all([_remove_tree(d) for d in set(self.dirs.values())])
        return self.removed


@dataclass
class Cgroups:
    """The host's cgroups: where its workers' cgroups go, or why there are none.

    Memory and pids (and cpu under v2): under a parent ``tcletd-<host pid>``. Under cgroup v1
    a worker has no cpu cgroup: it competes as a process, and demotion is its threads'
    scheduling class (SCHED_IDLE). A group per worker made every worker's group a sibling of
    every other's, and a normal group beside idle ones waits for them: on this 2-core VM, a
    ping-pong in a group beside 60 groups each holding a SCHED_IDLE spinner had a p99 of 1.8-2.7
    ms with the groups flagged idle (16-20 ms at weight 2, 8-12 ms at the default weight), and
    0.10-0.24 ms with no spinner in a group of its own; the attack tool's launch storm (60
    spinners from one site) took its probe's echo p99 to 17-31 times its p99 alone. Nor did the
    cpu controller help a launch: under other load (30 interleaved launches each) hello
    p50/p90 was 33.7/61.7 ms without cgroups and 51.6/69.2 with a cpu group per worker, as it
    ends a worker's multi-thread advantage (each thread weighed as a process). (Under v2 the
    controllers share one directory per worker, and the cpu group stays.)
    """

    version: int = 0  # 0: no cgroups (see reason)
    parents: dict[str, Path] = field(default_factory=dict)  # controller -> where workers go
    reason: str = ""  # what doctor prints: what is confirmed, or why the layer is off
    _left: list[WorkerCgroup] = field(default_factory=list)  # removals to retry at close

    @property
    def active(self) -> bool:
        return self.version > 0

    @classmethod
    def open(cls) -> Cgroups:
        """Detect, confirm and make the host's parent cgroups; an inactive one with the reason
        when none can be had."""
        found = probe()
        if not found.active:
            return found
        parents: dict[str, Path] = {}
        try:
            for name, own in found.parents.items():
                _reclaim(own)
                parent = own / f"{PREFIX}{os.getpid()}"
                if parent not in parents.values():
                    parent.mkdir(exist_ok=True)
                    if found.version == 2:
                        _write(parent / "cgroup.subtree_control", "+memory +pids +cpu")
                parents[name] = parent
        except OSError as exc:
            for parent in parents.values():
                _remove_tree(parent)
            return cls(reason=f"cannot create the host's cgroup: {exc}")
        return cls(found.version, parents, found.reason)

    def create(self, tclet_id: str, memory: int, *, demoted: bool = False) -> WorkerCgroup:
        """A worker's cgroup with its limits; raises OSError (nothing left behind)."""
        name = f"w-{tclet_id[:16]}"
        dirs = {c: parent / name for c, parent in self.parents.items()}
        cgroup = WorkerCgroup(self.version, dirs)
        try:
            for d in set(dirs.values()):
                d.mkdir()
            if not cgroup.set_memory(memory, fresh=True):
                raise OSError(errno.EINVAL, "memory limit refused", str(dirs["memory"]))
            if self.version == 2:
                _write(dirs["memory"] / "memory.swap.max", "0")
            _write(dirs["pids"] / "pids.max", str(PIDS_MAX))
            if demoted and not cgroup.demote():
                raise OSError(errno.EINVAL, "cpu weight refused", str(dirs.get("cpu")))
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def release(self, cgroup: WorkerCgroup) -> None:
        """Remove a worker's cgroup now, or at :meth:`close` if it is still busy."""
        if not cgroup.remove():
            self._left.append(cgroup)

    def close(self) -> None:
        for cgroup in self._left:
            cgroup.remove()
        self._left.clear()
        for parent in set(self.parents.values()):
            _remove_tree(parent)
        self.parents.clear()


def probe() -> Cgroups:
    """Which cgroups the host may use, confirmed by a test child whose limits are read back;
    ``parents`` holds the host's own cgroup per controller (no ``tcletd-`` parent yet)."""
    try:
        own, mounts = _own_cgroups(), _mounts()
    except (OSError, ValueError) as exc:
        return Cgroups(reason=f"cannot read the host's cgroups: {exc}")
    v2 = mounts.get("")
    if v2 is not None and "" in own:
        base = v2 / own[""].lstrip("/")
        try:
            available = set(_read(base / "cgroup.controllers").split())
        except OSError:
            available = set()
        if set(CONTROLLERS) <= available:
            return _confirm(2, dict.fromkeys(CONTROLLERS, base))
    missing = [c for c in V1_CONTROLLERS if c not in mounts or c not in own]
    if missing:
        why = "no cgroup v2 controllers delegated to the host"
        return Cgroups(reason=f"{why}, and no cgroup v1 {', '.join(missing)} hierarchy")
    return _confirm(1, {c: mounts[c] / own[c].lstrip("/") for c in V1_CONTROLLERS})


def _confirm(version: int, owns: dict[str, Path]) -> Cgroups:
    """Make a test child in each hierarchy, set the limits there, read them back, remove it."""
    test = WorkerCgroup(version, {c: d / f"{PREFIX}probe-{os.getpid()}" for c, d in owns.items()})
    try:
        for d in set(test.dirs.values()):
            if version == 2:
                _write(d.parent / "cgroup.subtree_control", "+memory +pids +cpu")
            d.mkdir(exist_ok=True)
        if not test.set_memory(64 * 2**20):
            raise OSError(errno.EINVAL, "memory limit refused")
        _write(test.dirs["pids"] / "pids.max", str(PIDS_MAX))
        memory_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        memory = int(_read(test.dirs["memory"] / memory_file))
        pids = _read(test.dirs["pids"] / "pids.max")
        if memory != 64 * 2**20 + MEMORY_HEADROOM or pids != str(PIDS_MAX) or not test.demote():
            raise OSError(errno.EINVAL, "the kernel did not keep the limits written")
    except OSError as exc:
        uid = os.geteuid()
        who = "root" if uid == 0 else f"uid {uid}"
        hint = "" if uid == 0 else " (run as root for cgroup v1, or delegate a v2 subtree)"
        return Cgroups(reason=f"cgroup v{version} not usable by {who}: {exc}{hint}")
    finally:
        test.remove()
    return Cgroups(
        version,
        owns,
        f"v{version} memory, pids{', cpu' if version == 2 else ''}; {memory_file} confirmed",
    )
