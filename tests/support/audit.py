"""Reading a JSON-lines audit log (docs/audit.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Record = dict[str, Any]  # one JSON object: its values are whatever the record holds


def audit_records(path: Path, event: str | None = None) -> list[Record]:
    """An audit log's records, in order; only those of ``event`` when given."""
    rows: list[Record] = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if event is None or r["event"] == event]


def first_records(path: Path) -> dict[str, Record]:
    """The first record of each event."""
    first: dict[str, Record] = {}
    for record in audit_records(path):
        first.setdefault(str(record["event"]), record)
    return first
