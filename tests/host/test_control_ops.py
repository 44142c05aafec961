"""The launch request, the resident host's registry of control operations and the CLI's table of
commands: one declaration each, and what the wire, the API and the command line make of them."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tcletd.api import Host
from tcletd.cli import commands as cli
from tcletd.cli.client import launch_fields
from tcletd.host.connection import ControlConnection
from tcletd.host.ops import OPERATIONS, unknown_op
from tcletd.policy import load_policy
from tcletd.shared.control import RUN_FIELDS, FrameReader, encode, hello, run_header
from tcletd.shared.errors import EXIT_USAGE
from tcletd.shared.launch import DEFAULT_SCRIPT_NAME, LaunchRequest, RequestInvalid, decode_run

ROOT = Path(__file__).resolve().parents[2]
OPS = "hello, run, launch, ps, logs, kill, wait, events, status, signal or drop"


def _run_args(**given: Any) -> argparse.Namespace:
    args: dict[str, Any] = {"origin": None, "policy": None, "arg": [], "args": [], "limit": []}
    return argparse.Namespace(**{**args, **given})


# ---- the launch request -------------------------------------------------------------------------


def test_clients_name_the_launch_requests_own_fields() -> None:
    assert LaunchRequest.__struct_fields__ == RUN_FIELDS
    fields = launch_fields(
        _run_args(policy="trusted", arg=["Color=blue"], args=["a b"], limit=["cpu=1s"]),
        "puts hi",
        "hi.tcl",
    )
    assert tuple(fields) == RUN_FIELDS
    request = LaunchRequest(**fields)
    assert request.embed_args == {"color": "blue"}
    assert request.origin == "file://" + str(Path("hi.tcl").resolve())
    header = run_header(fields)
    assert header == {"op": "run", **{k: v for k, v in fields.items() if k != "script"}}


def test_a_run_header_refuses_a_field_the_request_does_not_have() -> None:
    with pytest.raises(ValueError, match="embed_arg"):
        run_header({"script": "", "embed_arg": {}})


def test_a_run_frame_decodes_to_a_request_and_framing_is_not_a_field() -> None:
    request = decode_run(
        {"op": "run", "size": 7, "script": "ignored", "argv": ["x"], "extra": 1}, b"puts hi"
    )
    assert request == LaunchRequest(script="puts hi", argv=["x"])
    assert request.script_name == DEFAULT_SCRIPT_NAME
    assert (request.policy, request.origin, request.embed_args, request.limits) == (
        None,
        None,
        {},
        [],
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"argv": "a b"}, "argv: expected list"),
        ({"argv": [1]}, "argv: expected a list of strings"),
        ({"argv": None}, "argv: expected list"),
        ({"limits": [True]}, "limits: expected a list of strings"),
        ({"embed_args": {"a": 1}}, "embed_args: expected string values"),
        ({"embed_args": ["a"]}, "embed_args: expected dict"),
        ({"policy": 7}, "policy: expected str"),
        ({"origin": False}, "origin: expected str"),
        ({"script_name": None}, "script_name: expected str"),
        ({"limits": 1, "policy": 1}, "policy: expected str"),  # the first in the request's order
    ],
)
def test_a_bad_field_is_named(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        decode_run({"op": "run", **fields}, b"puts hi")
    assert str(info.value) == f"run request: {message}"
    assert info.value.exit_status == EXIT_USAGE


def test_a_script_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(RequestInvalid, match=r"^run request: script: not UTF-8 \(invalid"):
        decode_run({"op": "run"}, b"\xff\xfe")


# ---- the registry of operations -----------------------------------------------------------------


def test_the_registry_names_each_operation_once_with_its_help() -> None:
    assert list(OPERATIONS) == [
        "hello", "run", "launch", "ps", "logs", "kill", "wait", "events", "status", "signal",
        "drop",
    ]  # fmt: skip
    for name, operation in OPERATIONS.items():
        assert operation.name == name
        assert operation.help and "\n" not in operation.help
    assert unknown_op("x") == f"unknown op 'x' (expected {OPS})"


# A tclet that prints, then writes to stderr until that fails (the client dropped it), says so
# on stdout and waits to be ended.
DROPS = """
puts out; flush stdout
proc tick {} {
    if {[catch {puts stderr e; flush stderr} err]} {
        puts "stderr gone"; flush stdout; return
    }
    after 20 tick
}
tick
vwait forever
"""


async def _client(host: Host) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A control connection on ``host``, over a socket pair (the client is this process)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    await asyncio.get_running_loop().connect_accepted_socket(
        lambda: ControlConnection(host, lambda _c: None), theirs
    )
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    writer.write(hello())
    return reader, writer


async def _frames_until(
    reader: asyncio.StreamReader,
    frames: FrameReader,
    got: list[dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
) -> None:
    """Read frames into ``got`` until one satisfies ``done`` (or an error frame comes)."""
    while not got or not (done(got[-1]) or got[-1].get("event") == "error"):
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, got
        for header, payload in frames.feed(data):
            if header.get("event") == "hello":
                continue  # the host's greeting
            got.append({**header, "payload": payload} if payload else header)
            if done(got[-1]):
                return


async def _talk(frames: list[bytes], until: str) -> list[dict[str, Any]]:
    """Send ``frames`` to a control connection of a real host; its frames up to ``until``."""
    async with Host() as host:
        reader, writer = await _client(host)
        for frame in frames:
            writer.write(frame)
        got: list[dict[str, Any]] = []
        await _frames_until(reader, FrameReader(1 << 20), got, lambda f: f.get("event") == until)
        writer.close()
        return got


def test_the_control_server_dispatches_each_op_to_its_operation() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with Host() as host:
            reader, writer = await _client(host)
            frames = FrameReader(1 << 20)
            got: list[dict[str, Any]] = []
            writer.write(
                encode({"op": "run", "script_name": "s.tcl", "argv": ["a"]}, DROPS.encode())
            )
            await _frames_until(reader, frames, got, lambda f: f.get("event") == "stderr")
            writer.write(encode({"op": "status"}))
            writer.write(encode({"op": "signal", "signum": int(signal.SIGUSR1)}))
            writer.write(encode({"op": "drop", "stream": "stderr"}))
            await _frames_until(reader, frames, got, lambda f: f.get("payload") == b"stderr gone\n")
            launched = host.status()
            writer.write(encode({"op": "signal", "signum": int(signal.SIGTERM)}))
            await _frames_until(reader, frames, got, lambda f: f.get("event") == "exit")
            writer.close()
            return launched, got

    launched, got = asyncio.run(scenario())
    (entry,) = launched
    started = got[0]
    assert started == {"event": "started", "id": entry["id"], "pid": entry["pid"]}
    statuses = [f for f in got if f["event"] == "status"]
    assert len(statuses) == 2  # one for status, one for SIGUSR1
    assert all([t["id"] for t in f["tclets"]] == [entry["id"]] for f in statuses)
    stdout = b"".join(f["payload"] for f in got if f["event"] == "stdout")
    assert stdout == b"out\nstderr gone\n"  # the drop reached the tclet's writes
    assert any(f["event"] == "stderr" for f in got)
    assert got[-1] == {
        "event": "exit",
        "id": entry["id"],
        "status": 143,
        "reason": "tcletd got SIGTERM",
        "by_host": True,
    }


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (encode({"op": "nope"}), f"unknown op 'nope' (expected {OPS})"),
        (encode({"op": ["run"]}), f"unknown op ['run'] (expected {OPS})"),
        (encode({"stream": "stdout"}), f"unknown op None (expected {OPS})"),
        # A drop of no stream of the tclet's is no drop, as it never was.
        (encode({"op": "drop", "stream": "x"}), "unknown op 'drop' (expected hello, run,"),
        (encode({"op": "signal", "signum": 2}), "signal: no tclet is running on this connection"),
    ],
)
def test_a_frame_no_operation_takes_is_an_error(frame: bytes, message: str) -> None:
    got = asyncio.run(_talk([frame], "error"))
    assert got[-1]["event"] == "error"
    assert got[-1]["message"].startswith(message), got
    assert got[-1]["status"] == EXIT_USAGE


def test_a_second_run_or_a_bad_signal_on_a_connection_is_an_error() -> None:
    script = encode({"op": "run"}, b"after 5000")
    got = asyncio.run(_talk([script, encode({"op": "run"}, b"y")], "error"))
    assert got[-1]["message"] == "one run per connection"
    got = asyncio.run(_talk([script, encode({"op": "signal", "signum": 9})], "error"))
    assert got[-1]["message"] == "signal: 9 is not one a client may pass on"


# ---- the API ------------------------------------------------------------------------------------


def test_run_tclet_takes_what_launch_takes() -> None:
    launch = inspect.signature(Host.launch)
    run_tclet = inspect.signature(Host.run_tclet)
    assert run_tclet.parameters == launch.parameters
    assert run_tclet.return_annotation == "TcletResult"
    assert inspect.iscoroutinefunction(Host.run_tclet)


# A master config that grants every policy to ORIGIN: a tclet whose policy was not named by its
# launcher may then ask for another; one whose policy was named (fixed) may not.
ORIGIN = "http://127.0.0.1:8080/app.tcl"
MASTER = '[[grant]]\npolicy = "*"\norigins = ["http://127.0.0.1:8080/*"]\n'
ASKS = 'puts "[llength $argv] [catch {policy trusted}]"'  # argc, then 1 when refused


def test_the_api_takes_a_policy_object_a_path_or_a_request(tmp_path: Path) -> None:
    master = tmp_path / "master.toml"
    master.write_text(MASTER)

    async def scenario() -> list[tuple[str, int]]:
        ran: list[tuple[str, int]] = []
        async with Host(master=master) as host:
            for policy in (load_policy("inside"), ROOT / "policies" / "home.toml", None):
                out: list[bytes] = []
                tclet = host.launch(
                    ASKS,
                    script_name="asks.tcl",
                    policy=policy,
                    origin=ORIGIN,
                    argv=("a", "b"),
                    embed_args=None,
                    on_stdout=out.append,
                    on_stderr=out.append,
                    limits=("cpu=5s",),
                )
                status = (await tclet.wait()).status
                ran.append((b"".join(out).decode(), status))
            out = []
            request = LaunchRequest(script=ASKS, origin=ORIGIN, argv=["c"], limits=["cpu=5s"])
            tclet = host.launch_request(request, on_stdout=out.append, on_stderr=out.append)
            status = (await tclet.wait()).status
            ran.append((b"".join(out).decode(), status))
            out = []
            result = await host.run_tclet(
                "puts [info script]", script_name="x.tcl", on_stdout=out.append
            )
            ran.append((b"".join(out).decode(), result.status))
        return ran

    ran = asyncio.run(scenario())
    assert ran == [("2 1\n", 0), ("2 1\n", 0), ("2 0\n", 0), ("1 0\n", 0), ("x.tcl\n", 0)]


# ---- the CLI's table of commands ----------------------------------------------------------------

SAMPLES = {
    "run": ["run", "x.tcl"],
    "check": ["policy", "check", "h", "1"],
    "lint": ["policy", "lint", "f"],
    "serve": ["serve"],
    "status": ["status"],
    "launch": ["launch", "x.tcl"],
    "ps": ["ps", "--all", "--json"],
    "logs": ["logs", "--follow", "--tail", "3", "abcd"],
    "kill": ["kill", "--signal", "KILL", "abcd"],
    "wait": ["wait", "abcd"],
    "events": ["events", "--follow", "--id", "abcd"],
    "page": ["page", "x.html"],
    "version": ["version"],
    "doctor": ["doctor"],
    "attack": ["attack", "--quick", "--only", "busy_loop"],
}


def _leaves(commands: tuple[cli.Command, ...]) -> list[cli.Command]:
    return [leaf for c in commands for leaf in (_leaves(c.actions) if c.actions else [c])]


def test_each_command_is_declared_once_with_its_handler() -> None:
    leaves = _leaves(cli.COMMANDS)
    assert sorted(c.name for c in leaves) == sorted(SAMPLES)
    parser = cli.build_parser()
    for command in leaves:
        assert command.handle is not None
        assert parser.parse_args(SAMPLES[command.name]).handle is command.handle


def test_a_run_on_a_resident_host_imports_no_host_engine_or_msgspec(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from tcletd.cli.main import main\n"
        f"status = main(['run', '--host', {str(tmp_path / 'none.sock')!r}, 'examples/hello.tcl'])\n"
        "print(json.dumps([status, sorted(sys.modules)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    status, modules = json.loads(out.stdout)
    assert status == 69, out.stderr
    heavy = ("asyncio", "zmq", "msgspec", "typing", "dataclasses", "tcletd.host", "tcletd.api")
    loaded = [m for m in modules if m.startswith(heavy)]
    assert loaded == [], loaded
    # Nothing of the policy package: the actions registry is for policy check's parser alone.
    policy = [m for m in modules if m.startswith("tcletd.policy")]
    assert policy == [], policy


def test_a_reply_decided_before_the_connection_failed_is_not_written_after_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A launch's reply waits for the fork; a bad frame right behind it fails the connection
    (its write side shut) first. The reply is dropped, not written into the shut side (which
    raised in the host's loop), and the tclet still starts: it is the host's."""

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        async with Host() as host:
            reader, writer = await _client(host)
            launch = encode({"op": "launch", "script_name": "s.tcl"}, b"after 200 {exit 3}")
            writer.write(launch + encode({"op": "nope"}))
            frames, got = FrameReader(1 << 20), []  # type: FrameReader, list[dict[str, Any]]
            await _frames_until(reader, frames, got, lambda f: False)
            await asyncio.sleep(0.3)  # the fork, and the reply it would have sent
            (entry,) = host.list(all=True)
            result = await host.wait(str(entry["id"]))
            writer.close()
            return got, f"{result.status}"

    with caplog.at_level("ERROR"):
        got, status = asyncio.run(scenario())
    assert got[-1]["event"] == "error" and "unknown op" in got[-1]["message"], got
    assert status == "3"  # the detached tclet ran to its end
    # The loop's exception handler logs what a callback raised, with the traceback apart.
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert not errors, [(r.getMessage(), r.exc_info) for r in errors]
