"""The relay of one worker's stdout and stderr to the embedder's sinks.

Host side of the trust boundary: the bytes are the tclet's and are never parsed; the host only
counts them against the output quota and keeps the last few of stderr, which name the death of a
worker that aborted (:func:`tcletd.host.watchdog.breach_from_death`).

Fairness: the host reads one chunk of at most ``READ_CHUNK`` bytes per readiness event and hands
it to the sink at once; it keeps no output queue. A worker that writes faster than the sink
takes fills its socketpair, and its own blocking stdout pushes back on it alone (``hold``: the
resident host holds the relay while its client reads slowly, the embedded host while its own
stdout or stderr is full, :class:`tcletd.shared.streams.OwnWriter`). A worker that keeps the
host reading, more than ``HOG_OUTPUT`` bytes within ``HOG_WINDOW``, is an output hog: the relay
reports it once, the host demotes it like a CPU hog, and from then on, while other tclets run
beside it, the relay reads a demoted worker's streams at most one chunk every ``PACED_READ``
seconds. An output flood then costs the host a bounded amount of work a second, and its worker
spends its life blocked on a full socketpair instead of racing its neighbours for the cores
(bench/bench_isolation.py). A tclet alone on its host has no neighbour to protect: its output
goes at full speed (a lone `tcletd run` that prints 16 MiB would take 2.5 s paced instead of
~0.15 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Mapping

from tcletd.host.quotas import TcletQuotas
from tcletd.host.watchdog import HOG_OUTPUT, HOG_WINDOW

OutputSink = Callable[[bytes], None]
READ_CHUNK = 65536
STDERR_TAIL = 256
# One chunk per stream per PACED_READ: at most 6.4 MiB/s each from a demoted worker.
PACED_READ = 0.01
STREAMS = ("stdout", "stderr")


class OutputRelay:
    """Reads a worker's two output streams, counts them and hands them to the sinks."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        quotas: TcletQuotas,
        sinks: Mapping[str, OutputSink],
        *,
        on_over_quota: Callable[[], None],
        on_hog: Callable[[int], None],
        crowded: Callable[[], bool],
    ) -> None:
        """``on_over_quota`` is called after each read that leaves the output quota exceeded;
        ``on_hog`` with the bytes read in the window, until the host calls :meth:`pace`;
        ``crowded`` says whether other tclets run beside this one (pacing protects them)."""
        self._loop = loop
        self._quotas = quotas
        self._sinks = dict(sinks)
        self._on_over_quota = on_over_quota
        self._on_hog = on_hog
        self._crowded = crowded
        self._socks: dict[str, socket.socket] = {}
        self._eof: dict[str, asyncio.Future[None]] = {}
        self._paused: dict[str, asyncio.TimerHandle] = {}  # paced streams between two reads
        self._held = False
        self._holders: set[object] = set()  # the consumers holding the relay
        # Set by an embedder whose sinks buffer (the embedded host's own stdout, bounded at its
        # close): once the worker is gone, read its last bytes even while held, rather than
        # wait out drained()'s timeout (a held wall=3s tclet ended at 6 s, 3 s after its kill).
        self.unhold_at_end = False
        self._final = False
        self._stopped = False
        self._paced = False
        self._window_start = 0.0
        self._window_bytes = 0
        self.stderr_tail = b""  # the last words of a worker that died

    def start(self, stdout: socket.socket, stderr: socket.socket) -> None:
        self._socks = {"stdout": stdout, "stderr": stderr}
        self._eof = {name: self._loop.create_future() for name in STREAMS}
        self._follow()

    def hold(self, held: bool, by: object = None) -> None:
        """Stop (or go on) reading for the consumer ``by``: while any consumer holds the relay
        (its sink is full) the host reads nothing, and the worker's writes block."""
        if self._final:
            return
        if held:
            self._holders.add(by)
        else:
            self._holders.discard(by)
        self._held = bool(self._holders)
        self._follow()

    def pace(self) -> None:
        """From now on, while crowded, read at most one chunk per stream every PACED_READ (a
        demoted worker)."""
        self._paced = True

    def drop(self, name: str) -> None:
        """Stop relaying ``name``; the worker's next write to it fails (EPIPE), as in tclsh."""
        sock = self._socks.get(name)
        if sock is None:
            return  # not started: there is nothing to drop yet
        if sock.fileno() >= 0:  # not closed with the worker yet
            self._loop.remove_reader(sock.fileno())
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
        if not self._eof[name].done():
            self._eof[name].set_result(None)

    async def drained(self, timeout: float) -> None:
        """Until both streams reached their end (the worker exited), or ``timeout``."""
        if self.unhold_at_end:
            self._final, self._held = True, False
            self._follow()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._eof.values()), timeout)

    def stop(self) -> None:
        """Read no more: the worker is gone and its sockets are about to be closed."""
        self._stopped = True
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        self._follow()

    # ---- reading ------------------------------------------------------------------------------

    def _follow(self) -> None:
        for name in self._socks:
            self._reading(name, not (self._held or self._stopped or name in self._paused))

    def _reading(self, name: str, on: bool) -> None:
        sock = self._socks[name]
        if sock.fileno() < 0:
            return
        if on and not self._eof[name].done():
            self._loop.add_reader(sock.fileno(), self._read, name, sock)
        else:
            self._loop.remove_reader(sock.fileno())

    def _resume(self, name: str) -> None:
        del self._paused[name]
        self._reading(name, not (self._held or self._stopped))

    def _read(self, name: str, sock: socket.socket) -> None:
        try:
            data = sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(name)
            return
        if name == "stderr":
            self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL:]
        fits = self._quotas.add_output(len(data))
        try:
            if fits:
                self._sinks[name](data[:fits] if fits < len(data) else data)
        except OSError:  # the sink is gone (our stdout was a pipe whose reader went away)
            self.drop(name)
        if self._quotas.over_output:
            self._on_over_quota()
        if not self._paced:
            self._watch_rate(len(data))
        elif self._crowded():
            self._pause(name)

    def _pause(self, name: str) -> None:
        if name not in self._paused and not self._eof[name].done():
            self._reading(name, False)
            self._paused[name] = self._loop.call_later(PACED_READ, self._resume, name)

    def _watch_rate(self, n: int) -> None:
        now = time.monotonic()
        if now - self._window_start >= HOG_WINDOW:
            self._window_start, self._window_bytes = now, 0
        self._window_bytes += n
        if self._window_bytes >= HOG_OUTPUT:
            self._on_hog(self._window_bytes)
