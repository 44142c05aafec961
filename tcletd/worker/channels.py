"""Descriptors to Tcl channels, in the worker.

A descriptor the host granted becomes a **native** Tcl socket channel: ``Tcl_MakeTcpClientChannel``
reached with ctypes on the very ``libtcl`` that ``_tkinter`` loaded (found in ``/proc/self/maps``),
registered straight in the interpreter that gets it (the tclet's, found from the master
``tk.interpaddr()`` with ``Tcl_GetSlave``), so every channel behaviour is Tcl's own. Where that C
API cannot be reached, a reflected channel (``chan create``) over the same descriptor stands in,
moved with ``interp transfer``; :meth:`ChannelFactory.describe` says which one is in use.

Closing: the runtime must learn when the tclet closed a granted socket (the host then drops
its duplicate). A native channel reports it through ``Tcl_CreateCloseHandler``; that callback
runs in the middle of Tcl's ``close``, where calling back into tkinter would corrupt its thread
state, so it only records the socket and wakes an ``eventfd`` that a tkinter file handler drains
at the next safe point (:class:`CloseQueue`).

A listening socket stays in the host; the tclet's server channel is a reflected read channel made
here (:meth:`ChannelFactory.make_server`) that answers ``close`` and ``fconfigure -sockname`` like
tclsh's server socket does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import termios
import tkinter
from collections.abc import Callable

__all__ = [
    "TCP_DRIVER_OPTIONS",
    "ChannelClosed",
    "ChannelFactory",
    "CloseQueue",
    "bad_option_message",
    "find_libtcl",
    "probe",
    "resolve_tcp_option",
]

# Tcl's generic channel options, in the order Tcl_BadChannelOption lists them.
GENERIC_OPTIONS = (
    "-blocking",
    "-buffering",
    "-buffersize",
    "-encoding",
    "-eofchar",
    "-translation",
)
# What a TCP channel's driver adds to the list in the "bad option" message (tclUnixSock.c).
TCP_DRIVER_OPTIONS = ("-connecting", "-peername", "-sockname")
# The order TcpGetOptionProc tries prefixes in (``-error`` works but is never listed).
_TCP_LOOKUP = ("-error", "-connecting", "-peername", "-sockname")

_TCL_CLOSE_PROC = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_BLOCKING = (0).to_bytes(4, "little")  # FIONBIO's int argument: 0, blocking


class ChannelClosed(tkinter.TclError):
    """The channel was made, then could not be moved into its interpreter: it is closed, and its
    close handler has reported it (the caller must not report it again)."""


def bad_option_message(name: str, options: tuple[str, ...] | list[str]) -> str:
    """Tcl_BadChannelOption's text: ``bad option "X": should be one of -a, -b, or -c``."""
    opts = list(options)
    if not opts:
        return f'bad option "{name}": should be one of '
    head = "".join(f"{o}, " for o in opts[:-1])
    return f'bad option "{name}": should be one of {head}or {opts[-1]}'


def resolve_tcp_option(name: str) -> str | None:
    """The TCP driver option ``name`` selects (Tcl accepts any prefix of two or more chars)."""
    if len(name) < 2:
        return None
    for opt in _TCP_LOOKUP:
        if opt.startswith(name):
            return opt
    return None


def find_libtcl() -> str:
    """Path of the libtcl mapped into this process (the one ``_tkinter`` uses), or ``""``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                base = os.path.basename(path)
                if base.startswith("libtcl") and ".so" in base:
                    return path
    except OSError:
        return ""
    return ""


class _TclApi:
    """The few Tcl C functions the worker calls through ctypes."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        self.make_tcp = lib.Tcl_MakeTcpClientChannel
        self.make_tcp.argtypes = [ctypes.c_void_p]
        self.make_tcp.restype = ctypes.c_void_p
        self.register = lib.Tcl_RegisterChannel
        self.register.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.register.restype = None
        self.get_name = lib.Tcl_GetChannelName
        self.get_name.argtypes = [ctypes.c_void_p]
        self.get_name.restype = ctypes.c_char_p
        self.close_handler = lib.Tcl_CreateCloseHandler
        self.close_handler.argtypes = [ctypes.c_void_p, _TCL_CLOSE_PROC, ctypes.c_void_p]
        self.close_handler.restype = None
        # A child interpreter by path (Tcl 8.7 renamed Tcl_GetSlave); None: transfer instead.
        child = getattr(lib, "Tcl_GetChild", None) or getattr(lib, "Tcl_GetSlave", None)
        if child is not None:
            child.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            child.restype = ctypes.c_void_p
        self.child = child
        version = lib.Tcl_GetVersion
        version.argtypes = [ctypes.POINTER(ctypes.c_int)] * 4
        version.restype = None
        major, minor, level, kind = (ctypes.c_int() for _ in range(4))
        version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(level), ctypes.byref(kind))
        self.version = (major.value, minor.value)


_bound: _TclApi | None = None


def _load_api(tk: tkinter.Tk) -> _TclApi:
    """Bind to the libtcl ``_tkinter`` loaded, checking it is the interpreter's version; once
    per process, and the zygote's binding serves every worker it forks (finding the library in
    /proc/self/maps and binding its functions cost a worker ~3 ms)."""
    global _bound
    if _bound is not None:
        return _bound
    path = find_libtcl()
    if not path:
        raise OSError("no libtcl shared library mapped (static Tcl?)")
    mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LOCAL", 0)
    api = _TclApi(ctypes.CDLL(path, mode=mode), path)
    want = tuple(int(x) for x in str(tk.call("info", "tclversion")).split("."))
    if api.version != want:
        raise OSError(f"{path} is Tcl {api.version}, the interpreter is Tcl {want}")
    _bound = api
    return api


def probe(tk: tkinter.Tk | None = None) -> tuple[str, str]:
    """``("native", libtcl path)`` or ``("reflected", why)``: what a worker here would use.

    For ``tcletd doctor`` and start-up logs; creates a throw-away interpreter when ``tk`` is None.
    """
    try:
        api = _load_api(tk if tk is not None else tkinter.Tcl())
    except (OSError, AttributeError, ValueError, tkinter.TclError) as exc:
        return ("reflected", f"Tcl C API unavailable: {exc}")
    return ("native", api.path)


class CloseQueue:
    """Socket ids whose channels Tcl closed, delivered to ``deliver`` outside Tcl's close.

    :meth:`push` is safe inside a ctypes callback (no tkinter); an ``eventfd`` registered with
    ``tk.createfilehandler`` makes the event loop call :meth:`drain` soon after. The runtime also
    drains at its own safe points (after the script, at the end).
    """

    def __init__(self, tk: tkinter.Tk, deliver: Callable[[int], None]) -> None:
        self._tk = tk
        self._deliver = deliver
        self._pending: list[int] = []
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._signalled = False
        self._registered = True
        tk.createfilehandler(self._fd, tkinter.READABLE, self._on_ready)

    def push(self, sock_id: int) -> None:
        self._pending.append(sock_id)
        # One wake-up until the loop takes it: a tclet closing sockets in a loop (the alias
        # drains at once) wrote the eventfd once per close, one system call per grant.
        if self._fd >= 0 and not self._signalled:
            self._signalled = True
            with contextlib.suppress(OSError):
                os.eventfd_write(self._fd, 1)

    def _on_ready(self, _fd: object, _mask: object) -> None:
        self._signalled = False
        with contextlib.suppress(OSError):
            os.eventfd_read(self._fd)
        self.drain()

    def drain(self) -> None:
        while self._pending:
            self._deliver(self._pending.pop(0))

    def close(self) -> None:
        if self._fd < 0:
            return
        if self._registered:
            with contextlib.suppress(Exception):
                self._tk.deletefilehandler(self._fd)
            self._registered = False
        os.close(self._fd)
        self._fd = -1


# Reflected channels. The handler procs live in the master (a reflected channel's handler always
# runs in the interpreter that created it) and forward to Python; Python answers (code, value) and
# the proc turns "eagain"/"error" into the Tcl errors the refchan protocol wants (a Python
# exception cannot carry a specific Tcl error).
_TCL_SETUP = r"""
namespace eval ::tcletd::chan {}
proc ::tcletd::chan::handler {kind id method args} {
    lassign [::tcletd::chan::py $kind $id $method {*}$args] code value
    if {$code eq "ok"} {
        return $value
    }
    if {$code eq "eagain"} {
        return -code error EAGAIN
    }
    return -code error $value
}
"""


class _Fallback:
    """One connected socket served through a reflected channel (when the C API is unusable)."""

    def __init__(self, sock: socket.socket, sock_id: int) -> None:
        self.sock = sock
        self.sock_id = sock_id
        self.name = ""
        self.watching: set[str] = set()
        self.handler_mask = 0


class _Server:
    def __init__(self, sock_id: int, sockname: list[list[str]]) -> None:
        self.sock_id = sock_id
        self.sockname = [part for triple in sockname for part in triple]


class ChannelFactory:
    """Makes the channels the runtime gives a tclet; all of them registered in the master first.

    ``on_close(sock_id)`` is called (outside any Tcl close, from a tkinter callback or a
    :meth:`drain`) once Tcl closed the channel of a granted socket or server socket.
    """

    def __init__(
        self,
        tk: tkinter.Tk,
        on_close: Callable[[int], None],
        *,
        native: bool = True,
    ) -> None:
        self._tk = tk
        self.closes = CloseQueue(tk, on_close)
        self._api: _TclApi | None = None
        self.reason = "reflected channels requested"
        if native:
            try:
                self._api = _load_api(tk)
            except (OSError, AttributeError, ValueError) as exc:
                self.reason = f"Tcl C API unavailable: {exc}"
        self._interp = ctypes.c_void_p(tk.interpaddr())
        # One callback object for every channel; clientData carries the socket id + 1 (never 0).
        self._close_cb = _TCL_CLOSE_PROC(self._native_closed)
        self._fallbacks: dict[str, _Fallback] = {}
        self._servers: dict[str, _Server] = {}
        self._next = 0
        tk.createcommand("::tcletd::chan::py", self._dispatch)
        tk.eval(_TCL_SETUP)

    # ---- what is in use --------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """``"native"`` or ``"reflected"``."""
        return "native" if self._api is not None else "reflected"

    def describe(self) -> str:
        """One line for ``tcletd doctor`` and the logs."""
        if self._api is not None:
            return f"native Tcl socket channels via {self._api.path}"
        return f"reflected channels (chan create) over the descriptor: {self.reason}"

    # ---- connected sockets -----------------------------------------------------------------------

    def make(self, fd: int, sock_id: int, into: str = "") -> str:
        """Wrap the connected (or connecting) socket ``fd``; returns its channel name in the
        interpreter ``into`` (a path from the master; "" is the master itself).

        ``fd`` must be close-on-exec already (the link receives descriptors with
        ``MSG_CMSG_CLOEXEC``; Python makes its own so). Tcl owns ``fd`` afterwards (also when
        this raises, ``fd`` is closed; a channel that could not reach ``into`` is closed and
        :class:`ChannelClosed` raised).
        """
        try:
            # A new Tcl channel is blocking; the fd must agree (one ioctl, not two fcntl).
            fcntl.ioctl(fd, termios.FIONBIO, _BLOCKING)
        except OSError:
            os.close(fd)
            raise
        api = self._api
        if api is None:
            return self._transfer(self._make_fallback(fd, sock_id), into)
        chan = api.make_tcp(fd)
        if not chan:
            os.close(fd)
            raise OSError(errno.EINVAL, "Tcl_MakeTcpClientChannel failed")
        # Registered straight in its interpreter: `interp transfer` from the master cost a
        # Tcl command and its argument conversions per grant, for the same end state.
        target = api.child(self._interp, into.encode()) if into and api.child else None
        api.register(target or self._interp, chan)
        name = (api.get_name(chan) or b"").decode("utf-8")
        api.close_handler(chan, self._close_cb, sock_id + 1)
        return name if target or not into else self._transfer(name, into)

    def _transfer(self, name: str, into: str) -> str:
        """Move the master's channel ``name`` into ``into`` (nothing for ""); closed if it fails
        (its close handler reports it)."""
        if into:
            try:
                self._tk.call("interp", "transfer", "", name, into)
            except tkinter.TclError as exc:
                with contextlib.suppress(tkinter.TclError):
                    self._tk.call("close", name)
                raise ChannelClosed(str(exc)) from None
        return name

    def _native_closed(self, client_data: int | None) -> None:
        # Inside Tcl_Close: no tkinter here, only record and wake the event loop.
        if client_data:
            self.closes.push(int(client_data) - 1)

    def _make_fallback(self, fd: int, sock_id: int) -> str:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            raise
        key = f"c{self._next}"
        self._next += 1
        entry = _Fallback(sock, sock_id)
        self._fallbacks[key] = entry
        try:
            name = str(
                self._tk.call(
                    "chan", "create", "read write", ("::tcletd::chan::handler", "conn", key)
                )
            )
        except tkinter.TclError:
            del self._fallbacks[key]
            sock.close()
            raise
        entry.name = name
        return name

    # ---- server sockets --------------------------------------------------------------------------

    def make_server(self, sock_id: int, sockname: list[list[str]]) -> str:
        """A server channel for the host's listening socket ``sock_id``, made in the master."""
        key = f"s{self._next}"
        self._next += 1
        self._servers[key] = _Server(sock_id, sockname)
        try:
            return str(
                self._tk.call("chan", "create", "read", ("::tcletd::chan::handler", "srv", key))
            )
        except tkinter.TclError:
            del self._servers[key]
            raise

    # ---- reflected channel handlers --------------------------------------------------------------

    def _dispatch(self, kind: str, key: str, method: str, *args: str) -> tuple[object, ...]:
        try:
            if kind == "srv":
                return self._server_method(key, method, args)
            return self._conn_method(key, method, args)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return ("eagain", "")
            return ("error", os.strerror(exc.errno).lower() if exc.errno else str(exc))

    def _server_method(self, key: str, method: str, args: tuple[str, ...]) -> tuple[object, ...]:
        srv = self._servers.get(key)
        if method == "initialize":
            return ("ok", "initialize finalize watch read cget cgetall")
        if srv is None:
            return ("error", "no such server channel")
        if method == "finalize":
            del self._servers[key]
            self.closes.push(srv.sock_id)
            self.closes.drain()
            return ("ok", "")
        if method == "watch":
            return ("ok", "")
        if method == "read":
            return ("error", f'channel "{args[0]}" wasn\'t opened for reading')
        if method == "cgetall":
            return ("ok", ("-sockname", tuple(srv.sockname)))
        if method == "cget":
            opt = resolve_tcp_option(args[1])
            if opt == "-sockname":
                return ("ok", tuple(srv.sockname))
            if opt == "-peername":
                return ("error", "can't get peername: socket is not connected")
            if opt == "-error":
                return ("ok", "")
            if opt == "-connecting":
                return ("ok", "0")
            return ("error", bad_option_message(args[1], GENERIC_OPTIONS + TCP_DRIVER_OPTIONS))
        return ("error", f'bad method "{method}"')

    def _conn_method(self, key: str, method: str, args: tuple[str, ...]) -> tuple[object, ...]:
        fb = self._fallbacks.get(key)
        if method == "initialize":
            return ("ok", "initialize finalize watch read write blocking cget cgetall")
        if fb is None:
            return ("error", "no such channel")
        sock = fb.sock
        if method == "read":
            return ("ok", sock.recv(int(args[1])))
        if method == "write":
            data = args[1].encode("latin-1")
            return ("ok", str(sock.send(data)))
        if method == "blocking":
            sock.setblocking(args[1] not in ("0", "false", "no", "off"))
            return ("ok", "")
        if method == "watch":
            self._watch(fb, set(args[1].split()))
            return ("ok", "")
        if method == "finalize":
            self._watch(fb, set())
            del self._fallbacks[key]
            sock.close()
            self.closes.push(fb.sock_id)
            self.closes.drain()
            return ("ok", "")
        if method == "cgetall":
            out: list[object] = []
            for name in ("-peername", "-sockname"):
                with contextlib.suppress(OSError):
                    out += [name, self._addr(sock, name)]
            return ("ok", tuple(out))
        if method == "cget":
            opt = resolve_tcp_option(args[1])
            if opt == "-error":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                return ("ok", os.strerror(err).lower() if err else "")
            if opt == "-connecting":
                return ("ok", "0")
            if opt in ("-peername", "-sockname"):
                try:
                    return ("ok", self._addr(sock, opt))
                except OSError as exc:
                    what = opt[1:]
                    return ("error", f"can't get {what}: {os.strerror(exc.errno or 0).lower()}")
            return ("error", bad_option_message(args[1], GENERIC_OPTIONS + TCP_DRIVER_OPTIONS))
        return ("error", f'bad method "{method}"')

    @staticmethod
    def _addr(sock: socket.socket, opt: str) -> tuple[str, str, str]:
        addr = sock.getpeername() if opt == "-peername" else sock.getsockname()
        return (str(addr[0]), str(addr[0]), str(addr[1]))

    def _watch(self, fb: _Fallback, events: set[str]) -> None:
        fb.watching = events
        mask = (tkinter.READABLE if "read" in events else 0) | (
            tkinter.WRITABLE if "write" in events else 0
        )
        if mask == fb.handler_mask:
            return
        fd = fb.sock.fileno()
        if fb.handler_mask:
            self._tk.deletefilehandler(fd)
        fb.handler_mask = mask
        if mask:
            self._tk.createfilehandler(fd, mask, lambda _f, m: self._ready(fb, m))

    def _ready(self, fb: _Fallback, mask: int) -> None:
        # A file handler, not inside ``watch``: posting here is allowed (pitfall 4a).
        if not fb.name:
            return
        for flag, event in ((tkinter.READABLE, "read"), (tkinter.WRITABLE, "write")):
            if mask & flag and event in fb.watching:
                with contextlib.suppress(tkinter.TclError):
                    self._tk.call("chan", "postevent", fb.name, event)

    def close(self) -> None:
        """Release the eventfd (the interpreter's channels are closed by deleting interps)."""
        self.closes.drain()
        self.closes.close()
