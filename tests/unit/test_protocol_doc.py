"""docs/protocol.md names the requests and events the host has: every op in the host's registry
(tcletd.host.ops.OPERATIONS) has its section and every event the host sends its row, and the
doc's examples name no other, so the doc cannot drift from the code."""

from __future__ import annotations

import ast
import re

from support import ROOT

from tcletd.host.ops import OPERATIONS
from tcletd.host.outputlog import STREAMS
from tcletd.host.registry import ROW_KEYS

DOC = ROOT / "docs" / "protocol.md"
# What sends the host's frames: a connection, and its operations.
SENDERS = [ROOT / "tcletd" / "host" / "connection.py", *(ROOT / "tcletd/host/ops").glob("*.py")]


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def sent_events() -> set[str]:
    """Every ``{"event": "NAME", ...}`` the host's senders build, every listing they send with
    ``send_rows(session, "NAME", rows)``, and the output streams (sent as ``{"event": stream}``)."""
    names = set(STREAMS)
    for path in SENDERS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "send_rows":
                event = node.args[1]
                assert isinstance(event, ast.Constant), ast.dump(node)
                names.add(str(event.value))
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    named = isinstance(key, ast.Constant) and key.value == "event"
                    if named and isinstance(value, ast.Constant):
                        names.add(str(value.value))
    return names


def test_every_op_in_the_registry_has_its_section_and_no_other() -> None:
    requests = _section(DOC.read_text(), "Requests")
    headings = re.findall(r"^### (.+)$", requests, re.MULTILINE)
    documented = {name for h in headings for name in re.findall(r"`([a-z_]+)`", h)}
    assert documented == set(OPERATIONS)


def test_every_event_the_host_sends_has_its_row_and_no_other() -> None:
    events = _section(DOC.read_text(), "Events (host to client)")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", events, re.MULTILINE))
    assert documented == sent_events()
    assert {"hello", "exit", "error", "stdout", "launched"} <= documented  # the scan sees them


def test_the_docs_frames_name_only_known_ops_and_events() -> None:
    text = DOC.read_text()
    ops = set(re.findall(r'"op":"([a-z_]+)"', text))
    events = set(re.findall(r'"event":"([a-z_]+)"', text))
    assert ops and ops <= set(OPERATIONS)
    # A record's own "event" (an audit record inside an events reply) is the audit log's.
    audit = (ROOT / "docs" / "audit.md").read_text()
    audit_events = set(re.findall(r"^### `([a-z_]+)`$", audit, re.MULTILINE))
    assert events <= sent_events() | audit_events


def test_the_ps_row_keys_are_the_hosts() -> None:
    requests = _section(DOC.read_text(), "Requests")
    ps = requests[requests.index("### `ps`") : requests.index("### `logs`")]
    rows = ps[ps.index("| key |") :]
    assert tuple(re.findall(r"^\| `([a-z_]+)` \|", rows, re.MULTILINE)) == ROW_KEYS
