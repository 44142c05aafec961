"""A blocking face of the embedding API for scripts: :class:`BlockingHost` runs a
:class:`~tcletd.host.host.Host` on an asyncio loop in a thread of its own.

Host side of the trust boundary, as :mod:`tcletd.api` (this is a facade over the same Host).
Every call hands its work to the host's loop and waits for the answer, so the Host's objects are
only ever touched from its own thread. Nothing here needs the main thread: the zygote is
started with fork+exec, workers come from it (never forked from this multi-threaded process),
their ends are watched with ``loop.add_reader`` on their sentinels (no SIGCHLD, no child
watcher), and the Host installs no signal handler (``tcletd serve`` and ``tcletd run`` install
their own, on their main thread). A signal to the script (Ctrl-C) therefore stays the script's:
a call interrupted by it cancels what it was waiting for on the loop, and ``close`` ends the
tclets.

    with BlockingHost(audit="audit.jsonl") as host:
        tclet_id = host.launch('puts "hi"; exit 3')
        print(host.wait(tclet_id).status)            # 3
        for stream, data in host.logs(tclet_id):     # b"hi\\n" on stdout
            ...

Iterators (``logs``, ``events``) step the host's async iterators one item per ``next``: a
consumer that reads slowly holds a followed tclet's output exactly as a slow client does
(nothing is lost). Leave one early (``break``) and it is closed on the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from tcletd.host.host import Host
from tcletd.host.outputlog import STREAMS
from tcletd.shared.launch import DEFAULT_SCRIPT_NAME
from tcletd.shared.states import TcletResult

if TYPE_CHECKING:
    from tcletd.policy import Policy

_T = TypeVar("_T")
# Seconds ``close`` gives the host to end its tclets and release its resources.
CLOSE_TIMEOUT = 60.0
_CLOSING: set[asyncio.Future[None]] = set()  # strong references to closings until they finish


class BlockingHost:
    """A :class:`~tcletd.host.host.Host` for code without an event loop: the same keywords, the
    operator's verbs as blocking calls, tclets named by id. Use it as a context manager (or call
    :meth:`start` and :meth:`close`); a host left open is closed at interpreter exit."""

    def __init__(self, **host_options: Any) -> None:
        """``host_options``: what :class:`~tcletd.host.host.Host` takes (``audit``,
        ``max_workers``, ``keep_output``, ...), checked here, as Host checks them."""
        self.host = Host(**host_options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> BlockingHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the host's loop thread and the host on it (the zygote, the ROUTER, the
        watchdog); raises what :meth:`Host.start` raises."""
        with self._lock:
            if self._loop is not None:
                raise RuntimeError("BlockingHost is already started")
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=self._serve, args=(loop,), name="tcletd-host", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread

        async def start() -> None:
            self.host.start()

        try:
            self._call(start())
        except BaseException:
            self._stop()
            raise
        atexit.register(self.close)

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def close(self) -> None:
        """End every tclet still running, release the host's resources, stop its thread.
        Idempotent."""
        atexit.unregister(self.close)
        if self._loop is None:
            return
        try:
            self._call(self.host.close(), timeout=CLOSE_TIMEOUT)
        finally:
            self._stop()

    def _stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()

    # ---- the bridge ---------------------------------------------------------------------------

    def _call(self, work: Awaitable[_T], timeout: float | None = None) -> _T:
        """Run ``work`` on the host's loop and wait for its result; an interrupted or timed-out
        wait cancels it there."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            if asyncio.iscoroutine(work):
                work.close()  # never scheduled: no "never awaited" warning
            if loop is not None:  # waiting here would wait on ourselves
                raise RuntimeError("BlockingHost: called from its own host thread")
            raise RuntimeError("BlockingHost is not started (use it in a with block)")

        async def awaited() -> _T:
            return await work

        future = asyncio.run_coroutine_threadsafe(awaited(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the host within {timeout} s") from None
        except BaseException:
            future.cancel()
            raise

    def _sync(self, function: Callable[[], _T]) -> _T:
        """Call ``function`` on the host's loop (the host's tables are the loop's alone)."""

        async def call() -> _T:
            return function()

        return self._call(call())

    def _iterate(self, make: Callable[[], AsyncIterator[_T]]) -> Generator[_T, None, None]:
        """The async iterator ``make`` returns (made on the loop: its errors are raised here, at
        once), stepped one item per ``next``, closed on the loop when left."""
        source = self._sync(make)

        def steps() -> Generator[_T, None, None]:
            try:
                while True:
                    try:
                        item = self._call(anext(source))
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                aclose: Callable[[], Awaitable[None]] | None = getattr(source, "aclose", None)
                if aclose is None or self._loop is None:
                    pass
                elif threading.current_thread() is self._thread:  # collected on the loop itself
                    closing = asyncio.ensure_future(aclose())
                    _CLOSING.add(closing)
                    closing.add_done_callback(_CLOSING.discard)
                else:
                    self._call(aclose())

        return steps()

    # ---- tclets -------------------------------------------------------------------------------

    def launch(
        self,
        script: str,
        *,
        script_name: str = DEFAULT_SCRIPT_NAME,
        policy: str | Path | Policy | None = None,
        origin: str | None = None,
        argv: Sequence[str] = (),
        embed_args: Mapping[str, str] | None = None,
        limits: Sequence[str] = (),
        detached: bool = True,
    ) -> str:
        """Start a tclet and return its id at once (the keywords are :meth:`Host.launch`'s).
        ``detached`` (the default): its output is kept for :meth:`logs` only; otherwise it also
        goes to this process's stdout and stderr."""

        def go() -> str:
            tclet = self.host.launch(
                script,
                script_name=script_name,
                policy=policy,
                origin=origin,
                argv=argv,
                embed_args=embed_args,
                limits=limits,
                detached=detached,
            )
            return tclet.id

        return self._sync(go)

    def run(self, script: str, **launch_options: Any) -> TcletResult:
        """:meth:`launch` the tclet and :meth:`wait` for its end."""
        return self.wait(self.launch(script, **launch_options))

    def status(self) -> list[dict[str, object]]:
        """:meth:`Host.status`: one dict per running tclet."""
        return self._sync(self.host.status)

    def list(self, *, all: bool = False) -> list[dict[str, object]]:
        """One row per running tclet (``all``: the ended ones the host keeps too), with the keys
        of :data:`~tcletd.host.registry.ROW_KEYS`."""
        return self._sync(lambda: self.host.list(all=all))

    def kill(self, tclet_id: str, signal: str = "TERM") -> str:
        """End a running tclet for the operator (``TERM`` or ``KILL``); its whole id. Raises
        :class:`~tcletd.shared.errors.NoSuchTclet` for an unknown or ended one."""
        return self._sync(lambda: self.host.kill(tclet_id, signal))

    def wait(self, tclet_id: str, timeout: float | None = None) -> TcletResult:
        """The tclet's result once it has ended (at once if it has); past ``timeout`` seconds,
        TimeoutError (the tclet runs on)."""
        return self._call(self._sync(lambda: self.host.wait(tclet_id)), timeout)

    def logs(
        self,
        tclet_id: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        streams: Sequence[str] = STREAMS,
    ) -> Generator[tuple[str, bytes], None, None]:
        """The tclet's output as ``(stream, bytes)``, each stream in the order written: what the
        host kept, then with ``follow`` the rest until it ends (see :meth:`Host.logs`)."""
        return self._iterate(
            lambda: self.host.logs(tclet_id, follow=follow, tail=tail, streams=streams)
        )

    def dropped(self, tclet_id: str) -> dict[str, int]:
        """Bytes of each of the tclet's streams the host let go (beyond ``keep_output``)."""
        return self._sync(lambda: self.host.dropped(tclet_id))

    def events(
        self, *, follow: bool = False, tclet_id: str | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """The host's audit records it still holds, then with ``follow`` each new one (the
        iterator then ends only when left); only ``tclet_id``'s if given."""
        return self._iterate(lambda: self.host.events(follow=follow, tclet_id=tclet_id))
