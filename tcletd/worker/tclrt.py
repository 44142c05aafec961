"""The worker's Tcl runtime: a Safe Base interpreter running the tclet, with host-mediated sockets.

:class:`TclRuntime` owns the master interpreter (``tkinter.Tcl()``, no display) and the tclet's
Safe Base interpreter. The link (:mod:`tcletd.worker.link`) gives it a :class:`HostLink` to ask the
host for sockets and policies, registers its own file handlers on :attr:`TclRuntime.tk`, and calls
:meth:`TclRuntime.accepted` / :meth:`TclRuntime.quota_exceeded` / :meth:`TclRuntime.stop` when
the host says so.

Limits and liveness (see :mod:`tcletd.worker.limits`): while the tclet is active, a master
``after`` timer sends ``HostLink.heartbeat`` every :data:`tcletd.shared.states.HEARTBEAT_INTERVAL`
seconds (only when the tclet is back in the event loop); a tclet idle in its event loop says it
waits, and nothing more until an event wakes it; with ``spec.commands`` > 0 the tclet's interpreters
share that command budget, and reaching it calls ``HostLink.limit_hit`` and ends the tclet with
:data:`tcletd.shared.states.EXIT_KILLED`. A ``Stop`` is seen only from the event loop too: a tclet
blocked in I/O or computing cannot see it (the host then escalates to SIGTERM and SIGKILL).

What the tclet gets beyond a plain Safe Base interpreter (see :mod:`tcletd.worker.aliases`):
``socket`` (client and server forms, native channels), ``fconfigure``/``chan configure`` without
the policy's hidden options, ``policy``, a real ``exit``, ``stdout``/``stderr`` (shared with the
master, i.e. the host's output socketpairs), ``argv``/``argc``/``argv0``/``embed_args``, tclsh's
background error report, and no ``chan pipe`` in it or in any interpreter it creates.
"""

from __future__ import annotations

import contextlib
import os
import tkinter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tcletd.shared.errors import EXIT_SOFTWARE, RequestError
from tcletd.shared.protocol import PolicyGranted, WorkerSpec
from tcletd.shared.states import EXIT_KILLED, HEARTBEAT_INTERVAL, TcletState
from tcletd.worker.aliases import MASTER_TCL
from tcletd.worker.channels import ChannelClosed, ChannelFactory
from tcletd.worker.limits import LIMITS_TCL, WakeDetector, enforced_budget
from tcletd.worker.sockargs import TclCommandError, parse_socket_args

__all__ = ["SLAVE", "HostLink", "TclRuntime"]

SLAVE = "tclet"
"""The tclet's interpreter path in the master."""

_DONT_WAIT = 2  # TCL_DONT_WAIT (tkinter.DONT_WAIT)


class HostLink(Protocol):
    """The host, as the runtime sees it; implemented by the link, called synchronously."""

    def connect(
        self, host: str, port: str, myaddr: str, myport: str, asynchronous: bool
    ) -> tuple[int, int]:
        """``(sock_id, fd)`` of a connected (or, asynchronous, connecting) socket.

        Raises :class:`~tcletd.shared.errors.RequestError` with the tclet's message and errorcode.
        """
        ...

    def listen(self, port: str, myaddr: str) -> tuple[int, list[list[str]]]:
        """``(sock_id, sockname)``; sockname is Tcl's ``{addr host port}`` triples."""
        ...

    def close(self, sock_id: int) -> None:
        """The tclet closed a granted socket (connected or listening)."""
        ...

    def request_policy(self, name: str) -> PolicyGranted:
        """The granted policy: its hidden fconfigure options and limits; RequestError if
        refused."""
        ...

    def heartbeat(self, state: str, commands: int, waiting: bool = False) -> None:
        """The tclet is back in its event loop: ``state`` is ``script`` while its top-level script
        has not returned, ``idle`` after; ``commands`` is what its interpreters ran so far;
        ``waiting``: it rests, and no beat comes until its loop wakes (then one says so)."""
        ...

    def limit_hit(self, limit: str, detail: str) -> None:
        """The tclet reached a limit enforced in the worker (``commands``); it ends next."""
        ...


@dataclass
class _Listener:
    command: str
    channel: str


class TclRuntime:
    """One tclet's Tcl: its master interpreter, its Safe Base interpreter and its aliases.

    Single-threaded: every method must be called on the thread that created the runtime.
    ``native_channels=False`` forces the reflected-channel fallback (tests, ``doctor``).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        link: HostLink,
        *,
        native_channels: bool = True,
        prepared: tkinter.Tk | None = None,
        channels_from: Callable[[Callable[[int], None]], ChannelFactory] | None = None,
    ) -> None:
        """``prepared``: an interpreter from :func:`prepare_interp`, made before this process
        was forked (the zygote's), used once; None: one is made here. ``channels_from``: the
        channel factory made ahead on ``prepared``, given where its closes go (a warm
        worker's: :class:`tcletd.worker.main.EarlyChannels`)."""
        self.spec = spec
        self.link = link
        self.tk: tkinter.Tk = prepared if prepared is not None else prepare_interp()
        self.slave = SLAVE
        self.status: int | None = None
        """The exit status once the tclet ended (exit, error, stop, nothing left)."""
        self.policy = spec.policy
        self.hidden_options = list(spec.hidden_options)
        self._policy_fixed = False
        self._sockets: dict[int, str] = {}  # connected sock id -> channel name
        self._listeners: dict[int, _Listener] = {}
        self._failure: BaseException | None = None
        self._running = False
        self._state = TcletState.SCRIPT.value
        self.commands = spec.commands  # the command budget of the policy in force
        self.on_policy: Callable[[PolicyGranted], object] | None = None
        """Called after a ``policy NAME`` was granted (the worker moves its rlimits there)."""
        self.channels = (
            channels_from(self._closed)
            if channels_from is not None
            else ChannelFactory(self.tk, self._closed, native=native_channels)
        )
        self._install()

    # ---- set-up ----------------------------------------------------------------------------------

    def _install(self) -> None:
        self._set_hidden(self.hidden_options)
        commands: dict[str, Callable[..., object]] = {
            "socket": self._py_socket,
            "policy": self._py_policy,
            "exit": self._py_exit,
            "drain": self._py_drain,
            "beat": self._py_beat,
            "limit": self._py_limit,
        }
        fit_tclet_interp(self.tk, self.slave, self.spec, commands)

    def _set_hidden(self, options: list[str]) -> None:
        self.hidden_options = list(options)
        self.tk.call("set", "::tcletd::hidden", tuple(options))

    def describe_channels(self) -> str:
        """Which channel implementation is in use (for ``tcletd doctor`` and the logs)."""
        return self.channels.describe()

    # ---- the link's entry points -----------------------------------------------------------------

    def prime(self) -> None:
        """Start what Tcl starts lazily (its notifier thread, at the first event-loop pass), so
        the sandbox can forbid new threads and cap the address space before the script runs."""
        self.tk.dooneevent(_DONT_WAIT)

    def run(self) -> int:
        """Evaluate the script, then serve events until the tclet ends; returns its exit status.

        The tclet ends on ``exit``, on an uncaught error (status 1, errorInfo on stderr), on
        :meth:`stop`, or once its script returned and nothing is left for the event loop (no
        ``after`` event, no fileevent handler, no server socket, in it or its children). A failure
        of the link other than a refused request is re-raised here after the tclet ended.
        """
        if self._running:
            raise RuntimeError("TclRuntime.run() is not re-entrant")
        self._running = True
        self._wake = WakeDetector(self.tk)
        try:
            if self.status is None:
                # Counting starts here: the Safe Base's set-up is not the tclet's.
                self.tk.call("::tcletd::Budget", self.slave, str(enforced_budget(self.commands)))
                self.tk.call("::tcletd::Beat", str(max(1, round(HEARTBEAT_INTERVAL * 1000))))
                self._run_script()
                self._state = TcletState.IDLE.value
            while not self._ended():
                self.channels.closes.drain()
                if self._wake.armed:  # resting (it had something left to wait for): no polls,
                    self.tk.dooneevent(0)  # whose passes would look like wake-ups
                    continue
                if self.tk.dooneevent(_DONT_WAIT):
                    continue
                if self._ended() or not self._busy_uncounted():
                    break
                self.tk.dooneevent(0)
            self._terminate(0)
        finally:
            self._wake.close()
            with contextlib.suppress(tkinter.TclError):
                self.tk.call("::tcletd::Unbeat")
            self._finish()
        if self._failure is not None:
            raise self._failure
        assert self.status is not None
        return self.status

    def stop(self, status: int) -> None:
        """The host ends the tclet: flush its output and sockets, end with ``status``."""
        self._terminate(status)

    def quota_exceeded(self, quota: str, message: str) -> None:
        """The host shut the tclet's sockets because of ``quota``: a background error in the
        tclet carrying ``message`` (its bgerror handler, by default tclsh's report on stderr);
        the tclet goes on. Reported from the event loop, never inside another callback."""
        if self.status is not None:
            return
        opts = (
            "-code", "1", "-level", "0",
            "-errorcode", ("TCLET", "QUOTA", quota),
            "-errorinfo", message,
        )  # fmt: skip
        self.tk.call("after", "idle", ("::tcletd::bgreport", self.slave, message, opts))

    def accepted(self, listener: int, sock: int, fd: int, peer_host: str, peer_port: int) -> None:
        """The host accepted a connection on the tclet's server socket ``listener``."""
        entry = self._listeners.get(listener)
        if entry is None or self.status is not None:
            os.close(fd)
            self._notify_close(sock)
            return
        try:
            name = self.channels.make(fd, sock)
        except (OSError, tkinter.TclError):
            self._notify_close(sock)
            return
        self._sockets[sock] = name
        try:
            self.tk.call(
                "::tcletd::accept", self.slave, name, entry.command, peer_host, str(peer_port)
            )
        except tkinter.TclError:  # the tclet is gone: its channel went with it
            with contextlib.suppress(tkinter.TclError):
                self.tk.call("close", name)
        self.channels.closes.drain()

    # ---- internals -------------------------------------------------------------------------------

    def _run_script(self) -> None:
        result = self.tk.splitlist(
            self.tk.call("::tcletd::runscript", self.slave, self.spec.script, self.spec.script_name)
        )
        if self.status is not None or str(result[0]) == "0":
            return
        with contextlib.suppress(tkinter.TclError):
            self.tk.call("puts", "stderr", result[1])
        self._terminate(1)

    def _ended(self) -> bool:
        return self.status is not None

    def _busy(self) -> bool:
        if self._listeners:
            return True
        return bool(int(self.tk.call("::tcletd::busy", self.slave)))

    def _terminate(self, status: int) -> None:
        if self.status is not None:
            return
        self.status = status
        chans = tuple(self._sockets.values())
        with contextlib.suppress(tkinter.TclError):
            self.tk.call("::tcletd::shutdown", self.slave, chans)

    def _finish(self) -> None:
        for chan in ("stdout", "stderr"):
            with contextlib.suppress(tkinter.TclError):
                self.tk.call("fconfigure", chan, "-blocking", "1")
                self.tk.call("flush", chan)
        with contextlib.suppress(Exception):
            self.channels.closes.drain()
        self.channels.close()

    def _closed(self, sock_id: int) -> None:
        """Tcl closed the channel of ``sock_id`` (delivered outside Tcl's close)."""
        self._sockets.pop(sock_id, None)
        self._listeners.pop(sock_id, None)
        self._notify_close(sock_id)

    def _notify_close(self, sock_id: int) -> None:
        try:
            self.link.close(sock_id)
        except Exception as exc:  # the link is gone: end the tclet, report from run()
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._terminate(EXIT_SOFTWARE)

    # ---- Python commands behind the aliases (answer {ok value} / {error message errorcode}) -----

    def _py_socket(self, *args: str) -> tuple[object, ...]:
        try:
            parsed = parse_socket_args(args)
        except TclCommandError as exc:
            return ("error", exc.message, exc.errorcode)
        try:
            if parsed.server:
                sock_id, sockname = self.link.listen(parsed.port, parsed.myaddr)
            else:
                sock_id, fd = self.link.connect(
                    parsed.host, parsed.port, parsed.myaddr, parsed.myport, parsed.asynchronous
                )
        except RequestError as exc:
            return ("error", exc.message, tuple(exc.errorcode))
        except Exception as exc:
            self._fail(exc)
            return ("error", "couldn't open socket: host unavailable", ("NONE",))
        ended = ("error", "couldn't open socket: tclet ended", ("NONE",))
        if parsed.server:
            if self.status is not None:  # stopped while waiting for the host
                self._notify_close(sock_id)
                return ended
            try:
                name = self.channels.make_server(sock_id, sockname)
            except tkinter.TclError as exc:
                self._notify_close(sock_id)
                return ("error", f"couldn't open socket: {exc}", ("NONE",))
            self._listeners[sock_id] = _Listener(parsed.command, name)
        else:
            if self.status is not None:
                os.close(fd)
                self._notify_close(sock_id)
                return ended
            try:
                # Made straight in the tclet's interpreter (no transfer); owns fd from here.
                name = self.channels.make(fd, sock_id, self.slave)
            except ChannelClosed as exc:  # its close handler reported it to the host
                self.channels.closes.drain()
                return ("error", f"couldn't open socket: {exc}", ("NONE",))
            except (OSError, tkinter.TclError) as exc:
                self._notify_close(sock_id)
                return ("error", f"couldn't open socket: {exc}", ("NONE",))
            self._sockets[sock_id] = name
            return ("ok", name)
        try:
            self.tk.call("interp", "transfer", "", name, self.slave)
        except tkinter.TclError as exc:
            with contextlib.suppress(tkinter.TclError):
                self.tk.call("close", name)  # its close handler reports it to the host
            self.channels.closes.drain()
            return ("error", f"couldn't open socket: {exc}", ("NONE",))
        return ("ok", name)

    def _py_policy(self, *args: str) -> tuple[object, ...]:
        if len(args) > 1:
            return ("error", 'wrong # args: should be "policy ?name?"', ("TCL", "WRONGARGS"))
        if not args:
            return ("ok", self.policy)
        name = args[0]
        if self._policy_fixed:
            if name == self.policy:
                return ("ok", name)
            return ("error", f'security policy "{self.policy}" already loaded', ("NONE",))
        try:
            grant = self.link.request_policy(name)
        except RequestError as exc:
            return ("error", exc.message, tuple(exc.errorcode))
        except Exception as exc:
            self._fail(exc)
            return ("error", "policy request failed", ("NONE",))
        self.policy = name
        self._policy_fixed = True
        self._set_hidden(list(grant.hidden_options))
        # The limits move with the policy: the command budget here, the OS backstops in the
        # sandbox (through on_policy, set by the worker's main).
        self.commands = grant.commands
        try:
            self.tk.call("::tcletd::Rebudget", str(enforced_budget(grant.commands)))
            if self.on_policy is not None:
                self.on_policy(grant)
        except Exception as exc:  # the host granted it: a worker that cannot follow ends
            self._fail(exc)
            return ("error", "policy request failed", ("NONE",))
        return ("ok", name)

    def _py_drain(self) -> str:
        self.channels.closes.drain()
        return ""

    def _py_exit(self, code: str) -> str:
        self._terminate(int(code))
        return ""

    def _py_beat(self, kind: str, commands: str) -> str:
        """``run``: a beat; ``rest``: the tclet would rest, "1" if it may (then the host hears
        it waits); ``woke``: its loop woke after a rest. See :mod:`tcletd.worker.limits`."""
        if self.status is not None:
            return "0"
        if kind == "rest" and not (
            self._wake.available
            and (self._state == TcletState.SCRIPT.value or self._busy_uncounted())
        ):
            return "0"  # no detector to wake it; or nothing left: the loop ends the tclet
        try:
            # Tcl's counts wrap past 2**31; the wire takes only counts >= 0.
            self.link.heartbeat(self._state, max(0, int(commands)), waiting=kind == "rest")
        except Exception as exc:
            self._fail(exc)
            return "0"
        if kind == "rest":
            self._wake.arm()
            return "1"
        if kind == "run":
            self._wake.prune()
        return "0"

    def _busy_uncounted(self) -> bool:
        """:meth:`_busy`, its commands left out of the tclet's activity (a beat's quiet check)."""
        return bool(self._listeners) or bool(int(self.tk.call("::tcletd::Busy", self.slave)))

    def _py_limit(self) -> str:
        """The command budget is spent (called from the limit's callback, inside the tclet's
        evaluation; the limit error unwinds it, and deleting the interpreter is safe there, as
        for ``exit``)."""
        if self.status is None:
            try:
                self.link.limit_hit("commands", f"commands limit {self.commands}")
            except Exception as exc:
                self._fail(exc)
            self._terminate(EXIT_KILLED)
        return ""


def prepare_interp() -> tkinter.Tk:
    """A Tcl interpreter with what every tclet's shares: the master's procs and the tclet's Safe
    Base interpreter with its aliases. The zygote makes one before it forks, so that a worker
    does not: the Safe Base's set-up is ~8 ms of a worker's start, ~0.2 ms the rest.

    Nothing here may start a thread (Tcl's notifier starts at the first event-loop pass, in the
    worker: :meth:`TclRuntime.prime`) or touch a standard channel (Tcl would make it on the
    zygote's descriptor 1, before the worker's output is there).
    """
    tk = tkinter.Tcl()
    tk.eval(MASTER_TCL)
    tk.eval(LIMITS_TCL)
    slave = SLAVE
    lib = str(tk.eval("info library"))
    subdirs = tk.splitlist(tk.call("glob", "-nocomplain", "-type", "d", "-dir", lib, "*"))
    access = [lib, *subdirs]
    tk.call("::safe::interpCreate", slave, "-accessPath", tuple(access), "-noStatics")
    # The targets are the Python commands fit_tclet_interp makes: an alias resolves its target
    # when called, not when made.
    for name, target in (
        ("socket", ("::tcletd::call", "socket", "::tcletd::py::socket")),
        ("fconfigure", ("::tcletd::FconfigureAlias", slave)),
        ("policy", ("::tcletd::call", "policy", "::tcletd::py::policy")),
        ("exit", ("::tcletd::ExitAlias",)),
        ("::tcl::Bgerror", ("::tcletd::bgerror", slave)),
    ):
        tk.call("interp", "alias", slave, name, "", *target)
    tk.call("interp", "bgerror", slave, "::tcl::Bgerror")
    tk.call("::tcletd::Harden", slave)
    return tk


def fit_tclet_interp(
    tk: tkinter.Tk, slave: str, spec: WorkerSpec, commands: dict[str, Callable[..., object]]
) -> None:
    """Make ``tk`` (from :func:`prepare_interp`) this tclet's: the Python ``commands`` behind
    the aliases (as ``::tcletd::py::NAME``), the shared stdout and stderr, and the tclet's
    argv, argv0 and embed_args."""
    for name, func in commands.items():
        tk.createcommand(f"::tcletd::py::{name}", func)
    for chan in ("stdout", "stderr"):
        tk.call("interp", "share", "", chan, slave)
    argv = tuple(spec.argv)
    embed = tuple(x for kv in spec.embed_args.items() for x in kv)
    for var, value in (
        ("::argv", argv),
        ("::argc", str(len(argv))),
        ("::argv0", spec.script_name),
        ("::tcl_interactive", "0"),
    ):
        tk.call("interp", "eval", slave, ("::set", var, value))
    tk.call("interp", "eval", slave, ("::array", "set", "::embed_args", embed))
    tk.call("interp", "eval", slave, ("::info", "script", spec.script_name))
