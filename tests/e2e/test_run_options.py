"""``tcletd run``'s origin and policy options end to end: ``--origin`` is checked as ``policy
check`` checks it (exit 2, naming the option) before anything runs, embedded or ``--host``; a
script from standard input has the API's default origin (socket host ``localhost``); ``--policy
NAME --policy-dir DIR`` runs the operator's policy (``--limit`` checked against it) and
``--master FILE`` decides what ``policy NAME`` grants; with ``--host`` both are an error, as
``--nameserver`` is: a resident host uses its own. Real processes, a real TCP listener."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from support.audit import audit_records
from support.net import TcpServer, echo_handler
from support.processes import run_tcletd

pytestmark = pytest.mark.timeout(60)

GRANTED = "http://127.0.0.1:8080/app.tcl"
# The operator's own policy: loopback on any port, whatever the origin.
MINE = """
description = "the operator's: loopback only"
[connect]
allow = ["127.0.0.1 *"]
"""
MASTER = """
[[grant]]
policy = "home"
origins = ["*", "UNKNOWN"]

[[grant]]
policy = "inside"
origins = ["http://127.0.0.1:8080/*"]
"""
ASK_INSIDE = "puts [catch {policy inside} m]:$m\nputs [policy]\n"


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.tcl"
    path.write_text(text)
    return path


def _operator(tmp_path: Path) -> Path:
    """A policy directory with ``mine.toml`` and a ``master.toml`` granting ``inside``."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mine.toml").write_text(MINE)
    (policies / "master.toml").write_text(MASTER)
    return policies


@pytest.mark.parametrize("where", [[], ["--host", "/nonexistent/control.sock"]])
def test_an_origin_that_cannot_be_parsed_is_a_usage_error(tmp_path: Path, where: list[str]) -> None:
    script = _script(tmp_path, "puts ran")
    ran = run_tcletd(["run", *where, "--origin", "not a url", str(script)])
    assert (ran.status, ran.stdout) == (2, "")
    assert ran.stderr == "tcletd: --origin: cannot parse origin URL 'not a url'\n"


def test_a_script_from_stdin_has_the_api_default_origin(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with TcpServer(echo_handler) as server:
        script = f"set s [socket localhost {server.port}]\nputs connected\nclose $s\n"
        ran = run_tcletd(["run", "--audit", str(audit), "-"], stdin=script, cwd=tmp_path)
    assert (ran.status, ran.stdout) == (0, "connected\n"), ran.stderr
    # The directory it ran in, as Host.launch gives a tclet without an origin.
    origins = {r["origin"] for r in audit_records(audit)}
    assert origins == {"file://" + quote(os.fsencode(tmp_path.resolve())) + "/"}, origins


def test_policy_dir_names_the_operators_policy_and_limits_are_checked_there(
    tmp_path: Path,
) -> None:
    policies = _operator(tmp_path)
    with TcpServer(echo_handler) as server:
        script = _script(
            tmp_path, f"puts [policy]\nset s [socket 127.0.0.1 {server.port}]\nputs connected\n"
        )
        # From an origin home would refuse 127.0.0.1 for; mine allows loopback.
        args = ["--origin", "http://192.0.2.1/app.tcl", "--limit", "cpu=5s", str(script)]
        ran = run_tcletd(["run", "--policy", "mine", "--policy-dir", str(policies), *args])
        assert (ran.status, ran.stdout) == (0, "mine\nconnected\n"), ran.stderr
        # Without the directory the name is unknown: the --limit check says so, exit 2.
        ran = run_tcletd(["run", "--policy", "mine", *args])
    assert ran.status == 2 and 'unknown policy "mine"' in ran.stderr, ran.stderr


def test_master_decides_what_policy_name_grants(tmp_path: Path) -> None:
    policies = _operator(tmp_path)
    script = str(_script(tmp_path, ASK_INSIDE))
    master = ["--master", str(policies / "master.toml"), "--policy-dir", str(policies)]
    ran = run_tcletd(["run", *master, "--origin", GRANTED, script])
    assert (ran.status, ran.stdout) == (0, "0:inside\ninside\n"), ran.stderr
    # The shipped master config grants no one inside.
    ran = run_tcletd(["run", "--origin", GRANTED, script])
    assert ran.status == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        '1:permission denied: policy "inside" not allowed for this origin',
        "home",
    ]


@pytest.mark.parametrize(
    ("option", "what"),
    [("--master", "master config"), ("--policy-dir", "policy directory")],
)
def test_a_resident_host_uses_its_own(tmp_path: Path, option: str, what: str) -> None:
    script = _script(tmp_path, "puts ran")
    ran = run_tcletd(
        ["run", "--host", "/nonexistent/control.sock", option, str(tmp_path), str(script)]
    )
    assert (ran.status, ran.stdout) == (2, "")
    assert ran.stderr == f"tcletd: {option}: a resident host uses its own {what}\n"
