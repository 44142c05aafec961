"""The worker's Tcl runtime, in-process, with real Tcl and real loopback TCP sockets.

``LocalBroker`` implements the runtime's Broker protocol with real sockets on 127.0.0.1 (the same
socket path the host takes: it creates the socket and hands over the descriptor), and plays the
link's part for server sockets (accepts, then calls ``runtime.accepted``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import threading
import time
import tkinter
from collections.abc import Iterator

import pytest
from support.net import TcpServer
from support.runtime import make_spec
from support.system import open_fds
from support.waiting import wait_until

from tcletd.shared.errors import RequestError
from tcletd.shared.protocol import PolicyGranted
from tcletd.worker.channels import probe
from tcletd.worker.limits import WakeDetector
from tcletd.worker.tclrt import TclRuntime

pytestmark = pytest.mark.timeout(20)


class LocalBroker:
    """The Broker protocol over real loopback sockets; denies the ports in ``deny``."""

    def __init__(self, deny: tuple[int, ...] = ()) -> None:
        self.deny = set(deny)
        self.duplicates: dict[int, int] = {}  # like the host: it keeps a dup of each granted fd
        self.closed: list[int] = []
        self.granted: list[int] = []
        self.policies = {"home": ["-peername"], "trusted": [], "strict": ["-peername", "-sockname"]}
        self.budgets = {"strict": 50_000}  # command budgets (0 for the others: none)
        self.listeners: dict[int, socket.socket] = {}
        self.runtime: TclRuntime | None = None
        self.beats: list[tuple[str, int, float]] = []  # (state, commands, monotonic time)
        self.rests: list[tuple[str, int, float]] = []  # the same, for a report that it waits
        self.limits: list[tuple[str, str]] = []
        self._next = 100

    def _id(self, fd: int = -1) -> int:
        self._next += 1
        self.granted.append(self._next)
        if fd >= 0:
            self.duplicates[self._next] = os.dup(fd)
        return self._next

    def connect(
        self, host: str, port: str, myaddr: str, myport: str, asynchronous: bool
    ) -> tuple[int, int]:
        if not port.isdigit():
            raise RequestError(f"permission denied: non numeric port {port}")
        host = host or "127.0.0.1"
        if int(port) in self.deny:
            raise RequestError(
                f"permission denied for host {host} port {port}", ("TCLET", "POLICY", "DENIED")
            )
        sock = socket.socket()
        try:
            if myaddr or myport:
                sock.bind((myaddr or "127.0.0.1", int(myport or 0)))
            if asynchronous:
                sock.setblocking(False)
                err = sock.connect_ex((host, int(port)))
                if err not in (0, errno.EINPROGRESS):
                    raise OSError(err, os.strerror(err))
            else:
                sock.connect((host, int(port)))
        except OSError as exc:
            sock.close()
            text = os.strerror(exc.errno or 0).lower()
            code = errno.errorcode.get(exc.errno or 0, "EIO")
            raise RequestError(f"couldn't open socket: {text}", ("POSIX", code, text)) from None
        fd = sock.detach()
        return self._id(fd), fd

    def listen(self, port: str, myaddr: str) -> tuple[int, list[list[str]]]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((myaddr or "127.0.0.1", int(port)))
        sock.listen()
        sock.setblocking(False)
        sock_id = self._id()
        self.listeners[sock_id] = sock
        assert self.runtime is not None
        self.runtime.tk.createfilehandler(
            sock.fileno(), tkinter.READABLE, lambda *_: self._accept(sock_id)
        )
        addr, bound = sock.getsockname()[:2]
        return sock_id, [[addr, addr, str(bound)]]

    def _accept(self, listener: int) -> None:
        sock = self.listeners.get(listener)
        if sock is None or self.runtime is None:
            return
        try:
            conn, (peer, port) = sock.accept()
        except BlockingIOError:
            return
        fd = conn.detach()
        self.runtime.accepted(listener, self._id(fd), fd, peer, port)

    def close(self, sock_id: int) -> None:
        self.closed.append(sock_id)
        dup = self.duplicates.pop(sock_id, None)
        if dup is not None:
            os.close(dup)
        sock = self.listeners.pop(sock_id, None)
        if sock is not None and self.runtime is not None:
            self.runtime.tk.deletefilehandler(sock.fileno())
            sock.close()

    def request_policy(self, name: str) -> PolicyGranted:
        if name not in self.policies:
            raise RequestError(f'permission denied: policy "{name}" not allowed for this origin')
        commands = self.budgets.get(name, 0)
        return PolicyGranted(
            0, name, self.policies[name], nofile=0, commands=commands, memory=0, cpu=0
        )

    def heartbeat(self, state: str, commands: int, waiting: bool = False) -> None:
        (self.rests if waiting else self.beats).append((state, commands, time.monotonic()))

    def limit_hit(self, limit: str, detail: str) -> None:
        self.limits.append((limit, detail))

    def shutdown(self) -> None:
        for dup in self.duplicates.values():
            os.close(dup)
        self.duplicates.clear()
        for sock in self.listeners.values():
            sock.close()
        self.listeners.clear()


def run_tclet(
    script: str, broker: LocalBroker | None = None, **kw: object
) -> tuple[int, TclRuntime, LocalBroker]:
    native = bool(kw.pop("native", True))
    broker = broker or LocalBroker()
    rt = TclRuntime(make_spec(script, **kw), broker, native_channels=native)
    broker.runtime = rt
    rt.tk.after(10_000, lambda: rt.stop(99))  # a hung tclet fails the test instead of hanging it
    try:
        status = rt.run()
    finally:
        broker.shutdown()
    return status, rt, broker


@pytest.fixture
def sink() -> Iterator[tuple[int, list[int]]]:
    """A server that counts the bytes of each connection until EOF."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    counts: list[int] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            time.sleep(0.3)  # let the writer's output pile up in its buffers first
            with conn:
                total = 0
                while data := conn.recv(65536):
                    total += len(data)
                counts.append(total)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], counts
    srv.close()
    thread.join(5)


# ---- native sockets -----------------------------------------------------------------------------


def test_echo_line_protocol(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, rt, broker = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        fconfigure $s -buffering line
        foreach line {{alpha beta {{gamma delta}}}} {{
            puts $s $line
            puts "echo: [gets $s]"
        }}
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0
    assert "echo: alpha\necho: beta\necho: gamma delta\n" in out
    assert rt.channels.mode == "native"
    assert broker.closed == broker.granted  # the close reached the host


def test_native_channel_is_a_tcl_socket(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        puts "name [string match sock* $s]"
        set b [fconfigure $s -buffering]
        puts "conf [fconfigure $s -translation] [fconfigure $s -blocking] $b"
        puts "ambiguous [catch {{fconfigure $s -buff}} m] $m"
        puts "sockname [lindex [fconfigure $s -sockname] 0]"
        puts -nonewline $s "half"
        close $s write
        puts "read [read $s] eof [eof $s]"
        puts "write-after-close [catch {{puts $s x}} m] $m"
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "name 1\n" in out
    assert "conf auto crlf 1 full\n" in out
    assert 'ambiguous 1 bad option "-buff": should be one of -blocking,' in out
    assert "sockname 127.0.0.1\n" in out
    assert "read half eof 1\n" in out
    assert "wasn't opened for writing" in out


def test_binary_round_trip(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        fconfigure $s -translation binary
        set data ""
        for {{set i 0}} {{$i < 256}} {{incr i}} {{ append data [binary format c $i] }}
        set data [string repeat $data 64]
        puts -nonewline $s $data
        flush $s
        set back [read $s [string length $data]]
        puts "len [string length $back] same [expr {{$back eq $data}}]"
        binary scan [string range $back 0 255] cu* vals
        puts "first [lrange $vals 0 2] last [lindex $vals end]"
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "len 16384 same 1\n" in out
    assert "first 0 1 2 last 255\n" in out


def test_event_driven_client(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        fconfigure $s -blocking 0 -buffering line
        set ::n 0
        proc got {{s}} {{
            if {{[gets $s line] < 0}} {{ return }}
            puts "got $line"
            if {{[incr ::n] == 3}} {{ close $s; return }}
            puts $s "line[expr {{$::n + 1}}]"
        }}
        fileevent $s readable [list got $s]
        puts $s line1
    """)
    out = capfd.readouterr().out
    assert status == 0, out  # ends by itself once the handler's channel is closed
    assert "got line1\ngot line2\ngot line3\n" in out


def test_async_connect_becomes_writable(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket -async 127.0.0.1 {echo.port}]
        fileevent $s writable {{set ::w 1}}
        vwait ::w
        fileevent $s writable {{}}
        puts "error=[fconfigure $s -error]|blocking=[fconfigure $s -blocking]"
        puts $s ping; flush $s
        puts "echo [gets $s]"
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "error=|blocking=1\n" in out
    assert "echo ping\n" in out


def test_refused_connect(closed_port: int, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(f"""
        set r [catch {{socket 127.0.0.1 {closed_port}}} m o]
        puts "$r|$m|[dict get $o -errorcode]"
        puts "chans [lsort [chan names]]"
    """)
    out = capfd.readouterr().out
    assert status == 0
    assert (
        "1|couldn't open socket: connection refused|POSIX ECONNREFUSED {connection refused}" in out
    )
    assert "chans stderr stdout\n" in out
    assert broker.granted == []


def test_denied_request_and_tclet_goes_on(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(
        """
        set r [catch {socket 127.0.0.1 25} m o]
        puts "$r|$m|[dict get $o -errorcode]"
        proc p {} { socket 127.0.0.1 25 }
        catch p m o
        puts "stack [dict get $o -errorstack]"
        puts "info [string map {\\n |} [dict get $o -errorinfo]]"
        set r [catch {socket example.org http} m o]
        puts "$r|$m|[dict get $o -errorcode]"
        puts "still here"
        """,
        LocalBroker(deny=(25,)),
    )
    out = capfd.readouterr().out
    assert status == 0
    assert "1|permission denied for host 127.0.0.1 port 25|TCLET POLICY DENIED\n" in out
    assert "1|permission denied: non numeric port http|NONE\n" in out
    assert "still here\n" in out
    assert "tcletd" not in out  # nothing of the master's procs in errorInfo or -errorstack
    assert "stack INNER {invokeStk1 socket 127.0.0.1 25} CALL p\n" in out
    assert broker.granted == []


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="needs tclsh to compare with")
def test_socket_argument_errors_match_tclsh(capfd: pytest.CaptureFixture[str]) -> None:
    cases = [
        "",
        "localhost",
        "-server",
        "-server cb",
        "-server cb -myaddr",
        "-server cb -myport 1 2",
        "-server cb -async 2",
        "-async -server cb 0",
        "-async",
        "-myaddr",
        "-myport",
        "-myaddr 127.0.0.1",
        "-foo a b",
        "-- a b",
        "-reuseaddr 1 a b",
        "a b c",
        "-server cb a b",
        "-server cb -myaddr a",
        "-as localhost 1",
    ]
    probe = "".join(
        f"set r [catch {{socket {c}}} m o]; puts [list {{{c}}} $r $m [dict get $o -errorcode]]\n"
        for c in cases
    )
    expected = subprocess.run(
        ["tclsh"], input=probe, capture_output=True, text=True, timeout=10, check=True
    ).stdout
    status, _, broker = run_tclet(probe)
    out = capfd.readouterr().out
    assert status == 0
    assert out == expected
    assert broker.granted == []


# ---- server sockets -----------------------------------------------------------------------------


def test_server_socket_accepts(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet("""
        proc accept {tag chan addr port} {
            puts "accept $tag [string match sock* $chan] $addr [string is integer -strict $port]"
            puts "info level [info level]"
            fconfigure $chan -buffering line
            puts $chan "hello [gets $chan]"
            close $chan
        }
        set srv [socket -server {accept T1} -myaddr 127.0.0.1 0]
        set port [lindex [fconfigure $srv -sockname] 2]
        puts "sockname [lrange [fconfigure $srv -sockname] 0 1]"
        puts "conf [dict keys [fconfigure $srv]]"
        puts "peer [catch {fconfigure $srv -peername} m] $m"
        set c [socket 127.0.0.1 $port]
        fconfigure $c -buffering line
        puts $c tclet
        fileevent $c readable [list apply {{c srv} {
            puts "reply [gets $c]"
            close $c
            close $srv
        }} $c $srv]
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "accept T1 1 127.0.0.1 1\n" in out
    assert "info level 1\n" in out  # at global level, nothing of the master's frames
    assert "sockname 127.0.0.1 127.0.0.1\n" in out
    assert (
        "conf -blocking -buffering -buffersize -encoding -eofchar -translation -sockname\n" in out
    )
    assert 'peer 1 bad option "-peername"' in out
    assert "reply hello tclet\n" in out
    assert sorted(broker.closed) == sorted(broker.granted)  # listener, client and accepted


def test_close_reaches_the_host_before_the_tclet_goes_on(capfd: pytest.CaptureFixture[str]) -> None:
    # The host holds a duplicate of every granted socket: the peer sees EOF only once the host
    # dropped it, so `close` must tell the host at once, even if no event loop runs after it.
    status, _, broker = run_tclet("""
        proc accept {chan addr port} { set ::peer $chan }
        set srv [socket -server accept -myaddr 127.0.0.1 0]
        set port [lindex [fconfigure $srv -sockname] 2]
        foreach how {close {chan close}} {
            set c [socket 127.0.0.1 $port]
            vwait ::peer
            puts $::peer "only line"
            {*}$how $::peer
            puts "$how: [gets $c] | [gets $c line] [eof $c]"
            close $c
        }
        close $srv
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "close: only line | -1 1\nchan close: only line | -1 1\n" in out
    assert sorted(broker.closed) == sorted(broker.granted)
    assert not broker.duplicates


def test_accept_callback_error_is_background_error(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        proc accept {chan addr port} { error "accept failed" }
        set srv [socket -server accept -myaddr 127.0.0.1 0]
        set c [socket 127.0.0.1 [lindex [fconfigure $srv -sockname] 2]]
        fileevent $c readable {
            puts "client eof [eof $c] [read $c]"
            close $c
            close $srv
        }
    """)
    captured = capfd.readouterr()
    assert status == 0
    assert "client eof" in captured.out  # Tcl closes the accepted channel after the error
    assert captured.err.startswith(
        'accept failed\n    while executing\n"error "accept failed" "\n'
        '    (procedure "accept" line 1)\n    invoked from within\n"accept sock'
    )
    assert "uplevel" not in captured.err


# ---- fconfigure and hidden options --------------------------------------------------------------


def test_peername_hidden_everywhere(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        foreach cmd {{
            {{fconfigure $s -peername}}
            {{fconfigure $s -peer}}
            {{fconfigure $s -p}}
            {{chan configure $s -peername}}
            {{chan configure $s -peern}}
            {{fconfigure $s -peername x}}
            {{fconfigure $s -blocking 0 -peer x}}
            {{fconfigure $s -bogus}}
            {{chan configure $s -b}}
        }} {{
            set r [catch $cmd m]
            puts "$r $m"
        }}
        puts "blocking [fconfigure $s -blocking]"
        puts "all [dict keys [fconfigure $s]]"
        puts "all2 [dict keys [chan configure $s]]"
        puts "sock [lindex [fconfigure $s -sockname] 0] [lindex [chan configure $s -sock] 0]"
        puts "err [fconfigure $s -error]|[fconfigure $s -e]"
        fconfigure $s -blocking 1 -buffering line -translation lf -encoding utf-8 -buffersize 8192
        puts "set [fconfigure $s -buffering] [fconfigure $s -buffersize]"
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    visible = (
        "should be one of -blocking, -buffering, -buffersize, -encoding, -eofchar, -translation,"
        " -connecting, or -sockname"
    )
    settable = (
        "should be one of -blocking, -buffering, -buffersize, -encoding, -eofchar, or -translation"
    )
    for opt in ("-peername", "-peer", "-p", "-peername", "-peern"):
        assert f'1 bad option "{opt}": {visible}\n' in out
    assert f'1 bad option "-peername": {settable}\n' in out
    assert f'1 bad option "-peer": {settable}\n' in out
    assert f'1 bad option "-bogus": {visible}\n' in out
    assert f'1 bad option "-b": {visible}\n' in out
    assert "blocking 0\n" in out  # pairs before the hidden one were set, as Tcl does
    assert "peername" not in out.replace('"-peername"', "")
    assert "all -blocking -buffering -buffersize -encoding -eofchar -translation -sockname\n" in out
    assert (
        "all2 -blocking -buffering -buffersize -encoding -eofchar -translation -sockname\n" in out
    )
    assert "sock 127.0.0.1 127.0.0.1\n" in out
    assert "err |\n" in out
    assert "set line 8192\n" in out


def test_hidden_options_follow_the_policy(
    echo: TcpServer, capfd: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = run_tclet(f"""
        set s [socket 127.0.0.1 {echo.port}]
        puts "policy [policy]"
        puts "home [catch {{fconfigure $s -peername}}]"
        puts "grant [policy trusted]"
        puts "trusted [catch {{fconfigure $s -peername}} m] [lindex $m 0]"
        puts "listed [expr {{"-peername" in [fconfigure $s]}}]"
        close $s
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert "policy home\nhome 1\ngrant trusted\ntrusted 0 127.0.0.1\nlisted 1\n" in out


def test_policy_command(capfd: pytest.CaptureFixture[str]) -> None:
    status, rt, _ = run_tclet("""
        puts "0 [policy]"
        puts "1 [catch {policy nosuch} m] $m"
        puts "2 [policy]"
        puts "3 [policy strict]"
        puts "4 [policy strict]"
        puts "5 [catch {policy trusted} m o] $m [dict get $o -errorcode]"
        puts "6 [catch {policy a b} m] $m"
        puts "7 [policy]"
    """)
    out = capfd.readouterr().out
    assert status == 0
    assert out.splitlines() == [
        "0 home",
        '1 1 permission denied: policy "nosuch" not allowed for this origin',
        "2 home",
        "3 strict",
        "4 strict",
        '5 1 security policy "strict" already loaded NONE',
        '6 1 wrong # args: should be "policy ?name?"',
        "7 strict",
    ]
    assert rt.hidden_options == ["-peername", "-sockname"]


# ---- descriptors --------------------------------------------------------------------------------


def test_chan_pipe_gone_in_tclet_and_children(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        puts "a [catch {chan pipe} m] $m"
        puts "b [catch {::tcl::chan::pipe} m] $m"
        set c [interp create]
        puts "c [catch {interp eval $c {chan pipe}} m] [string range $m 0 30]"
        puts "d [catch {interp eval $c {::tcl::chan::pipe}} m] $m"
        set g [interp eval $c {interp create -safe g}]
        puts "e [catch {interp eval [list $c $g] {::tcl::chan::pipe}} m] $m"
        puts "f [catch {interp cr x} m] $m"
        puts "g [catch {interp eval x {::tcl::chan::pipe}} m] $m"
        puts "h [interp exists $c] [interp issafe $c] [lsort [interp slaves]]"
        interp alias {} twice {} expr 2*
        puts "i [twice 21] [catch {interp c} m]"
        interp delete $c
        puts "j [lsort [interp slaves]]"
        set map [dict create pipe ::tcl::chan::pipe]
        puts "k [catch {namespace ensemble configure chan -map $map}]"
        puts "l [catch {chan pipe} m] $m"
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    assert 'a 1 unknown or ambiguous subcommand "pipe"' in out
    assert 'b 1 invalid command name "::tcl::chan::pipe"' in out
    assert "c 1 unknown or ambiguous subcomm" in out
    assert 'd 1 invalid command name "::tcl::chan::pipe"' in out
    assert 'e 1 invalid command name "::tcl::chan::pipe"' in out
    assert "f 0 x\n" in out
    assert 'g 1 invalid command name "::tcl::chan::pipe"' in out
    assert "h 1 1 interp0 x\n" in out
    assert "i 42 1\n" in out
    assert "j x\n" in out
    assert 'l 1 invalid command name "::tcl::chan::pipe"' in out


def test_no_other_descriptor_paths(capfd: pytest.CaptureFixture[str]) -> None:
    before = open_fds().keys()
    status, _, _ = run_tclet("""
        foreach cmd {
            {open /etc/passwd}
            {exec true}
            {load /usr/lib/x86_64-linux-gnu/libc.so.6}
            {load {} Tk}
            {source /etc/passwd}
            {file tempfile}
            {file delete /tmp/x}
            {glob /etc/*}
            {cd /}
            {encoding system iso8859-1}
            {interp invokehidden {} open /etc/passwd}
            {interp expose {} open}
        } {
            puts "[catch $cmd m] $cmd"
        }
        puts "channels [lsort [chan names]]"
        puts "http [package require http]"
    """)
    out = capfd.readouterr().out
    assert status == 0, out
    for line in out.splitlines():
        if not line.startswith(("channels", "http")):
            assert line.startswith("1 "), line
    assert "channels stderr stdout\n" in out
    assert "http 2." in out
    assert open_fds().keys() <= before


def test_no_leaked_descriptors(capfd: pytest.CaptureFixture[str]) -> None:
    backlog = socket.socket()  # never accepts: its connections hold no descriptor of ours
    backlog.bind(("127.0.0.1", 0))
    backlog.listen(8)
    port = backlog.getsockname()[1]
    run_tclet("puts warm")  # the first interpreter of a thread creates Tcl's notifier
    before = open_fds().keys()
    status, _, broker = run_tclet(f"""
        set s1 [socket 127.0.0.1 {port}]
        set s2 [socket 127.0.0.1 {port}]
        set srv [socket -server {{apply {{{{c a p}} {{close $c}}}}}} -myaddr 127.0.0.1 0]
        close $s1
        after 10 {{set done 1}}
        vwait done
        exit 0 ;# s2 and srv still open: ending the tclet closes them
    """)
    capfd.readouterr()
    leaked = open_fds().keys() - before
    backlog.close()
    assert status == 0
    assert not leaked
    assert len(broker.granted) == 3
    assert sorted(broker.closed) == sorted(broker.granted)


# ---- lifetime -----------------------------------------------------------------------------------


def test_exit_code_and_nothing_after(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        puts -nonewline "before"
        exit 3
        puts "after"
    """)
    out = capfd.readouterr().out
    assert status == 3
    assert out.endswith("before")


def test_exit_argument_errors(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        puts "[catch {exit 1 2} m] $m"
        puts "[catch {exit x} m o] $m [dict get $o -errorcode]"
        exit 0x101
    """)
    out = capfd.readouterr().out
    assert status == 1  # 0x101 & 0xff, like a process
    assert '1 wrong # args: should be "exit ?returnCode?"\n' in out
    assert '1 expected integer but got "x" TCL VALUE INTEGER\n' in out


def test_exit_from_event_handler_inside_vwait_and_catch(
    sink: tuple[int, list[int]], capfd: pytest.CaptureFixture[str]
) -> None:
    port, counts = sink
    status, _, broker = run_tclet(f"""
        set s [socket 127.0.0.1 {port}]
        fconfigure $s -blocking 0 -buffersize 1000
        puts -nonewline $s [string repeat x 20000000]
        after 20 {{exit 7}}
        proc p {{}} {{ catch {{vwait forever}} m; puts "caught $m" }}
        p
        puts "not reached"
    """)
    out = capfd.readouterr().out
    assert status == 7
    assert "not reached" not in out and "caught" not in out
    assert broker.closed == broker.granted
    wait_until(lambda: counts, 5, interval=0.01, message="the sink saw no end of its connection")
    assert counts == [20000000]  # like tclsh's exit: pending output flushed before the end


def test_accept_with_a_command_that_is_not_a_list(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        set srv [socket -server "a {b" -myaddr 127.0.0.1 0]
        set c [socket 127.0.0.1 [lindex [fconfigure $srv -sockname] 2]]
        fileevent $c readable {close $c; close $srv}
    """)
    captured = capfd.readouterr()
    assert status == 0
    assert "unmatched open brace in list" in captured.err


def test_uncaught_error(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(
        "puts start\nproc p {} {error boom}\np\nputs never\n", script_name="demo.tcl"
    )
    captured = capfd.readouterr()
    assert status == 1
    assert "start\n" in captured.out and "never" not in captured.out
    assert captured.err.endswith(
        'boom\n    while executing\n"error boom"\n    (procedure "p" line 1)\n'
        '    invoked from within\n"p"\n    (file "demo.tcl" line 3)\n'
    )


def test_background_error_goes_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        after 0 {error bgfail}
        after 20 {puts "still running"}
    """)
    captured = capfd.readouterr()
    assert status == 0
    assert 'bgfail\n    while executing\n"error bgfail"\n    ("after" script)\n' in captured.err
    assert "still running\n" in captured.out


def test_tclet_bgerror_proc_is_used(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        proc bgerror {m} { puts "handled: $m" }
        after 0 {error first}
        after 5 {
            proc bgerror {m} { error "handler broke" }
            after 0 {error second}
        }
    """)
    captured = capfd.readouterr()
    assert status == 0
    assert "handled: first\n" in captured.out
    assert (
        "bgerror failed to handle background error.\n    Original error: second\n"
        "    Error in bgerror: handler broke\n"
    ) in captured.err


def test_implicit_wait_until_nothing_left(capfd: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    status, _, _ = run_tclet("""
        after 100 {set ::x 1; puts "fired $::x"}
        puts "script done"
    """)
    elapsed = time.monotonic() - t0
    out = capfd.readouterr().out
    assert status == 0
    assert out.index("script done") < out.index("fired 1")
    assert 0.09 <= elapsed < 5


def test_child_interp_after_keeps_tclet_alive(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet("""
        set c [interp create]
        interp alias $c report {} apply {{} {puts "child fired"}}
        interp eval $c {after 50 report}
    """)
    assert status == 0
    assert "child fired\n" in capfd.readouterr().out


def test_stop_from_host_ends_a_waiting_tclet(capfd: pytest.CaptureFixture[str]) -> None:
    broker = LocalBroker()
    rt = TclRuntime(make_spec("puts -nonewline waiting\nvwait forever\nputs never"), broker)
    broker.runtime = rt
    rt.tk.after(50, lambda: rt.stop(143))
    t0 = time.monotonic()
    assert rt.run() == 143
    assert time.monotonic() - t0 < 5
    assert capfd.readouterr().out.endswith("waiting")


def test_globals(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run_tclet(
        """
        puts "argv0=$argv0 argc=$argc argv=$argv"
        puts "embed=[lsort [array get embed_args]]"
        puts "script=[info script] interactive=$tcl_interactive"
        puts "stdin=[catch {gets stdin}]"
        """,
        script_name="app.tcl",
        argv=["a b", "c"],
        embed_args={"width": "300", "src": "x.tcl"},
    )
    out = capfd.readouterr().out
    assert status == 0
    assert "argv0=app.tcl argc=2 argv={a b} c\n" in out
    assert "embed=300 src width x.tcl\n" in out
    assert "script=app.tcl interactive=0\n" in out
    assert "stdin=1\n" in out


# ---- fallback -----------------------------------------------------------------------------------


def test_probe_reports_the_native_path() -> None:
    mode, detail = probe()
    assert mode == "native"
    assert "libtcl" in os.path.basename(detail)


def test_reflected_fallback_echo(echo: TcpServer, capfd: pytest.CaptureFixture[str]) -> None:
    status, rt, broker = run_tclet(
        f"""
        set s [socket 127.0.0.1 {echo.port}]
        fconfigure $s -translation binary
        puts -nonewline $s "abc\\x00\\xff"; flush $s
        puts "blocking [string length [read $s 5]]"
        fconfigure $s -blocking 0
        fileevent $s readable [list apply {{{{s}} {{
            set d [read $s]
            if {{$d ne ""}} {{ puts "event [string length $d]"; close $s }}
        }}}} $s]
        puts -nonewline $s "12345678"; flush $s
        puts "peer [catch {{fconfigure $s -peername}}] sock [lindex [fconfigure $s -sockname] 0]"
        """,
        native=False,
    )
    out = capfd.readouterr().out
    assert status == 0, out
    assert rt.channels.mode == "reflected"
    assert "reflected" in rt.describe_channels()
    assert "blocking 5\n" in out
    assert "event 8\n" in out
    assert "peer 1 sock 127.0.0.1\n" in out
    assert broker.closed == broker.granted


# ---- command budget and heartbeats --------------------------------------------------------------


def test_commands_limit_ends_the_tclet_through_catch(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(
        "puts start\ncatch {while 1 {incr i}}\nputs survived", commands=50_000
    )
    assert status == 137
    assert broker.limits == [("commands", "commands limit 50000")]
    assert capfd.readouterr().out == "start\n"


def test_commands_limit_in_an_event_handler(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(
        "after 10 {catch {while 1 {incr i}}; puts survived}\nputs waiting", commands=50_000
    )
    assert status == 137
    assert broker.limits == [("commands", "commands limit 50000")]
    assert capfd.readouterr().out == "waiting\n"


def test_children_share_the_budget(capfd: pytest.CaptureFixture[str]) -> None:
    """Tcl would give a child of a limited interp a limit of 0; the runtime gives it the rest."""
    status, _, broker = run_tclet(
        """
        interp create c
        puts "child runs [c eval {set x 1}]"
        c eval {interp create g}
        puts "grandchild runs [c eval {g eval {expr {6 * 7}}}]"
        puts "interp limit [catch {interp limit c commands -value {}} m] $m"
        puts "child limit [catch {c limit commands -value {}} m] $m"
        puts "child command still works [c eval {set x}]"
        c eval {catch {g eval {while 1 {incr i}}}}
        puts survived
        """,
        commands=200_000,
    )
    out = capfd.readouterr().out
    assert status == 137, out
    assert broker.limits == [("commands", "commands limit 200000")]
    denied = "1 permission denied: a tclet cannot read or change interpreter limits"
    assert out == (
        "child runs 1\ngrandchild runs 42\n"
        f"interp limit {denied}\nchild limit {denied}\n"
        "child command still works 1\n"
    )


def test_deleted_children_stay_counted(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(
        """
        for {set n 0} {$n < 1000} {incr n} {
            interp create c
            c eval {for {set i 0} {$i < 2000} {incr i} {}}
            interp delete c
        }
        puts "ran $n"
        """,
        commands=100_000,
    )
    assert status == 137
    assert broker.limits
    assert "ran" not in capfd.readouterr().out


def test_tclet_cannot_fake_its_count(capfd: pytest.CaptureFixture[str]) -> None:
    status, _, broker = run_tclet(
        """
        set real [info cmdcount]
        proc ::tcl::info::cmdcount {} {return 0}
        rename ::info ::real_info
        proc ::info {args} {return 0}
        puts "counts [expr {$real > 0}]"
        catch {while 1 {incr i}}
        """,
        commands=50_000,
    )
    assert status == 137
    assert broker.limits
    assert capfd.readouterr().out == "counts 1\n"


def test_no_budget_means_no_limit_and_info_cmdcount_works(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, _, broker = run_tclet(
        """
        set a [info cmdcount]
        for {set i 0} {$i < 100000} {incr i} {}
        interp create c
        puts "[expr {[info cmdcount] - $a > 100000}] [c eval {expr {[info cmdcount] > 0}}]"
        puts [catch {info cmdcount x} m]:$m
        """,
        commands=10**10,  # beyond what Tcl can count: counted, not enforced
    )
    assert status == 0
    assert broker.limits == []
    assert capfd.readouterr().out == '1 1\n1:wrong # args: should be "info cmdcount"\n'


def test_a_granted_policy_brings_its_command_budget(capfd: pytest.CaptureFixture[str]) -> None:
    # No budget at launch; "strict" has one of 50,000 commands, counted from the start.
    status, _, broker = run_tclet(
        "interp create c\nputs [policy strict]\n"
        "catch {c eval {for {set i 0} {$i < 200000} {incr i} {}}}\nputs survived"
    )
    assert status == 137
    assert broker.limits == [("commands", "commands limit 50000")]
    assert capfd.readouterr().out == "strict\n"


def test_a_granted_policy_without_a_budget_lifts_it(capfd: pytest.CaptureFixture[str]) -> None:
    # 50,000 commands at launch; "trusted" has no budget: 200,000 commands then run to the end.
    status, _, broker = run_tclet(
        "puts [policy trusted]\ninterp create c\n"
        "c eval {for {set i 0} {$i < 100000} {incr i} {}}\n"
        "for {set i 0} {$i < 100000} {incr i} {}\nputs survived",
        commands=50_000,
    )
    assert (status, broker.limits) == (0, [])
    assert capfd.readouterr().out == "trusted\nsurvived\n"


def _liveness(broker: LocalBroker, t0: float) -> list[tuple[float, str, int, bool]]:
    """Every report, in order: (seconds since t0, state, commands, waiting)."""
    reports = [(t - t0, s, c, False) for s, c, t in broker.beats]
    reports += [(t - t0, s, c, True) for s, c, t in broker.rests]
    return sorted(reports)


def test_heartbeat_states_and_counts() -> None:
    """A tclet waiting in its loop says so and is silent until an event wakes it; it says it
    runs again as it wakes, while its script runs (script) and after it returned (idle)."""
    broker = LocalBroker()
    t0 = time.monotonic()
    status, _, _ = run_tclet(
        "after 500 {set go 1}\nvwait go\nfor {set i 0} {$i < 1000} {incr i} {}\n"
        "after 500 {set done 1}",
        broker,
    )
    assert status == 0
    reports = _liveness(broker, t0)
    rests = [r for r in reports if r[3]]
    # (Other tests' Tcl timers in this thread may wake it once more: not in a worker.)
    assert {r[1] for r in rests} == {"script", "idle"}, reports
    assert rests[0][1] == "script" and rests[0][0] < 0.45, reports  # rests soon in its vwait
    for rest in rests:
        after = reports[reports.index(rest) + 1 :]
        assert after and not after[0][3], reports  # the next report says it runs again
    # Silent while it waits for each `after 500`: woken when one fires, not before.
    wakes = [r[0] for r in reports if not r[3]]
    assert any(0.45 < t < 0.7 for t in wakes) and any(t > 0.95 for t in wakes), reports
    script_count = max(c for _, s, c, _ in reports if s == "script")
    idle_count = min(c for _, s, c, _ in reports if s == "idle")
    assert idle_count > script_count + 1000  # the loop between the two phases is counted


def test_a_tclet_blocked_after_a_wake_stops_reporting() -> None:
    """The wake is reported before the handler runs: a handler that blocks (a synchronous
    ``after``) leaves the host hearing that it runs, then silence, which the host calls busy."""
    broker = LocalBroker()
    t0 = time.monotonic()
    status, _, _ = run_tclet("after 300 {after 1500; set go 1}\nvwait go", broker)
    assert status == 0
    reports = _liveness(broker, t0)
    before = [r for r in reports if r[0] < 0.35]
    assert before and before[0][3] and not before[-1][3], reports  # rested, then woke
    assert [r for r in reports if 0.35 < r[0] < 1.7] == [], reports  # silent while it blocks


def test_a_rest_inside_update_is_taken_back() -> None:
    """``update`` runs idle handlers, so the tclet may rest inside it; its next pass is a wake,
    and the last word before the script blocks says it runs."""
    broker = LocalBroker()
    t0 = time.monotonic()
    status, _, _ = run_tclet("after 300\nupdate\nafter 1000\n", broker)
    assert status == 0
    during = [r for r in _liveness(broker, t0) if r[0] < 1.2]
    assert during and not during[-1][3], during


def test_a_busy_event_loop_keeps_beating() -> None:
    """A loop that is never idle (an ``after 0`` storm) never rests: it beats as before."""
    broker = LocalBroker()
    rt = TclRuntime(make_spec("proc tick {} {after 0 tick}\nafter 0 tick\nvwait forever"), broker)
    broker.runtime = rt
    rt.tk.after(1500, lambda: rt.stop(0))
    try:
        assert rt.run() == 0
    finally:
        broker.shutdown()
    assert broker.rests == []
    assert len(broker.beats) >= 5, broker.beats


def test_heartbeat_cost(capfd: pytest.CaptureFixture[str]) -> None:
    """One beat's master-side work (books + Python call), for a tclet with no children."""
    broker = LocalBroker()
    rt = TclRuntime(make_spec(""), broker)
    broker.runtime = rt
    rt._wake = WakeDetector(rt.tk)
    rt.tk.call("::tcletd::Budget", rt.slave, "1000000")
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        rt.tk.call("::tcletd::Tighten")
        rt._py_beat("run", "1")
    per = (time.perf_counter() - t0) / n
    print(f"heartbeat work: {per * 1e6:.1f} us")
    assert per < 200e-6


def test_a_child_reusing_a_deleted_childs_name_is_limited(
    capfd: pytest.CaptureFixture[str],
) -> None:
    status, _, broker = run_tclet(
        """
        interp create c
        interp delete c
        interp create c
        c eval {catch {while 1 {incr i}}}
        puts survived
        """,
        commands=50_000,
    )
    assert status == 137
    assert broker.limits
    assert "survived" not in capfd.readouterr().out
