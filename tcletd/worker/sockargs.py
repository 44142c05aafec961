"""``socket``'s arguments, read as Tcl 8.6.13's ``Tcl_SocketObjCmd`` reads them, with its messages.

Worker side of the trust boundary: the arguments are the untrusted tclet's, parsed in the
worker's master before anything is asked of the host. Tcl converts an option's value while it
parses the options, before it counts the arguments, so a bad ``-myport`` is an error at once
(``socket -myport xxxx``: ``expected integer but got "xxxx"``, not "wrong # args"). The target
port is left as the tclet wrote it: the host canonicalises and checks it with the policy's
wording (``permission denied: non numeric port ...``, the plugin's).
"""

from __future__ import annotations

import re
import socket

__all__ = ["SOCKET_USAGE", "SocketArgs", "TclCommandError", "parse_socket_args", "tcl_int"]


class TclCommandError(Exception):
    """A Tcl error for the tclet: exactly ``message`` with ``-errorcode`` ``errorcode``."""

    def __init__(self, message: str, errorcode: tuple[str, ...] = ("NONE",)) -> None:
        super().__init__(message)
        self.message = message
        self.errorcode = errorcode


SOCKET_USAGE = (
    'wrong # args: should be "socket ?-myaddr addr? ?-myport myport? ?-async? host port"'
    ' or "socket -server command ?-myaddr addr? port"'
)

# Tcl_GetIntFromObj's syntax (checked against tclsh 8.6.13): ASCII white space around, one
# sign, then 0x/0o/0b digits, a leading 0 for octal ("0120" is 80, "080" an error), or decimal;
# no "0d", no "_", no white space inside.
_INT = re.compile(
    r"[ \t\n\v\f\r]*([+-]?)"
    r"(?:0[xX]([0-9a-fA-F]+)|0[oO]([0-7]+)|0[bB]([01]+)|0([0-7]*)|([1-9][0-9]*))"
    r"[ \t\n\v\f\r]*\Z"
)
_UINT_MAX = 2**32 - 1
_TOO_LARGE = "integer value too large to represent"
_LONGEST_SERVICE = 256  # longer names are in no services database: no lookup for them


def tcl_int(text: str) -> int:
    """``text`` as ``Tcl_GetIntFromObj`` reads it: any magnitude up to ``UINT_MAX`` is taken and
    wrapped to a C ``int`` (``4294967295`` is -1); raises :class:`TclCommandError` otherwise."""
    m = _INT.match(text)
    if m is None:
        raise TclCommandError(f'expected integer but got "{text}"', ("TCL", "VALUE", "INTEGER"))
    sign, hexa, octal, binary, zero_octal, decimal = m.groups()
    if hexa is not None:
        value = int(hexa, 16)
    elif octal is not None:
        value = int(octal, 8)
    elif binary is not None:
        value = int(binary, 2)
    elif zero_octal is not None:
        value = int(zero_octal or "0", 8)
    else:
        value = int(decimal)
    if value > _UINT_MAX:
        raise TclCommandError(_TOO_LARGE, ("ARITH", "IOVERFLOW", _TOO_LARGE))
    if sign == "-":
        value = -value
    return (value + 2**31) % 2**32 - 2**31


def _option_port(text: str) -> str:
    """A ``-myport`` value as ``TclSockGetPort`` takes it: a Tcl integer, else a service name
    known to the system, else the integer's error; above 65535 "port number too high".

    Returns what the host is asked for: a port as plain decimal, "" for 0 (Tcl binds no local
    port then), a service name as written (the policy decides whether names may be ports), and
    a negative number as written (Tcl passes it to ``getaddrinfo``, which refuses it; the host's
    policy refuses it as not a port).
    """
    try:
        port = tcl_int(text)
    except TclCommandError:
        if 0 < len(text) <= _LONGEST_SERVICE:
            try:
                socket.getservbyname(text, "tcp")
                return text
            except (OSError, ValueError, UnicodeError):
                pass
        raise
    if port > 0xFFFF:
        raise TclCommandError("couldn't open socket: port number too high")
    if port < 0:
        return text
    return str(port) if port else ""


class SocketArgs:
    """``socket``'s arguments as Tcl_SocketObjCmd (8.6.13) reads them; ports stay strings."""

    __slots__ = ("asynchronous", "command", "host", "myaddr", "myport", "port", "server")

    def __init__(self) -> None:
        self.server = False
        self.command = ""
        self.asynchronous = False
        self.myaddr = ""
        self.myport = ""
        self.host = ""
        self.port = ""


def _wrong_args() -> TclCommandError:
    # Made when raised, not on every call: every grant parses its arguments here.
    return TclCommandError(SOCKET_USAGE, ("TCL", "WRONGARGS"))


def parse_socket_args(args: tuple[str, ...] | list[str]) -> SocketArgs:
    """Parse like tclsh 8.6.13, in its order and with its messages; raises
    :class:`TclCommandError`. ``-myport`` is converted as Tcl converts it (see
    :func:`_option_port`); the target port is the host's to check.
    """
    out = SocketArgs()
    n = len(args)
    a = 0
    while a < n:
        arg = args[a]
        if not arg.startswith("-"):
            break
        if arg == "-async":
            if out.server:
                raise TclCommandError("cannot set -async option for server sockets")
            out.asynchronous = True
        elif arg in ("-myaddr", "-myport", "-server"):
            if arg == "-server" and out.asynchronous:
                raise TclCommandError("cannot set -async option for server sockets")
            a += 1
            if a >= n:
                raise TclCommandError(f"no argument given for {arg} option")
            if arg == "-myaddr":
                out.myaddr = args[a]
            elif arg == "-myport":
                out.myport = _option_port(args[a])
            else:
                out.server = True
                out.command = args[a]
        else:
            raise TclCommandError(
                f'bad option "{arg}": must be -async, -myaddr, -myport, or -server',
                ("TCL", "LOOKUP", "INDEX", "option", arg),
            )
        a += 1
    if out.server:
        if out.myport:
            raise TclCommandError("option -myport is not valid for servers")
    elif a < n:
        out.host = args[a]
        a += 1
    else:
        raise _wrong_args()
    if a != n - 1:
        raise _wrong_args()
    out.port = args[a]
    return out
