"""The audit log's events as the code writes them and as docs/audit.md documents them."""

from __future__ import annotations

import re

from support import ROOT


def test_every_event_the_host_writes_is_documented() -> None:
    """docs/audit.md's events (a section each) and the events the code writes are the same
    set: an event added without its documentation (or documented and gone) fails here."""
    written: set[str] = set()
    for path in (ROOT / "tcletd").rglob("*.py"):
        # Records are written as self._audit("event", ...), records("event", ...) inside
        # TcletRecords (self("event", ...)) or TcletRecords(...)("event", ...).
        written |= set(re.findall(r'(?:\b_audit|\bself|\))\(\s*"([a-z_]+)"', path.read_text()))
    doc = (ROOT / "docs" / "audit.md").read_text()
    events = doc[doc.index("## Events") : doc.index("Reasons the host gives")]
    documented = set(re.findall(r"^### `([a-z_]+)`$", events, re.MULTILINE))
    assert written == documented
    assert {"launch", "exit", "decision", "penalty"} <= written  # the scan sees the writers
