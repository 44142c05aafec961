"""The resident host's thin client (``tcletd run --host``, ``tcletd status``).

Operator side, outside the host: this is the CLI talking to a resident host (``tcletd serve``,
whose end is :mod:`tcletd.host.control`) over the control wire (:mod:`tcletd.shared.control`).
It imports only the standard library's C socket layer (``_socket``, not ``socket``, whose enums
and selectors cost a client 2.5-3 ms), so a run through a resident host costs a Python start,
not the host's imports (asyncio, pyzmq and msgspec take ~250 ms on these machines). For that
reason its run request is a plain dict of the launch request's fields
(:data:`~tcletd.shared.control.RUN_FIELDS`), not a :class:`~tcletd.shared.launch.LaunchRequest`.
"""

from __future__ import annotations

import _socket
import os
import select
import signal
import sys

from tcletd.cli import ENV_HOST as ENV_HOST
from tcletd.shared.control import (
    MAX_OUTPUT_CHUNK,
    MAX_SCRIPT,
    FrameReader,
    encode,
    hello,
    run_header,
)
from tcletd.shared.errors import (
    EXIT_OK,
    EXIT_SOFTWARE,
    EXIT_UNAVAILABLE,
    ScriptNotFound,
    TcletdError,
)
from tcletd.shared.streams import write_own

# Signals a client passes on to its tclet: the tclet ends as it would under an embedded host.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)

# Not typing.TYPE_CHECKING: importing typing, pathlib and friends costs a client ~15 ms here
# (mypy takes any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path
    from types import TracebackType
    from typing import Any

    Frame = tuple[dict[str, Any], bytes]


class HostUnreachable(TcletdError):
    exit_status = EXIT_UNAVAILABLE


def default_socket() -> str:
    """``$TCLETD_HOST``, else ``tcletd-UID/control.sock`` in the runtime (or temp) directory."""
    if os.environ.get(ENV_HOST):
        return os.environ[ENV_HOST]
    # The host refuses a directory others could swap the socket in (control_path.claim).
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"  # noqa: S108
    return os.path.join(base, f"tcletd-{os.getuid()}", "control.sock")


def connect(path: str | Path) -> _socket.socket:
    """A connection to the host at ``path``, our hello sent (the host's greeting is read with
    the replies, and skipped: a host of another version refuses the hello with an error). The
    caller closes it (``_socket``'s socket is no context manager)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        sock.sendall(hello())
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise HostUnreachable(f"cannot reach a tcletd host at {path}: {reason}") from None
    return sock


def read_script(name: str) -> tuple[str, str]:
    """The script's text and its name as the tclet's argv0 (``-``: standard input)."""
    if name == "-":
        return sys.stdin.read(), "-"
    try:
        with open(name, encoding="utf-8") as file:
            return file.read(), name
    except FileNotFoundError:
        raise ScriptNotFound(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptNotFound(f"{name}: cannot read: {exc}") from None


def default_origin(script_name: str) -> str:
    """A script read from a file has that file's URL as its origin, one from standard input the
    current directory's, as the API gives it (home: localhost only; see
    :func:`tcletd.shared.origins.default_origin`)."""
    from tcletd.shared.origins import default_origin as shared  # urllib: only when needed

    return shared(None if script_name == "-" else script_name)


def status_line(entry: dict[str, Any]) -> str:
    """One tclet's status for people (SIGUSR1, ``tcletd status``)."""
    from tcletd.policy.quantities import format_size

    def size(key: str) -> str:
        value = entry.get(key)
        return format_size(value) if isinstance(value, int) else "?"

    return (
        f"tcletd: tclet {entry.get('id')} pid {entry.get('pid')}"
        f" policy {entry.get('policy')} state {entry.get('state')}"
        f" sockets {entry.get('sockets')} sent {size('bytes_sent')}"
        f" received {size('bytes_received')} cpu {entry.get('cpu')} s rss {size('rss')}"
        f" age {entry.get('age')} s"
    )


def _frames(sock: _socket.socket, reader: FrameReader) -> Iterator[Frame]:
    while data := sock.recv(262144):
        yield from reader.feed(data)


def run(args: Any, host: str | Path) -> int:
    """``tcletd run --host``: the tclet runs on a resident host; its output and status are ours."""
    if args.audit is not None:
        from tcletd.shared.errors import ConfigError

        raise ConfigError("--audit: a resident host writes its own audit (tcletd serve --audit)")
    frame = request_frame(args, "run")
    sock = connect(host)
    try:
        sock.sendall(frame)
        return _follow(sock, getattr(args, "id_file", None))
    finally:
        sock.close()


def request_frame(args: Any, op: str) -> bytes:
    """The run or launch frame ``tcletd run``'s (or ``launch``'s) arguments ask for."""
    if is_url(args.script):  # the host fetches it (Host.prepare): no payload
        data, request = b"", launch_fields(args, "", args.script, url=args.script)
    else:
        script, script_name = read_script(args.script)
        data = script.encode()
        if len(data) > MAX_SCRIPT:
            raise ScriptNotFound(f"{script_name}: larger than {MAX_SCRIPT} bytes")
        request = launch_fields(args, script, script_name)
    return encode(run_header(request, op), data)


def is_url(script: str) -> bool:
    """Whether ``tcletd run``'s SCRIPT is a URL for the host to fetch rather than a file."""
    return script[:8].lower().startswith(("http://", "https://"))


def launch_fields(
    args: Any, script: str, script_name: str, *, url: str | None = None
) -> dict[str, Any]:
    """The launch request ``tcletd run``'s arguments ask for, as LaunchRequest's fields (a plain
    dict: the embedded run converts it, a client sends it). With ``url`` the host fetches the
    script, and its origin is the URL it came from (after redirects) unless ``--origin``."""
    origin = args.origin
    if origin is None and url is None:
        origin = default_origin(script_name)
    return {
        "script": script,
        "script_name": script_name,
        "policy": args.policy,
        "origin": origin,
        "argv": list(args.args),
        "embed_args": embed_args(args.arg),
        "limits": list(args.limit),
        "url": url,
    }


def embed_args(pairs: list[str]) -> dict[str, str]:
    from tcletd.shared.errors import ConfigError

    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--arg {pair!r}: expected NAME=VALUE")
        out[name.lower()] = value
    return out


class SignalPipe:
    """``with SignalPipe(signals) as wake_r``: a pipe's read end that carries each of
    ``signals`` we get, one byte per signal (the handlers only wake the loop that passes them
    on). A signal ignored when we started stays ignored (nohup's SIGHUP): it is not the
    tclet's. A class, not ``contextlib.contextmanager``: importing contextlib cost a client
    ~0.5 ms."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)

    def __enter__(self) -> int:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        taken = [s for s in self.signals if signal.getsignal(s) is not signal.SIG_IGN]
        self.previous = {signum: signal.signal(signum, lambda *_: None) for signum in taken}
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w)
        return self.wake_r

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        signal.set_wakeup_fd(self.old_wakeup)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        os.close(self.wake_r)
        os.close(self.wake_w)


def _follow(sock: _socket.socket, id_file: str | None = None) -> int:
    """Relay the host's frames until the tclet's exit; forward our signals to the host; write
    the tclet's id to ``id_file`` when it starts."""
    reader = FrameReader(MAX_OUTPUT_CHUNK)
    with SignalPipe(FORWARDED) as wake_r:
        while True:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in ready:
                for signum in os.read(wake_r, 64):
                    sock.sendall(encode({"op": "signal", "signum": signum}))
            if sock.fileno() in ready:
                data = sock.recv(262144)
                if not data:
                    raise HostUnreachable("the tcletd host closed the connection")
                for header, payload in reader.feed(data):
                    if header.get("event") == "started" and id_file is not None:
                        write_id(id_file, header.get("id"))
                    status = _take(header, payload, sock)
                    if status is not None:
                        return status


def write_id(path: str, tclet_id: object) -> None:
    """``--id-file``: the tclet's id and a newline, for scripts that name it later (``tcletd
    logs``, ``ps``), as ``docker run --cidfile`` does."""
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(f"{tclet_id}\n")
    except OSError as exc:  # the tclet runs on; the operator learns the file is missing
        print(f"tcletd: --id-file {path}: {exc.strerror or exc}", file=sys.stderr, flush=True)


def _take(header: dict[str, Any], payload: bytes, sock: _socket.socket) -> int | None:
    """Act on one frame from the host; the exit status once the run is over."""
    event = header.get("event")
    if event in ("stdout", "stderr"):
        try:
            write_own(event, payload)
        except BrokenPipeError:  # the host stops relaying it: the tclet's writes fail, as in tclsh
            sock.sendall(encode({"op": "drop", "stream": event}))
    elif event == "status":
        for entry in header.get("tclets", []):
            print(status_line(entry), file=sys.stderr, flush=True)
    elif event == "exit":
        if header.get("by_host"):
            print(f"tcletd: tclet ended: {header.get('reason')}", file=sys.stderr, flush=True)
        return int(header.get("status", EXIT_SOFTWARE))
    elif event == "error":
        print(f"tcletd: {header.get('message')}", file=sys.stderr, flush=True)
        return int(header.get("status", EXIT_SOFTWARE))
    return None


def status(host: str | Path) -> int:
    """``tcletd status``: one line per tclet running on a resident host."""
    sock = connect(host)
    try:
        sock.sendall(encode({"op": "status"}))
        count = 0
        for header, _ in _frames(sock, FrameReader(0)):
            if header.get("event") == "hello":
                continue
            if header.get("event") == "error":
                return _take(header, b"", sock) or EXIT_SOFTWARE
            tclets = header.get("tclets", [])
            for entry in tclets:
                print(status_line(entry).removeprefix("tcletd: "))
            count += len(tclets)
            if header.get("more") is True:
                continue  # a long listing comes in several frames
            print(f"{count} tclet(s) running on {host}", file=sys.stderr)
            return EXIT_OK
    finally:
        sock.close()
    raise HostUnreachable("the tcletd host closed the connection")
