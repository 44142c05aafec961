"""The wire between host and worker: typed messages, encoded with msgspec (msgpack).

Imported by both sides of the trust boundary. The host decodes only with :data:`WORKER_DECODER`,
which accepts nothing but the worker-to-host union below; any other byte string is a
:class:`msgspec.DecodeError` or :class:`msgspec.ValidationError` and ends the worker. Bulk bytes
never travel here: sockets are handed over as descriptors on the worker's Unix socketpair, and
stdout/stderr flow through their own socketpairs.

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

# Descriptor hand-over frames on the socketpair: 8 bytes, the big-endian ``sock``.
FD_FRAME_SIZE = 8


class WorkerSpec(msgspec.Struct, frozen=True):
    """Start arguments, host to worker, carried once through the fork server."""

    tclet_id: str
    token: str
    endpoint: str
    script: str
    script_name: str
    argv: list[str]
    embed_args: dict[str, str]
    policy: str
    hidden_options: list[str]
    nofile: int = 0


# ---- worker -> host -------------------------------------------------------------------------


class Hello(msgspec.Struct, tag=True, frozen=True):
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
    """Stamped from the worker's Tcl event loop; ``state`` is a :class:`tcletd.states` name."""

    state: Short
    commands: int = 0


WorkerMessage = Hello | Connect | Listen | Close | RequestPolicy | Heartbeat

# ---- host -> worker -------------------------------------------------------------------------


class Granted(msgspec.Struct, tag=True, frozen=True):
    """A connected socket; its descriptor is on the socketpair, framed with ``sock``."""

    req: int
    sock: int


class Listening(msgspec.Struct, tag=True, frozen=True):
    """A listening socket kept by the host; ``sockname`` is Tcl's list of {addr host port}."""

    req: int
    sock: int
    sockname: list[list[str]]


class Accepted(msgspec.Struct, tag=True, frozen=True):
    """An accepted connection on listener ``listener``; its descriptor follows as ``sock``."""

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
    req: int
    name: str
    hidden_options: list[str]


class Stop(msgspec.Struct, tag=True, frozen=True):
    """The host ends the tclet; the worker exits with ``status`` after flushing its output."""

    reason: str
    status: int


HostMessage = Granted | Listening | Accepted | Denied | PolicyGranted | Stop

WORKER_DECODER: msgspec.msgpack.Decoder[WorkerMessage] = msgspec.msgpack.Decoder(WorkerMessage)
HOST_DECODER: msgspec.msgpack.Decoder[HostMessage] = msgspec.msgpack.Decoder(HostMessage)
SPEC_DECODER: msgspec.msgpack.Decoder[WorkerSpec] = msgspec.msgpack.Decoder(WorkerSpec)
ENCODER = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return ENCODER.encode(msg)
