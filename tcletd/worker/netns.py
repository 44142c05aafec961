"""The worker's own, empty network namespace: the first layer under the Safe Base.

Worker side of the trust boundary. :func:`enter` runs early in every worker
(:func:`tcletd.worker.main.run`, once it is in its cgroup), while the process has one thread:
a network namespace belongs to a *thread*, so libzmq's I/O threads and Tcl's notifier must be
created after it to be in it too, and ``unshare(CLONE_NEWUSER)`` refuses a multithreaded
caller outright.

In the new namespace the only interface is ``lo``, and it is down: no address, no route, so a
socket the worker might still make reaches nothing (``connect`` fails with ``ENETUNREACH``),
and abstract Unix sockets are the new namespace's own. What keeps working is everything the host
hands over or set up before: descriptors received with ``SCM_RIGHTS`` keep the namespace they
were made in, and pathname Unix sockets (ZeroMQ ``ipc://``, the socketpairs) do not depend on
the network namespace at all.

With ``CAP_SYS_ADMIN`` (root) a plain ``unshare(CLONE_NEWNET)`` does it. Without it (any other
user, or root in a container that dropped it) the worker goes through an unprivileged user
namespace (``CLONE_NEWUSER | CLONE_NEWNET``) that maps its own uid and gid to themselves, then
gives up the capabilities the new user namespace granted it (``CapEff`` 0: configuring its
namespace would be kernel surface for nothing), where the kernel allows one
(``user.max_user_namespaces`` > 0, no LSM refusing it); otherwise the worker runs in the host's
namespace and :data:`state` says why.

One namespace per worker, not one the zygote enters once for all its workers: in a shared
namespace workers could reach each other's abstract Unix sockets (the filter lets ``AF_UNIX``
through) and, as root, see whatever one of them did to it; alone, a worker reaches nothing.
The price, measured with ``bench/bench_layers.py`` on this 2-core VM: ``unshare`` p50 1.3-1.4 ms
(p90 1.8 ms), paid in the worker's start and off the host's loop; 100 workers alive in their own
namespaces are killed and reaped in 23-27 ms, as fast as without (the kernel tears namespaces
down on a work queue, off the exit path).

Nothing is claimed that the kernel did not confirm: :data:`state` is active only when
``/proc/self/ns/net`` names a namespace other than the one the process started in, and no
interface in it is up.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

__all__ = ["Layer", "enter", "interfaces_up", "namespace", "state"]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Layer:
    """One layer of the sandbox: whether the kernel confirmed it, and what or why not."""

    active: bool
    detail: str

    def line(self, name: str) -> str:
        """``NAME: active (DETAIL)`` or ``NAME: inactive: REASON``, for ``tcletd doctor``."""
        if self.active:
            return f"{name}: active ({self.detail})"
        return f"{name}: inactive: {self.detail}"


state = Layer(False, "not entered (this process is not a worker)")
"""What :func:`enter` achieved in this process."""


def namespace(pid: int | str = "self") -> int:
    """The inode number that names the network namespace of process ``pid``."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def interfaces_up() -> list[str]:
    """The interfaces of this thread's network namespace that are up.

    Asked with ``SIOCGIFFLAGS`` on a Unix socket (any socket reaches the device ioctls), so it
    works under the seccomp filter too.
    """
    with open("/proc/thread-self/net/dev", "rb") as dev:
        names = [line.split(b":")[0].strip() for line in dev.readlines()[2:]]
    up = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for name in names:
            req = struct.pack("16sH14x", name[:15], 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, req))[1]
            if flags & _IFF_UP:
                up.append(name.decode("ascii", "replace"))
    return up


def _unshare(flags: int) -> int:
    """``unshare(flags)``: 0, or the errno it failed with."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) == 0:
        return 0
    return ctypes.get_errno()


def _map_self(uid: int, gid: int) -> None:
    """Map our own uid and gid to themselves in the user namespace just entered (the one
    mapping an unprivileged process may write; ``setgroups`` must be denied first)."""
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _drop_capabilities() -> None:
    """Give up the full capability set a new user namespace grants its first process: the
    worker needs none of it, and each one is kernel surface (configuring its own namespace,
    mounting in a new mount namespace) that a Safe Base escape would otherwise get."""
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words: all zero
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(header, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def enter() -> Layer:
    """Put this (single-threaded) process in a new, empty network namespace; never raises.

    Returns, and records in :data:`state`, what the kernel then reports.
    """
    global state
    try:
        before = namespace()
    except OSError as exc:
        state = Layer(False, f"cannot read /proc/self/ns/net: {exc.strerror}")
        return state
    how = "own namespace"
    err = _unshare(_CLONE_NEWNET)
    if err == errno.EPERM:  # no CAP_SYS_ADMIN: not root, or root in a container without it
        first = f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}"
        err = _unshare(_CLONE_NEWUSER | _CLONE_NEWNET)
        how = "own namespace, through a user namespace"
        if err:
            state = Layer(
                False,
                f"{first}; unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: {os.strerror(err)}"
                " (unprivileged user namespaces refused or exhausted here)",
            )
            return state
        try:
            _map_self(os.geteuid(), os.getegid())
        except OSError as exc:
            # Mapping uid 0 needs CAP_SETFCAP over the parent namespace (root in a container
            # without CAP_SYS_ADMIN, measured: EPERM). Unmapped, the worker keeps its real ids
            # for file access and shows as the overflow id; the network namespace holds anyway.
            how += f" (ids unmapped: {exc.strerror})"
        try:
            _drop_capabilities()
        except OSError as exc:
            how += f" (capabilities kept: {exc.strerror})"
    elif err:
        state = Layer(False, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
        return state
    try:
        after, up = namespace(), interfaces_up()
    except OSError as exc:
        state = Layer(False, f"entered, but cannot be confirmed: {exc}")
        return state
    if after == before:
        state = Layer(False, "unshare returned 0 but /proc/self/ns/net did not change")
    elif up:
        state = Layer(False, f"own namespace, but interfaces are up: {', '.join(up)}")
    else:
        state = Layer(True, f"{how}, no interfaces up")
    return state
