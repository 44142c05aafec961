"""The worker's seccomp filter: the system calls no worker needs, refused by the kernel.

Worker side of the trust boundary. :func:`load` runs last in :func:`tcletd.worker.sandbox.apply`,
after ``PR_SET_NO_NEW_PRIVS`` and once every thread of the worker exists (libzmq's I/O threads,
Tcl's notifier): the filter is loaded with ``SECCOMP_FILTER_FLAG_TSYNC`` (libseccomp's
``SCMP_FLTATR_CTL_TSYNC``), so the kernel puts it on all of them at once or refuses the load.
It is built through libseccomp (the ``pyseccomp`` ctypes binding over the system's
``libseccomp.so.2``); where that library cannot be loaded the worker runs without the filter and
:data:`state` says why.

Default allow; every listed call fails with ``EPERM``. ``EPERM`` rather than a kill: it is
what the tclet would see for a refused operation, it keeps a runtime that merely *tries*
something (an honest bug) alive and reporting, and an escaped script gains nothing from an
error code. What is refused, and why:

- new sockets of every family, ``AF_UNIX`` included (``socket``, ``socketpair``): the worker
  gets its TCP sockets from the host, and everything it talks to the host on exists before the
  filter (traced with ``strace -f`` over a tclet that connects, serves and closes: after the
  filter the worker makes no socket at all). An ``AF_UNIX`` exception would let an escaped
  tclet connect to any pathname socket its uid may open, the resident host's own control
  socket first (same uid: ``SO_PEERCRED`` lets it in). Received descriptors and the sockets
  already held keep working; libzmq would need a new socket only to reconnect to a host that
  is gone, and a refused one only makes it retry (measured: 20 ``EPERM`` retries in 2 s, the
  process unharmed). ``io_uring_*`` too, since ``IORING_OP_SOCKET`` would make a socket behind
  the ``socket`` rule's back;
- ``execve``, ``execveat``; ``clone`` with any ``CLONE_NEW*`` flag, ``clone3`` (its flags are
  in memory the filter cannot read: ``ENOSYS``, on which glibc falls back to ``clone``);
- reaching other processes: ``ptrace``, ``process_vm_readv``/``writev``, ``pidfd_open``,
  ``pidfd_getfd``, ``pidfd_send_signal``, and ``kill``, ``tkill``, ``tgkill``,
  ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo`` aimed at any process but the worker's own;
- changing the system or the namespaces: ``mount``, ``umount2`` and the new mount API,
  ``unshare``, ``setns``, ``pivot_root``, ``chroot``, module, kexec, swap and reboot calls (they
  matter where the host runs as root);
- kernel surface no worker uses: ``bpf``, ``perf_event_open``, ``userfaultfd``, ``keyctl``,
  ``add_key``, ``request_key``, ``open_by_handle_at``, and ``personality`` but its query
  (``0xffffffff``): nothing in the worker calls it, and setting even the default persona again
  would need a second test on the same argument, which libseccomp refuses in one rule.

Cost, measured with ``bench/bench_layers.py`` on this 2-core VM: building and loading the filter
through libseccomp takes 1.2-1.8 ms p50 in a freshly forked worker. Building the libseccomp
context in the parent beforehand was no faster (1.27 vs 1.21 ms p50, 40 workers each:
libseccomp snapshots its rule database on every rule added, and the child's copy-on-write
faults dominate). So the zygote compiles the filter once instead (:func:`prepare`): libseccomp
exports the BPF program with a mark where the worker's pid goes, checked to be the only place
the pid appears (a program compiled with another mark must differ exactly there); a worker
writes its pid over the marks and loads the program itself (``seccomp(SECCOMP_SET_MODE_FILTER,
SECCOMP_FILTER_FLAG_TSYNC)``, after ``PR_SET_NO_NEW_PRIVS``, as libseccomp does). Where the
check fails, or off x86-64, each worker builds its own as before. A
cheap system call costs the same under the filter (``getppid`` 304-377 ns against 301-343 ns
without, within the noise): the kernel's per-filter action cache lets calls that no rule tests
through without running it.

Nothing is claimed that the kernel did not confirm: :data:`state` is active only when every
thread's ``/proc/self/task/TID/status`` says ``Seccomp: 2`` and ``Seccomp_filters`` grew.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import threading
from typing import Any

from tcletd.worker.netns import Layer

__all__ = ["SKIP_WORD", "load", "prepare", "rehearse", "rules", "state", "unavailable"]

SKIP_WORD = "no-seccomp"
"""Test-only: a ``WorkerSpec.probe`` that starts with this word runs without the filter, so a
test can prove the network namespace alone (the host never sets ``probe``)."""

# The sonames pyseccomp looks up at its import (ctypes.util.find_library("c"), ("seccomp")):
# each look-up runs `ldconfig -p` in a subprocess, 3.5 ms of the zygote's start for the two;
# the dynamic loader finds these names itself. Any other name, or one it cannot load, is looked
# up as before.
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


def _find_library(name: str) -> str | None:
    soname = _SONAMES.get(name)
    if soname is not None:
        try:
            ctypes.CDLL(soname)
        except OSError:
            pass
        else:
            return soname
    return _find_library_by_ldconfig(name)


_find_library_by_ldconfig = ctypes.util.find_library
ctypes.util.find_library = _find_library  # only while pyseccomp is imported (one thread)
try:  # imported by the zygote: the library is found once, not per worker
    import pyseccomp as _seccomp  # type: ignore[import-untyped]

    unavailable = ""
except (ImportError, OSError, RuntimeError) as _exc:
    _seccomp = None
    unavailable = f"libseccomp cannot be loaded: {_exc}"
finally:
    ctypes.util.find_library = _find_library_by_ldconfig

state = Layer(False, "not loaded (this process is not a worker)")
"""What :func:`load` achieved in this process."""

_DENIED = [
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "unshare",
    "setns",
    "pivot_root",
    "chroot",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "swapon",
    "swapoff",
    "reboot",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
]

# Signals may go only to the worker itself (the first argument is the pid or tgid).
_OWN_PROCESS_ONLY = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")

_CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # (CLONE_NEWTIME exists only for clone3 and unshare: in clone's flags, 0x80 is the signal)

_PER_QUERY = 0xFFFFFFFF

# Stand-ins for the worker's pid in the compiled template: no pid is this large (pid_max is at
# most 2**22), and no other constant of the filter is either.
_PID_MARKS = (0x3FFFFF01, 0x3FFFFF02)
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_SYS_SECCOMP = {"x86_64": 317}  # the seccomp(2) system call, where the template is loaded
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_SET_NO_NEW_PRIVS = 38
_template: bytes | None = None
"""The filter compiled once (in the zygote), the worker's pid marked with ``_PID_MARKS[0]``."""
_template_pid_at: tuple[int, ...] = ()  # byte offsets of the mark's constants in the template
_template_rules = 0  # how many rules the template holds (what :func:`load` reports)
_inherited = 0  # the filters the zygote holds, so each worker forked from it holds at first

LIBC = ctypes.CDLL(None, use_errno=True)
"""The C library, opened once in the zygote with the functions the sandbox calls looked up (a
``CDLL(None)`` and its first lookups cost a worker ~0.2 ms each time)."""
_LOOKED_UP = (LIBC.prctl, LIBC.syscall)  # once, here: a CDLL keeps what it looked up


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


Rule = tuple[str, str, tuple[Any, ...]]


def rules(pid: int) -> list[Rule]:
    """The filter's rules for the worker ``pid``: ``(action, syscall, argument tests)``, where
    a rule with several tests applies when all of them hold."""
    return _fixed_rules() + _own_process_rules(pid)


def _own_process_rules(pid: int) -> list[Rule]:
    s = _seccomp
    assert s is not None
    return [("EPERM", name, (s.Arg(0, s.NE, pid),)) for name in _OWN_PROCESS_ONLY]


def _fixed_rules() -> list[Rule]:
    s = _seccomp
    assert s is not None
    out: list[Rule] = [("EPERM", name, ()) for name in _DENIED]
    out += [("EPERM", "socket", ()), ("EPERM", "socketpair", ())]
    for flag in _CLONE_NEW.values():
        out.append(("EPERM", "clone", (s.Arg(0, s.MASKED_EQ, flag, flag),)))
    out.append(("ENOSYS", "clone3", ()))
    # libseccomp takes one test per argument in a rule (two: EINVAL), so only the query stays.
    out.append(("EPERM", "personality", (s.Arg(0, s.NE, _PER_QUERY),)))
    return out


def prepare() -> bool:
    """Compile the filter once, for every worker forked from here; False if it cannot be (each
    worker then builds its own)."""
    global _template, _template_pid_at, _template_rules, _inherited
    if _seccomp is None or platform.machine() not in _SYS_SECCOMP:
        return False
    try:
        first, second = (_export(rules(mark)) for mark in _PID_MARKS)
    except (OSError, ValueError, RuntimeError):
        return False
    if len(first) % _INSN.size or _marked(first, _PID_MARKS[1]) != second:
        return False  # the pid is not only where the mark is: not a template
    k_at = _INSN.size - 4  # the constant ``k`` ends each instruction
    _template_pid_at = tuple(
        offset + k_at
        for offset in range(0, len(first), _INSN.size)
        if _INSN.unpack_from(first, offset)[3] == _PID_MARKS[0]
    )
    _template_rules = len(rules(_PID_MARKS[0]))
    _inherited = _filters([str(threading.get_native_id())])[0]
    _template = first
    return True


def _for_pid(template: bytes, pid: int) -> bytes:
    """The template with ``pid`` in place of the mark: a patch at the offsets :func:`prepare`
    found (the same bytes as :func:`_marked`, ~5 us instead of ~80 in a worker)."""
    program = bytearray(template)
    for offset in _template_pid_at:
        struct.pack_into("=I", program, offset, pid)
    return bytes(program)


def _export(made: list[Rule]) -> bytes:
    fd = os.memfd_create("tcletd-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as program:
        _filter(made).export_bpf(program)
        program.seek(0)
        return program.read()


def _marked(program: bytes, value: int) -> bytes:
    """``program`` with ``value`` for every instruction's constant that is the first mark."""
    out = bytearray()
    for code, jt, jf, k in _INSN.iter_unpack(program):
        out += _INSN.pack(code, jt, jf, value if k == _PID_MARKS[0] else k)
    return bytes(out)


def _load_program(program: bytes) -> None:
    """Load a compiled filter on every thread (TSYNC), as libseccomp's load does."""
    libc = LIBC
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS refused")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _INSN.size, ctypes.cast(buf, ctypes.c_void_p))
    number = _SYS_SECCOMP[platform.machine()]
    rc = libc.syscall(
        number, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(fprog)
    )
    if rc != 0:  # -1 and errno, or the id of a thread that could not be synchronised
        raise OSError(ctypes.get_errno() if rc < 0 else errno.EBUSY, "seccomp() refused")


def _filters(tids: list[str] | None = None) -> tuple[int, list[int]]:
    """``Seccomp_filters`` of this process, and the ``Seccomp`` mode of each thread of
    ``tids`` (default: all of them). Read with one ``read`` each, no file object: a worker's
    first buffered reads cost ~0.1 ms each."""
    count = 0
    modes = []
    for tid in os.listdir("/proc/self/task") if tids is None else tids:
        try:
            fd = os.open(f"/proc/self/task/{tid}/status", os.O_RDONLY)
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        try:
            text = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        for line in text.splitlines():
            if line.startswith(b"Seccomp:"):
                modes.append(int(line.split()[1]))
            elif line.startswith(b"Seccomp_filters:"):
                count = int(line.split()[1])
    return count, modes


def load() -> Layer:
    """Load the filter on every thread of this process; never raises. Irreversible.

    Returns, and records in :data:`state`, what the kernel then reports.
    """
    global state, _inherited
    if _seccomp is None:
        state = Layer(False, unavailable)
        return state
    try:
        if _template is not None:
            # A fork of the zygote holds the zygote's filters (~0.1 ms less than a read here).
            before, count = _inherited, _template_rules
            _load_program(_for_pid(_template, os.getpid()))
        else:
            before = _filters()[0]
            made = rules(os.getpid())
            count = len(made)
            _filter(made).load()
        after, modes = _filters()
    except (OSError, ValueError, RuntimeError) as exc:
        state = Layer(False, f"the filter could not be loaded: {exc}")
        return state
    if after <= before or not modes or any(m != 2 for m in modes):
        state = Layer(False, f"loaded, but the kernel reports modes {modes}, {after} filters")
    else:
        how = "compiled once" if _template is not None else "compiled here"
        state = Layer(True, f"filter mode, {count} rules ({how}), TSYNC on {len(modes)} threads")
        _inherited = after  # what a second load here (or a fork from here) starts from
    return state


def rehearse() -> None:
    """What :func:`load` runs, without loading: the reads of every thread's status and the
    template's patch (see :func:`tcletd.worker.sandbox.rehearse`)."""
    if _seccomp is not None and _template is not None:
        _for_pid(_template, os.getpid())
        _filters()


def _add(flt: Any, made: list[Rule]) -> None:
    s = _seccomp
    assert s is not None
    actions = {"EPERM": s.ERRNO(errno.EPERM), "ENOSYS": s.ERRNO(errno.ENOSYS)}
    for action, name, tests in made:
        flt.add_rule(actions[action], name, *tests)


def _filter(made: list[Rule]) -> Any:
    """A filter context (not loaded yet) with these rules."""
    s = _seccomp
    assert s is not None
    flt = s.SyscallFilter(s.ALLOW)
    flt.set_attr(s.Attr.CTL_TSYNC, 1)
    _add(flt, made)
    return flt
