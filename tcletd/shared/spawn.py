"""The wire between the host and the zygote, the process every worker is forked from.

Imported by both sides. The zygote runs no tclet code (its children do, after they are forked),
so it is on the host's side of the trust boundary; the host still decodes what it says only with
:data:`ZYGOTE_DECODER`, bounded and typed, and takes a descriptor only with the message that
names it.

One message per SOCK_SEQPACKET datagram. Host to zygote: :class:`Warm` (fork a child ahead into
this cgroup), and :class:`Spawn`, with the worker's spec in a memfd and its three socketpair
ends (its descriptor channel, stdout, stderr) as SCM_RIGHTS. Zygote to host:
:class:`Ready` once, then :class:`Spawned` (with a pidfd for the child) or :class:`SpawnFailed`
for each Spawn, in order, :class:`WarmChild` for each child forked ahead (with the host's end of
a socketpair to it and a pidfd: the host sends that child its Spawn itself, in the same format),
and :class:`Exited` when it reaps a child, any child.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# A Spawn carries only cgroup paths (its spec travels in a memfd).
MAX_SPAWN = 65536
# What the zygote sends is small: no message of its comes near this.
MAX_REPLY = 4096
Pid = Annotated[int, msgspec.Meta(ge=1, le=2**22)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Ident = Annotated[str, msgspec.Meta(max_length=64)]


class Spawn(msgspec.Struct, tag=True, frozen=True):
    """Fork a worker to enter the cgroup whose ``cgroup.procs`` files are ``cgroup_procs``.
    Four descriptors travel with it: a memfd holding its encoded WorkerSpec (a script may be
    larger than a datagram can be), then its descriptor channel, stdout and stderr."""

    seq: Seq
    cgroup_procs: list[Annotated[str, msgspec.Meta(max_length=4096)]]


class Warm(msgspec.Struct, tag=True, frozen=True):
    """Fork a warm child ahead (up to the pool's size) into the cgroup whose ``cgroup.procs``
    files are ``cgroup_procs`` (none: the host has no cgroups). The host made that cgroup for
    this child alone; the Spawn that names the same files takes it, and forks one cold into the
    cgroup if it is not there (yet, or any more). ``ident`` (none: do not connect ahead): the
    routing identity, chosen by the host and never used again, under which the child connects
    its link to the host's ROUTER at ``endpoint`` before any tclet is its own."""

    cgroup_procs: list[Annotated[str, msgspec.Meta(max_length=4096)]]
    ident: Ident = ""
    endpoint: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class Ready(msgspec.Struct, tag=True, frozen=True):
    """The zygote has prepared everything a worker shares and takes Spawns."""

    pid: Pid


class Spawned(msgspec.Struct, tag=True, frozen=True):
    """Spawn ``seq`` is process ``pid``; a pidfd for it travels with this message."""

    seq: Seq
    pid: Pid


class SpawnFailed(msgspec.Struct, tag=True, frozen=True):
    """Spawn ``seq`` made no process, because ``error``."""

    seq: Seq
    error: Annotated[str, msgspec.Meta(max_length=512)]


class WarmChild(msgspec.Struct, tag=True, frozen=True):
    """A child forked ahead for a :class:`Warm` naming ``cgroup_procs`` waits as process ``pid``.
    Two descriptors travel with it: the host's end of a SOCK_SEQPACKET socketpair to the child
    (a :class:`Spawn` with its four descriptors goes straight to the child on it), then a pidfd
    for the child."""

    pid: Pid
    cgroup_procs: list[Annotated[str, msgspec.Meta(max_length=4096)]]
    ident: Ident = ""  # its Warm's


class Exited(msgspec.Struct, tag=True, frozen=True):
    """The zygote reaped ``pid``: ``exitcode`` as multiprocess gives it (-N: killed by N)."""

    pid: Pid
    exitcode: Annotated[int, msgspec.Meta(ge=-128, le=255)]


ZygoteMessage = Ready | Spawned | SpawnFailed | WarmChild | Exited
# The descriptors each message of the zygote's carries (any other count is refused).
CARRIED: dict[type[msgspec.Struct], int] = {Spawned: 1, WarmChild: 2}

ZYGOTE_DECODER: msgspec.msgpack.Decoder[ZygoteMessage] = msgspec.msgpack.Decoder(ZygoteMessage)
SPAWN_DECODER: msgspec.msgpack.Decoder[Spawn] = msgspec.msgpack.Decoder(Spawn)
HOST_DECODER: msgspec.msgpack.Decoder[Spawn | Warm] = msgspec.msgpack.Decoder(Spawn | Warm)
ENCODER = msgspec.msgpack.Encoder()
DecodeError = msgspec.DecodeError  # also a bad type or bound (ValidationError is a subclass)
