"""This process's own stdout and stderr as sinks for a tclet's output: the embedded host's default
(:class:`OwnWriter`, which never blocks the host's loop) and the resident host's client
(:func:`write_own`, a plain blocking write: the client has nothing else to do). Imports only the
standard library; both sides of the trust boundary use it, and the bytes are never parsed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys

# Not typing.TYPE_CHECKING: the resident host's client imports this module, and typing and
# asyncio cost it a start-up it does not need (mypy takes any name TYPE_CHECKING as true). For
# the same reason OwnWriter imports contextlib and weakref where it uses them (~1 ms of the
# client's start; the client writes with write_own alone).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    import weakref
    from typing import Protocol

    class Holdable(Protocol):
        """What feeds the writer (an output relay): held while the writer is full."""

        def hold(self, held: bool, by: object = None) -> None: ...


# Bytes the writer accepts beyond what the consumer took before it holds the relays: enough to
# ride out a consumer's short pauses, small enough that a stalled one costs the host little.
HIGH_WATER = 1 << 18
WRITE_CHUNK = 1 << 16
_OWN_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class OwnStreamGone(BrokenPipeError):
    """The reader of this process's stdout or stderr went away; the stream is /dev/null now."""


def write_own(stream: str, data: bytes) -> None:
    """Write to this process's stdout or stderr. When its reader is gone (a closed pipe), point
    the stream at /dev/null, so that no later flush fails, and raise OwnStreamGone (a
    BrokenPipeError that says it was our own stream, not a socket's)."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    try:
        out.buffer.write(data)
        out.buffer.flush()
    except BrokenPipeError as exc:
        _to_devnull(out.fileno())
        raise OwnStreamGone(*exc.args) from None


def _to_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


class OwnWriter:
    """This process's stdout or stderr, written from an asyncio loop without ever blocking it.

    A pipe, a tty or a socket is written non-blocking through the loop's writer callback, with a
    buffer: past ``HIGH_WATER`` bytes every watched relay is held (its worker's writes then block
    on its own socketpair: backpressure on the tclet), and released once the buffer is empty. A
    blocking write there froze the whole embedded host while its consumer stalled (signals and
    the wall limit included: a wall=3s tclet ran 14.7 s). Pipes and ttys are reopened through
    ``/proc/self/fd`` to get a file description of our own, so O_NONBLOCK never reaches the
    shell's or a sibling's; a socket cannot be reopened, so its flag is set and restored at
    :meth:`close`. A regular file never blocks and is written directly.
    """

    def __init__(
        self, stream: str, loop: asyncio.AbstractEventLoop, *, high_water: int = HIGH_WATER
    ) -> None:
        import asyncio
        import contextlib
        import weakref

        out = sys.stdout if stream == "stdout" else sys.stderr
        with contextlib.suppress(AttributeError, OSError, ValueError):
            out.flush()  # what Python buffered goes first
        self._loop = loop
        self._high_water = high_water
        self._base = -1
        self._fd = -1
        self._restore: int | None = None  # the shared description's flags, if we changed them
        self._buffer = bytearray()
        self._writing = False
        self._held = False
        self._gone = False
        self._relays: weakref.WeakSet[Holdable] = weakref.WeakSet()
        self._empty = asyncio.Event()
        self._empty.set()
        try:
            self._base = out.fileno()
            self.direct = stat.S_ISREG(os.fstat(self._base).st_mode)
        except (AttributeError, ValueError, OSError):  # no stream at all: as if its reader left
            self._gone, self.direct = True, True
        self._fd = self._base
        if not self.direct:
            self._fd = self._open_own()

    def _open_own(self) -> int:
        try:
            return os.open(f"/proc/self/fd/{self._base}", _OWN_FLAGS)
        except OSError:  # a socket (ENXIO), or no /proc: share the description, restore later
            flags = fcntl.fcntl(self._base, fcntl.F_GETFL)
            fcntl.fcntl(self._base, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self._restore = flags
            return self._base

    def watch(self, relay: Holdable) -> None:
        """Hold ``relay`` whenever this writer is full (weakly: an ended tclet's goes away)."""
        self._relays.add(relay)
        if self._held:
            relay.hold(True, self)

    def write(self, data: bytes) -> None:
        """Accept ``data``; raise BrokenPipeError once the reader is gone (the relay drops the
        stream, as a closed pipe does today)."""
        if self._gone:
            raise BrokenPipeError(errno.EPIPE, "the reader of our output is gone")
        if self.direct:
            self._write_all(data)
            return
        if not self._buffer:
            data = data[self._send(data) :]
            if self._gone:
                raise BrokenPipeError(errno.EPIPE, "the reader of our output is gone")
        if data:
            self._buffer += data
            self._empty.clear()
            if not self._writing:
                self._loop.add_writer(self._fd, self._flush)
                self._writing = True
            if len(self._buffer) >= self._high_water:
                self._hold(True)

    async def drain(self, timeout: float) -> bool:
        """Until what was accepted is written (or the reader is gone), at most ``timeout``
        seconds; False if some is still waiting."""
        import asyncio

        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        """Stop writing (what is still buffered is dropped) and give the descriptor back."""
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._buffer.clear()
        self._empty.set()
        if self._fd != self._base:
            os.close(self._fd)
            self._fd = self._base
        if self._restore is not None:
            import contextlib

            with contextlib.suppress(OSError):
                fcntl.fcntl(self._base, fcntl.F_SETFL, self._restore)
            self._restore = None

    # ---- writing ------------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> int:
        """Write what the descriptor takes now; 0 when it is full or the reader is gone."""
        try:
            return os.write(self._fd, data[:WRITE_CHUNK])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:  # EPIPE (or EIO from a hung-up tty): nobody will read the rest
            self._lost()
            return 0

    def _flush(self) -> None:
        while self._buffer:
            n = self._send(memoryview(self._buffer))
            if n == 0:
                break
            del self._buffer[:n]
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            self._writing = False
            self._empty.set()
            self._hold(False)

    def _hold(self, held: bool) -> None:
        if held != self._held:
            self._held = held
            for relay in list(self._relays):
                relay.hold(held, self)

    def _lost(self) -> None:
        self._gone = True
        self._buffer.clear()
        # The stream now points at /dev/null, so that no later flush of ours fails.
        import contextlib

        with contextlib.suppress(OSError):
            _to_devnull(self._base)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except BrokenPipeError:
                self._lost()
                raise
