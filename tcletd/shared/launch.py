"""The launch request: one tclet to start, as the API, the CLI and the control wire describe it.

:class:`tcletd.host.host.Host` starts tclets from it; the CLI's embedded run builds one from its
arguments, and the resident host's control server decodes one from a client's run frame with
:func:`decode_run`. A client of the resident host does not import this module (msgspec, with
the typing module it needs, would add 25-40 ms to a ~100 ms run): it sends the same fields as a
plain dict, named by :data:`tcletd.shared.control.RUN_FIELDS`.

Host side of the trust boundary for :func:`decode_run`: a run frame comes from the operator's
local client and is hostile until it returns a request. A bad field is a :class:`RequestInvalid`
naming it, and nothing is launched. A request built in Python (the API, the CLI) is trusted to
be as typed: msgspec checks types when it decodes, not when a Struct is constructed.
"""

from __future__ import annotations

import typing
from urllib.parse import urlsplit

import msgspec

# Host side only (the worker never imports this module, the client neither): the one origin
# check, so that a run frame's origin is refused as the CLI and the API refuse it.
from tcletd.policy.addresses import origin_problem
from tcletd.shared.errors import EXIT_USAGE, TcletdError

DEFAULT_SCRIPT_NAME = "tclet.tcl"
MAX_URL = 4096


class LaunchRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One tclet to start: its script, the name it runs under (its argv0), its ``policy`` (a
    policy's name; or a TOML file's path, from the operator's own API or CLI only: a run frame
    may not carry one; None: the host's default, which the tclet may ask to change), its
    ``origin`` URL (None: no origin), its ``argv``, its ``embed_args``, and ``limits``:
    ``NAME=VALUE`` overrides of the policy's quotas and limits. ``url``: an ``http(s)`` URL the
    host fetches the script from (:meth:`tcletd.host.host.Host.prepare`; ``script`` is then
    empty), whose final URL is the origin unless ``origin`` is given."""

    script: str
    script_name: str = DEFAULT_SCRIPT_NAME
    policy: str | None = None
    origin: str | None = None
    argv: list[str] = []
    embed_args: dict[str, str] = {}
    limits: list[str] = []
    url: str | None = None


class RequestInvalid(TcletdError):
    """A control request with a missing or ill-typed field."""

    exit_status = EXIT_USAGE


def decode_run(header: dict[str, object], payload: bytes) -> LaunchRequest:
    """The request a run frame carries; raises RequestInvalid naming the first bad field.

    The header's other keys (``op``, ``size``: framing; anything else a client adds) are not
    request fields and are ignored; a ``script`` key in it too, since the payload is the script.
    """
    try:
        script = payload.decode()
    except UnicodeDecodeError as exc:
        raise RequestInvalid(f"run request: script: not UTF-8 ({exc.reason})") from None
    fields = {**header, "script": script}
    try:
        request = msgspec.convert(fields, LaunchRequest)
    except msgspec.ValidationError:
        raise RequestInvalid(f"run request: {_first_invalid(fields)}") from None
    if request.url is not None:
        problem = url_problem(request.url)
        if problem is not None:
            raise RequestInvalid(f"run request: url: {problem}")
        if payload:
            raise RequestInvalid(
                f"run request: url: the host fetches the script, so the frame carries none"
                f" (got {len(payload)} bytes of payload)"
            )
    if request.origin is not None and (problem := origin_problem(request.origin)) is not None:
        raise RequestInvalid(f"run request: origin: {problem}")
    policy = request.policy
    if policy is not None and ("/" in policy or policy.endswith(".toml")):
        # A path would have the host open a file its client chose (a FIFO froze its loop).
        raise RequestInvalid(
            "run request: policy: expected the name of a policy the host knows (shipped or in"
            f" its policy directory), not a path: {policy[:200]!r}"
        )
    return request


def url_problem(url: str) -> str | None:
    """What makes ``url`` no URL to fetch a script from (an ``http://`` or ``https://`` URL with
    a host, no user info, at most ``MAX_URL`` characters), or None."""
    if len(url) > MAX_URL:
        return f"expected a URL of at most {MAX_URL} characters, not {len(url)}"
    if not url.isprintable() or any(c.isspace() for c in url):
        return f"expected a URL without spaces or control characters: {url[:200]!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        return f"not a valid URL: {url[:200]!r}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"expected an http:// or https:// URL, not {url[:200]!r}"
    if not parts.hostname:
        return f"expected a URL with a host: {url[:200]!r}"
    if "@" in parts.netloc:
        return f"expected a URL without user info: {url[:200]!r}"
    return None


def _first_invalid(fields: dict[str, object]) -> str:
    """The first field (in LaunchRequest's order) msgspec refuses, and what it expected there.

    Checked again one field at a time so that the message names the field from the Struct itself
    rather than from the wording of msgspec's own messages.
    """
    for info in msgspec.structs.fields(LaunchRequest):
        if info.name not in fields:
            continue
        value = fields[info.name]
        try:
            msgspec.convert(value, info.type)
        except msgspec.ValidationError:
            return f"{info.name}: {_expected(info.type, value)}"
    return "invalid"  # not reached: a refused request has a refused field


def _expected(kind: object, value: object) -> str:
    # Every field is a string (or None), or a list or a dict of strings.
    container = typing.get_origin(kind)
    if container is list:
        return "expected a list of strings" if isinstance(value, list) else "expected list"
    if container is dict:
        return "expected string values" if isinstance(value, dict) else "expected dict"
    return "expected str"
