"""``tcletd page FILE.html|URL``: run a web page's tclets, as the Tcl browser plugin did.

Operator side. Every ``<embed src=...>`` of the page is a tclet; its ``src`` is resolved against
the page's URL (a local page's is the ``file:`` URL of its real path), and every attribute of
the tag reaches the tclet in ``embed_args``, names lower-cased. A ``file:`` script is read here
and runs with its ``file:`` URL as origin; an ``http(s)`` one is fetched by the host
(:meth:`tcletd.host.host.Host.prepare`), which makes the URL it came from its origin. A web
page may not embed a local file: its author would choose what runs with a local origin.

All the tclets run at once, on an embedded host (asyncio) or, with ``--host``, on a resident
one (one attached ``run`` connection each, multiplexed with ``select`` in this thread, standard
library only). Their output is ours, each line prefixed ``NAME | `` (the tag's ``name``, else
its ``src``), as ``docker compose up`` does. The exit status is the first non-zero one in page
order, else 0. SIGINT and SIGTERM end them all; the handlers only enqueue (or wake ``select``).

The page and the tags' attributes are untrusted: they choose only scripts, names and embed
arguments, which go through the same checks as a ``tcletd run``'s.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit
from urllib.request import url2pathname

from tcletd.cli.client import SignalPipe, connect, is_url, read_script
from tcletd.shared.control import (
    MAX_OUTPUT_CHUNK,
    MAX_SCRIPT,
    FrameReader,
    encode,
    run_header,
)
from tcletd.shared.errors import EXIT_OK, EXIT_SOFTWARE, EXIT_UNAVAILABLE, ScriptNotFound
from tcletd.shared.states import signal_ending
from tcletd.shared.streams import write_own

if TYPE_CHECKING:
    import argparse
    import asyncio

    from tcletd.api import Host, Tclet

MAX_PAGE = 16 * 1024 * 1024
MAX_NAME = 64  # characters of a tclet's name in its prefix
MAX_SHOWN = 300  # characters of a src in a message
MAX_PARTIAL = 1 << 16  # a line longer than this is written in pieces, each with its prefix
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Embed:
    """One tclet of the page: its output prefix, and its launch request's fields."""

    name: str
    fields: dict[str, Any]


class _EmbedTags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "embed":
            return
        fields: dict[str, str] = {}
        for key, value in attrs:  # html.parser lower-cases names; the first of a name counts
            fields.setdefault(key.lower(), value or "")
        if fields.get("src", "").strip():
            self.found.append(fields)


def load_page(page: str) -> tuple[str, str]:
    """The page's text and its URL: fetched by the host's rules, or read from a file."""
    if is_url(page):
        from tcletd.host.fetch import fetch_blocking  # the same rules as the host's fetches

        fetched = fetch_blocking(page)
        return fetched.text, fetched.url
    path = os.path.realpath(page)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PAGE + 1)
    except FileNotFoundError:
        raise ScriptNotFound(f"{page}: no such file") from None
    except OSError as exc:
        raise ScriptNotFound(f"{page}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PAGE:
        raise ScriptNotFound(f"{page}: larger than {MAX_PAGE} bytes")
    try:
        return data.decode("utf-8-sig"), "file://" + quote(path)
    except UnicodeDecodeError as exc:
        raise ScriptNotFound(f"{page}: not UTF-8 (byte {exc.start})") from None


def embeds(page: str, text: str, page_url: str, args: Any) -> list[Embed]:
    """The page's tclets, in page order; raises ScriptNotFound naming the page and the tag."""
    tags = _EmbedTags()
    tags.feed(text)
    tags.close()
    if not tags.found:
        raise ScriptNotFound(f"{page}: no <embed src=...> tclets")
    found: list[Embed] = []
    for attrs in tags.found:
        src = attrs["src"]
        target = urljoin(page_url, src.strip()).partition("#")[0]
        fields: dict[str, Any] = {
            "policy": args.policy,
            "argv": [],
            "embed_args": attrs,
            "limits": list(args.limit),
        }
        fields.update(_script(page, src, target, page_url))
        found.append(Embed(_printable(attrs.get("name") or src), fields))
    return found


def _script(page: str, src: str, target: str, page_url: str) -> dict[str, Any]:
    """The fields naming an embed's script: its text and origin, or the URL the host fetches."""
    parts = urlsplit(target)
    where = f"{page}: <embed src={_printable(src, MAX_SHOWN)!r}>"
    if parts.scheme.lower() in ("http", "https"):
        return {"script": "", "script_name": target, "origin": None, "url": target}
    if parts.scheme.lower() != "file":
        raise ScriptNotFound(f"{where}: expected a file or an http:// or https:// URL")
    if not page_url.startswith("file:"):
        raise ScriptNotFound(
            f"{where}: a web page may not embed a local file ({_printable(target, MAX_SHOWN)})"
        )
    if parts.netloc not in ("", "localhost"):
        raise ScriptNotFound(
            f"{where}: a file on another machine ({_printable(target, MAX_SHOWN)})"
        )
    path = url2pathname(parts.path)
    script, _ = read_script(path)
    return {"script": script, "script_name": path, "origin": target, "url": None}


def _printable(text: str, limit: int = MAX_NAME) -> str:
    """``text`` (the page's) fit for a line of ours: printable, at most ``limit`` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class Lines:
    """One tclet's stream, line-buffered, each line prefixed with its name."""

    def __init__(self, name: str, write: Callable[[bytes], None]) -> None:
        self._prefix = f"{name} | ".encode()
        self._write = write
        self._partial = b""

    def feed(self, data: bytes) -> None:
        self._partial += data
        head, newline, rest = self._partial.rpartition(b"\n")
        if len(rest) > MAX_PARTIAL:  # a tclet that never ends its line costs no more than this
            head, newline, rest = self._partial, b"\n", b""
        if newline:
            self._partial = rest
            self._write(b"".join(self._prefix + line + b"\n" for line in head.split(b"\n")))

    def flush(self) -> None:
        """The partial last line, if any, ended."""
        if self._partial:
            partial, self._partial = self._partial, b""
            self._write(self._prefix + partial + b"\n")

    def note(self, text: str) -> None:
        """A line of our own (``tcletd: ...``) in this tclet's stream."""
        self.flush()
        self._write(self._prefix + text.encode() + b"\n")


def run(args: argparse.Namespace) -> int:
    """``tcletd page``: the page's tclets to their end; the first non-zero status, else 0."""
    text, page_url = load_page(args.page)
    found = embeds(args.page, text, page_url, args)
    if args.host:
        return on_resident(found, args.host)
    return embedded(found, args)


def first_failure(statuses: list[int]) -> int:
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


# ---- on a resident host -----------------------------------------------------------------------


class _Attached:
    """One tclet's run connection to the resident host, and what it has said so far."""

    def __init__(self, embed: Embed, sock: _socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(MAX_OUTPUT_CHUNK)
        self.streams = {
            "stdout": Lines(embed.name, self._writer("stdout")),
            "stderr": Lines(embed.name, self._writer("stderr")),
        }
        self.status: int | None = None

    def _writer(self, stream: str) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            try:
                write_own(stream, data)
            except BrokenPipeError:  # our reader left: the tclet's writes fail, as in tclsh
                self.send({"op": "drop", "stream": stream})

        return write

    def send(self, header: dict[str, Any]) -> None:
        # The host may have hung up: what it said last is still to be read.
        with contextlib.suppress(OSError):
            self.sock.sendall(encode(header))

    def take(self, data: bytes) -> None:
        """Act on the host's bytes; ``b""``: it hung up."""
        if not data:
            self.end(EXIT_UNAVAILABLE, "tcletd: the tcletd host closed the connection")
            return
        for header, payload in self.reader.feed(data):
            event = header.get("event")
            if event in self.streams:
                self.streams[event].feed(payload)
            elif event == "exit":
                why = f"tcletd: tclet ended: {header.get('reason')}"
                self.end(_status(header), why if header.get("by_host") else "")
            elif event == "error":
                self.end(_status(header), f"tcletd: {header.get('message')}")
            if self.status is not None:
                return

    def end(self, status: int, note: str = "") -> None:
        self.streams["stdout"].flush()
        if note:
            self.streams["stderr"].note(note)
        self.streams["stderr"].flush()
        self.status = status
        self.sock.close()


def _status(header: dict[str, Any]) -> int:
    status = header.get("status")
    return status if isinstance(status, int) else EXIT_SOFTWARE


def on_resident(found: list[Embed], host: str) -> int:
    """Each tclet on its own attached connection to ``host``; our signals are passed on."""
    attached: list[_Attached] = []
    try:
        for embed in found:
            data = embed.fields["script"].encode()
            if len(data) > MAX_SCRIPT:
                raise ScriptNotFound(
                    f"{embed.fields['script_name']}: larger than {MAX_SCRIPT} bytes"
                )
            sock = connect(host)  # our hello said
            attached.append(_Attached(embed, sock))
            # A host that refuses says why before it hangs up: read that, in _follow.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(encode(run_header(embed.fields), data))
        return _follow(attached)
    finally:
        for one in attached:
            one.sock.close()


def _follow(attached: list[_Attached]) -> int:
    with SignalPipe(ENDING) as wake_r:
        while live := [one for one in attached if one.status is None]:
            by_fd = {one.sock.fileno(): one for one in live}
            ready, _, _ = select.select([*by_fd, wake_r], [], [])
            if wake_r in ready:
                for signum in os.read(wake_r, 64):  # the host ends each one as for its client
                    for one in live:
                        one.send({"op": "signal", "signum": signum})
            for fd in ready:
                if fd in by_fd:
                    try:
                        data = by_fd[fd].sock.recv(262144)
                    except OSError:
                        data = b""
                    by_fd[fd].take(data)
    return first_failure([one.status for one in attached if one.status is not None])


# ---- on an embedded host ----------------------------------------------------------------------


def embedded(found: list[Embed], args: argparse.Namespace) -> int:
    """All the tclets on one embedded host, in this process."""
    from tcletd.host import factory
    from tcletd.shared import cpus

    factory.start()  # first: its start overlaps the imports below (as in tcletd run)
    cpus.keep_off_lowest()
    from tcletd.cli.runner import _cgroups_wanted, _check_limits, _run_first

    _check_limits(args.policy, args.limit)
    import asyncio

    from tcletd.api import Host

    async def main() -> int:
        async with Host(cgroups=_cgroups_wanted()) as host:
            _run_first()
            return await _Page(host, asyncio.get_running_loop()).run(found)

    return asyncio.run(main())


class _Page:
    """The embedded run: one task per tclet (fetch, launch, wait), and one taking signals."""

    def __init__(self, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        from tcletd.shared.streams import OwnWriter

        self._host = host
        self._loop = loop
        self._own = {name: OwnWriter(name, loop) for name in ("stdout", "stderr")}
        self._tclets: list[Tclet] = []
        self._launched: set[int] = set()  # indexes, in page order, of the tclets launched
        self._ending: int | None = None

    async def run(self, found: list[Embed]) -> int:
        import asyncio

        signals: asyncio.Queue[int] = asyncio.Queue()
        from tcletd.cli.runner import enqueue_signals

        taken = enqueue_signals(self._loop, signals, ENDING)
        tasks = [self._loop.create_task(self._one(i, embed)) for i, embed in enumerate(found)]
        taker = self._loop.create_task(self._take_signals(signals, tasks))
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            taker.cancel()
            for signum in taken:
                self._loop.remove_signal_handler(signum)
        statuses = [self._outcome(result) for result in done]
        for own in self._own.values():
            await own.drain(5.0)
            own.close()
        return first_failure(statuses)

    def _outcome(self, result: int | BaseException) -> int:
        if isinstance(result, int):
            return result
        if self._ending is not None:  # cancelled by a signal before it was launched
            return signal_ending(self._ending)[1]
        raise result

    async def _take_signals(self, signals: asyncio.Queue[int], tasks: list[Any]) -> None:
        import asyncio

        while True:
            signum = await signals.get()
            self._ending = signum
            for index, task in enumerate(tasks):
                if index not in self._launched:  # still fetching: it never starts
                    task.cancel()
            await asyncio.gather(*(t.end(*signal_ending(signum)) for t in self._tclets))

    async def _one(self, index: int, embed: Embed) -> int:
        from tcletd.shared.errors import TcletdError
        from tcletd.shared.launch import LaunchRequest

        out = Lines(embed.name, self._own["stdout"].write)
        err = Lines(embed.name, self._own["stderr"].write)
        try:
            request = await self._host.prepare(LaunchRequest(**embed.fields))
            if self._ending is not None:  # a signal came as the fetch ended
                return signal_ending(self._ending)[1]
            tclet = self._host.launch_request(request, on_stdout=out.feed, on_stderr=err.feed)
        except TcletdError as exc:
            err.note(f"tcletd: {exc}")
            return exc.exit_status
        self._tclets.append(tclet)
        self._launched.add(index)
        for own in self._own.values():  # a stalled reader of ours holds the tclet's output
            own.watch(tclet.output)
        tclet.output.unhold_at_end = True
        result = await tclet.wait()
        out.flush()
        if result.by_host:
            err.note(f"tcletd: tclet ended: {result.reason}")
        err.flush()
        return result.status
