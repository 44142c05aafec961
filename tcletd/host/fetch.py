"""Fetching a tclet's script from an ``http://`` or ``https://`` URL, the plugin's way.

Host side of the trust boundary: the URL comes from a client (or a web page) and the server and
every byte it sends are untrusted. The rules: only http and https, at most ``max_bytes`` read
(1 MiB), the whole fetch within ``timeout`` seconds (10), at most ``max_redirects`` redirects
(5), never from https down to http, certificates verified (the default SSL context, so
``SSL_CERT_FILE`` may name the CAs), a 2xx status, a UTF-8 body. No proxy is used: the host
fetches directly, as the origin the tclet gets is the server it fetched from. Every failure is
a one-line :class:`FetchFailed`, ``fetch URL: CAUSE``.

:func:`fetch_blocking` is the standard library's urllib, blocking, for the CLI (``tcletd page``
fetches its page with it); :func:`fetch_script` runs it in a daemon thread for the host's
loop, at most :data:`CONCURRENT` at once per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from tcletd.shared.errors import EXIT_NO_INPUT, TcletdError
from tcletd.shared.launch import url_problem

MAX_BYTES = 1 << 20
TIMEOUT = 10.0
MAX_REDIRECTS = 5
CONCURRENT = 8  # fetches at once per loop: each holds a thread and a connection
READ_CHUNK = 1 << 16
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHOWN = 300  # characters of a URL a message shows


class FetchFailed(TcletdError):
    """A script that could not be fetched; the message names the URL and the cause."""

    exit_status = EXIT_NO_INPUT


@dataclass(frozen=True)
class Fetched:
    """A fetched script: its text, and the URL it came from after redirects (its origin)."""

    text: str
    url: str


def show(url: str) -> str:
    """``url`` fit for a one-line message: control characters escaped, at most 300 shown."""
    text = url.encode("unicode_escape").decode("ascii") if not url.isprintable() else url
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def size_text(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as responses: :func:`fetch_blocking` checks and counts each hop."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# Loading the CAs costs milliseconds: one context per SSL_CERT_FILE and SSL_CERT_DIR seen.
_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


def _opener() -> urllib.request.OpenerDirector:
    where = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if where not in _contexts:
        _contexts[where] = ssl.create_default_context()
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirects(),
        urllib.request.HTTPSHandler(context=_contexts[where]),
    )


def fetch_blocking(
    url: str,
    *,
    max_bytes: int = MAX_BYTES,
    timeout: float = TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
) -> Fetched:
    """Fetch ``url`` by the rules above, blocking at most about ``timeout`` seconds (each socket
    operation gets what is left of it); raises :class:`FetchFailed`."""
    deadline = time.monotonic() + timeout
    try:
        return _fetch(url, max_bytes, deadline, max_redirects)
    except _Cause as cause:
        raise FetchFailed(f"fetch {show(url)}: {cause}") from None


class _Cause(Exception):
    """Why a fetch failed, worded for after ``fetch URL: ``."""


def _fetch(url: str, max_bytes: int, deadline: float, max_redirects: int) -> Fetched:
    problem = url_problem(url)
    if problem is not None:
        raise _Cause(problem)
    opener = _opener()
    at = url
    for _hop in range(max_redirects + 1):
        with _open(opener, at, deadline) as response:
            status = response.status
            if status in _REDIRECTS:
                at = _next_hop(at, response.headers.get("Location"), status)
                continue
            where = "" if at == url else f" from {show(at)}"
            if not 200 <= status < 300:
                raise _Cause(f"HTTP {status} {_reason(response)}{where}")
            body = _read(response, max_bytes, deadline, where)
        try:
            return Fetched(body.decode("utf-8-sig"), at)
        except UnicodeDecodeError as exc:
            raise _Cause(f"not UTF-8 (byte {exc.start}){where}") from None
    raise _Cause(f"more than {max_redirects} redirects (the last to {show(at)})")


def _next_hop(at: str, location: str | None, status: int) -> str:
    if not location:
        raise _Cause(f"HTTP {status} redirect without a Location from {show(at)}")
    target = urljoin(at, location.strip())
    problem = url_problem(target)
    if problem is not None:
        raise _Cause(f"redirect from {show(at)}: {problem}")
    if urlsplit(at).scheme.lower() == "https" and urlsplit(target).scheme.lower() == "http":
        raise _Cause(f"refused a redirect from {show(at)} down to {show(target)} (https to http)")
    return target


def _open(
    opener: urllib.request.OpenerDirector, url: str, deadline: float
) -> http.client.HTTPResponse:
    """The response (a redirect or an error status included) to a GET of ``url``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Cause("no complete answer in time")
    # url_problem passed it: http or https only.
    request = urllib.request.Request(url, headers={"User-Agent": "tcletd", "Accept": "*/*"})  # noqa: S310
    try:
        response = opener.open(request, timeout=left)
    except urllib.error.HTTPError as exc:  # a status other than 2xx: a response all the same
        return exc  # type: ignore[return-value]  # HTTPError is the response
    except urllib.error.URLError as exc:
        raise _Cause(_why(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _Cause(_why(exc)) from None
    assert isinstance(response, http.client.HTTPResponse)
    return response


def _why(reason: object) -> str:
    if isinstance(reason, TimeoutError | socket.timeout):
        return "no complete answer in time"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {reason.verify_message}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return " ".join(str(reason).split()) or type(reason).__name__


def _reason(response: http.client.HTTPResponse) -> str:
    text = getattr(response, "reason", "") or ""
    return show(" ".join(str(text).split()))[:80]


def _read(response: http.client.HTTPResponse, max_bytes: int, deadline: float, where: str) -> bytes:
    """The body, at most ``max_bytes`` of it: one byte more is read to tell it was larger."""
    too_large = _Cause(f"larger than {size_text(max_bytes)}{where}")
    length = response.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise too_large
    body = bytearray()
    try:
        while len(body) <= max_bytes:
            if time.monotonic() > deadline:  # a server sending a byte at a time
                raise _Cause(f"no complete answer in time{where}")
            chunk = response.read1(min(READ_CHUNK, max_bytes + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
    except (OSError, http.client.HTTPException) as exc:
        raise _Cause(f"{_why(exc)}{where}") from None
    raise too_large


# ---- the host's loop --------------------------------------------------------------------------

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
_slots = weakref.WeakKeyDictionary()


async def fetch_script(
    url: str,
    *,
    max_bytes: int = MAX_BYTES,
    timeout: float = TIMEOUT,
    max_redirects: int = MAX_REDIRECTS,
) -> Fetched:
    """Fetch ``url`` by the rules above without blocking the loop; raises :class:`FetchFailed`.

    The timeout covers the wait for a free slot too. The fetch runs in a daemon thread, so that
    a fetch abandoned at the timeout (or at a cancellation) delays neither the loop nor the
    process's exit; it keeps its slot until it ends, which its own deadline ensures."""

    def call() -> Fetched:
        return fetch_blocking(
            url, max_bytes=max_bytes, timeout=timeout, max_redirects=max_redirects
        )

    try:
        return await asyncio.wait_for(_in_thread(call), timeout)
    except TimeoutError:
        raise FetchFailed(f"fetch {show(url)}: no complete answer in time") from None


async def _in_thread(call: Callable[[], Fetched]) -> Fetched:
    loop = asyncio.get_running_loop()
    slots = _slots.setdefault(loop, asyncio.Semaphore(CONCURRENT))
    await slots.acquire()
    future: asyncio.Future[Fetched] = loop.create_future()

    def settle(result: Fetched | None, error: BaseException | None) -> None:
        slots.release()
        if future.done():  # abandoned: timed out or cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def work() -> None:
        try:
            outcome: tuple[Fetched | None, BaseException | None] = (call(), None)
        except BaseException as exc:  # handed to the loop, which raises it
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    try:
        threading.Thread(target=work, name="tcletd-fetch", daemon=True).start()
    except BaseException:
        slots.release()
        raise
    return await future
