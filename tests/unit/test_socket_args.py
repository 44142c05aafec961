"""``socket``'s argument parsing in the worker (tcletd.worker.sockargs), before any request.

The expected values are tclsh 8.6.13's (tests/worker/test_sockargs_tclsh.py compares the
messages with a real tclsh)."""

from __future__ import annotations

import socket

import pytest

from tcletd.worker.sockargs import TclCommandError, parse_socket_args, tcl_int

WRONG = ("TCL", "WRONGARGS")
NOT_INT = ("TCL", "VALUE", "INTEGER")
TOO_LARGE = ("ARITH", "IOVERFLOW", "integer value too large to represent")


def test_parse_socket_args() -> None:
    a = parse_socket_args(["-myaddr", "10.0.0.1", "-myport", "5000", "-async", "", "80"])
    assert (a.server, a.host, a.port, a.myaddr, a.myport, a.asynchronous) == (
        False,
        "",
        "80",
        "10.0.0.1",
        "5000",
        True,
    )
    s = parse_socket_args(["-server", "cb x", "-myport", "0", "-myaddr", "::1", "0"])
    assert (s.server, s.command, s.myaddr, s.port, s.myport) == (True, "cb x", "::1", "0", "")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("80", 80),
        ("+80", 80),
        ("-80", -80),
        (" \t\n\v\f\r80 \r", 80),
        ("0x50", 80),
        ("0X50", 80),
        ("0o120", 80),
        ("0O120", 80),
        ("0b1010000", 80),
        ("0120", 80),  # a leading 0 is octal in 8.6
        ("0", 0),
        ("00", 0),
        ("-0", 0),
        (" +0x50 ", 80),
        ("0x00000000000000000050", 80),
        ("4294967295", -1),  # any magnitude up to UINT_MAX, wrapped to an int
        ("-4294967295", 1),
        ("-4294967216", 80),
        ("2147483648", -(2**31)),
        ("-2147483649", 2**31 - 1),
    ],
)
def test_tcl_int_reads_what_tcl_reads(text: str, value: int) -> None:
    assert tcl_int(text) == value


@pytest.mark.parametrize(
    "text",
    ["", " ", "-", "+", "0x", "0o", "0b", "0d80", "080", "09", "0000000080", "1_0", "1e3", "1.0",
     "80x", "x80", "0x1g", "0o9", "0b2", "8 0", "--80", "+-80", "- 80", "0x-50", "\u00a080",
     "\u3000 1", "\x0080", "\u0661\u0662", "true"],
)  # fmt: skip
def test_tcl_int_refuses_what_tcl_refuses(text: str) -> None:
    with pytest.raises(TclCommandError) as caught:
        tcl_int(text)
    assert (caught.value.message, caught.value.errorcode) == (
        f'expected integer but got "{text}"',
        NOT_INT,
    )


@pytest.mark.parametrize(
    "text", ["4294967296", "-4294967296", "9223372036854775808", "99999999999999999999"]
)
def test_tcl_int_too_large(text: str) -> None:
    with pytest.raises(TclCommandError) as caught:
        tcl_int(text)
    assert (caught.value.message, caught.value.errorcode) == (TOO_LARGE[2], TOO_LARGE)


@pytest.mark.parametrize(
    ("args", "message", "errorcode"),
    [
        # the option's value is converted where it stands, before the arguments are counted
        (["-myport", "xxxx"], 'expected integer but got "xxxx"', NOT_INT),
        (["-myport", "99999", "h", "p"], "couldn't open socket: port number too high", ("NONE",)),
        (["-myport", "99999"], "couldn't open socket: port number too high", ("NONE",)),
        (["-myport", "2147483647", "h", "1"], "couldn't open socket: port number too high",
         ("NONE",)),
        (["-myport", "4294967296", "h", "p"], TOO_LARGE[2], TOO_LARGE),
        (["-myport", "99999", "-bogus", "h", "p"], "couldn't open socket: port number too high",
         ("NONE",)),
        (["-myport", "x", "-myport", "99999"], 'expected integer but got "x"', NOT_INT),
        (["-myport", "1", "-myport", "x"], 'expected integer but got "x"', NOT_INT),
        (["-server", "cb", "-myport", "xx", "0"], 'expected integer but got "xx"', NOT_INT),
        (["-server", "cb", "-myport", "99999", "0"],
         "couldn't open socket: port number too high", ("NONE",)),
        (["-myport", "99999", "-server", "cb", "0"],
         "couldn't open socket: port number too high", ("NONE",)),
        # a value Tcl takes: the count or the server rule decides
        (["-myport", "0x50"], None, WRONG),
        (["-myport", "0x50", "h"], None, WRONG),
        (["-myport", " 80 ", "h", "p", "q"], None, WRONG),
        (["-server", "cb", "-myport", "5", "0"], "option -myport is not valid for servers",
         ("NONE",)),
        (["-server", "cb", "-myport", "-1"], "option -myport is not valid for servers",
         ("NONE",)),
        (["-server", "cb", "-myport", "0x0"], None, WRONG),
        (["-server", "cb", "-myport", " 00 "], None, WRONG),
    ],
)  # fmt: skip
def test_socket_option_values_are_converted_in_order(
    args: list[str], message: str | None, errorcode: tuple[str, ...]
) -> None:
    with pytest.raises(TclCommandError) as caught:
        parse_socket_args(args)
    if message is None:
        assert caught.value.message.startswith("wrong # args: should be"), caught.value.message
    else:
        assert caught.value.message == message
    assert caught.value.errorcode == errorcode


@pytest.mark.parametrize(
    ("myport", "sent"),
    [("0x50", "80"), (" +0120 ", "80"), ("-4294967216", "80"), ("65535", "65535"),
     ("0", ""), ("-0x0", ""), ("-1", "-1"), ("4294967295", "4294967295")],
)  # fmt: skip
def test_the_host_gets_the_port_tcl_would_bind(myport: str, sent: str) -> None:
    """A Tcl integer goes to the host as plain decimal; 0 is no local port (Tcl binds none);
    a negative one as written, for the host to refuse (Tcl's getaddrinfo refuses it too)."""
    assert parse_socket_args(["-myport", myport, "h", "80"]).myport == sent


def _service(name: str) -> bool:
    try:
        socket.getservbyname(name, "tcp")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _service("http"), reason="no services database with http")
def test_a_service_name_is_a_port_and_goes_to_the_host_as_written() -> None:
    assert parse_socket_args(["-myport", "http", "h", "80"]).myport == "http"
    with pytest.raises(TclCommandError) as caught:
        parse_socket_args(["-myport", "http"])
    assert caught.value.errorcode == WRONG
    with pytest.raises(TclCommandError) as caught:
        parse_socket_args(["-server", "cb", "-myport", "http", "0"])
    assert caught.value.message == "option -myport is not valid for servers"


def test_a_huge_value_is_refused_without_a_lookup() -> None:
    text = "x" * 100_000
    with pytest.raises(TclCommandError) as caught:
        parse_socket_args(["-myport", text])
    assert caught.value.message == f'expected integer but got "{text}"'
