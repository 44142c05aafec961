"""The wire between host and worker: typed messages, encoded with msgspec (msgpack).

Imported by both sides of the trust boundary. The host decodes only with :data:`WORKER_DECODER`,
which accepts nothing but the worker-to-host union below; any other byte string is a
:class:`msgspec.DecodeError` or :class:`msgspec.ValidationError` and ends the worker. Bulk bytes
never travel here: stdout/stderr flow through their own socketpairs, and the two messages that
carry a socket (:class:`Granted`, :class:`Accepted`) travel *with* its descriptor on the worker's
SOCK_SEQPACKET socketpair (one message, one SCM_RIGHTS descriptor), so a descriptor can never be
separated from what it means, and a connect costs one ZeroMQ hop instead of two.

Every request carries ``req``, a number the worker chooses; the host answers with the same
``req``. Sockets, connected or listening, are named by ``sock``, a number the host chooses.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# Bounds that keep a hostile worker from making the host parse or store huge values.
MAX_WORD = 1024
Short = Annotated[str, msgspec.Meta(max_length=MAX_WORD)]
ReqId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
SockId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]

# The largest message that travels on the descriptor socketpair (Granted or Accepted).
FD_MESSAGE_MAX = 4096


class WorkerSpec(msgspec.Struct, frozen=True):
    """Start arguments, host to worker, carried once through the zygote."""

    tclet_id: str
    token: str
    endpoint: str
    script: str
    script_name: str
    argv: list[str]
    embed_args: dict[str, str]
    policy: str
    hidden_options: list[str]
    # Limits the worker enforces on itself (0 = none): the descriptor rlimit (its socket quota
    # plus what the runtime itself holds), the Tcl command count, and OS backstops for memory
    # (bytes) and CPU (seconds) under the host's own measurements.
    nofile: int = 0
    commands: int = 0
    memory: int = 0
    cpu: float = 0.0
    # The most any policy the tclet may still be granted (``policy NAME``) allows: the hard
    # rlimits. 0: no limit; -1: no other policy can be granted, the limit above is the ceiling.
    nofile_max: int = -1
    memory_max: int = -1
    cpu_max: float = -1.0
    # Start in the idle scheduling class: the tclet's origin is in the host's penalty box.
    demoted: bool = False
    # Test-only: run this probe of tcletd.worker.probes instead of the script, once the sandbox
    # is in place. The host never sets it from a launch request; only tests driving a
    # Supervisor do.
    probe: str = ""


# ---- worker -> host -------------------------------------------------------------------------


class Hello(msgspec.Struct, tag=True, frozen=True):
    """The worker's first message, sent as its tclet's script starts; the launch token says the
    worker is the one the host launched."""

    token: Short
    pid: int


class Connect(msgspec.Struct, tag=True, frozen=True):
    req: ReqId
    host: Short
    port: Short
    myaddr: Short = ""
    myport: Short = ""
    asynchronous: bool = False


class Listen(msgspec.Struct, tag=True, frozen=True):
    req: ReqId
    port: Short
    myaddr: Short = ""


class Close(msgspec.Struct, tag=True, frozen=True):
    """The tclet closed a socket the host granted (connected or listening)."""

    sock: SockId


class RequestPolicy(msgspec.Struct, tag=True, frozen=True):
    req: ReqId
    name: Short


class Heartbeat(msgspec.Struct, tag=True, frozen=True):
    """Stamped from the worker's Tcl event loop (never from a thread), so a tclet that does not
    return to its event loop stops stamping. ``state`` is a :class:`tcletd.shared.states.TcletState`
    name; ``commands`` is the tclet's ``info cmdcount``. ``waiting``: the tclet rests in its event
    loop; no beat follows until the loop wakes, and the first one after says so (``False``)."""

    state: Short
    commands: Annotated[int, msgspec.Meta(ge=0)] = 0
    waiting: bool = False


class LimitHit(msgspec.Struct, tag=True, frozen=True):
    """The worker is about to exit because a limit enforced inside it was reached (the Tcl
    command count): ``limit`` names it as the policy does (``commands``)."""

    limit: Short
    detail: Short = ""


WorkerMessage = Hello | Connect | Listen | Close | RequestPolicy | Heartbeat | LimitHit

# ---- host -> worker -------------------------------------------------------------------------


class Granted(msgspec.Struct, tag=True, frozen=True):
    """A connected socket; sent on the socketpair with its descriptor."""

    req: int
    sock: int


class Listening(msgspec.Struct, tag=True, frozen=True):
    """A listening socket kept by the host; ``sockname`` is Tcl's list of {addr host port}."""

    req: int
    sock: int
    sockname: list[list[str]]


class Accepted(msgspec.Struct, tag=True, frozen=True):
    """A connection accepted on ``listener``; sent on the socketpair with its descriptor."""

    listener: int
    sock: int
    peer_host: str
    peer_port: int


class Denied(msgspec.Struct, tag=True, frozen=True):
    """A refused request; ``message`` and ``errorcode`` are what the tclet's error carries."""

    req: int
    message: str
    errorcode: list[str]


class PolicyGranted(msgspec.Struct, tag=True, frozen=True):
    """The tclet's ``policy NAME`` was granted: what it hides, and the limits the worker now
    enforces on itself (as in :class:`WorkerSpec`; 0 = none)."""

    req: int
    name: str
    hidden_options: list[str]
    nofile: int
    commands: int
    memory: int
    cpu: float


class QuotaExceeded(msgspec.Struct, tag=True, frozen=True):
    """The host shut the tclet's sockets down because of a quota; the worker reports ``message``
    to the tclet as a background error (so it reaches its stderr)."""

    quota: str
    message: str


class Stop(msgspec.Struct, tag=True, frozen=True):
    """The host ends the tclet; the worker exits with ``status`` after flushing its output."""

    reason: str
    status: int


HostMessage = Granted | Listening | Accepted | Denied | PolicyGranted | QuotaExceeded | Stop

WORKER_DECODER: msgspec.msgpack.Decoder[WorkerMessage] = msgspec.msgpack.Decoder(WorkerMessage)
HOST_DECODER: msgspec.msgpack.Decoder[HostMessage] = msgspec.msgpack.Decoder(HostMessage)
SPEC_DECODER: msgspec.msgpack.Decoder[WorkerSpec] = msgspec.msgpack.Decoder(WorkerSpec)
ENCODER = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return ENCODER.encode(msg)
