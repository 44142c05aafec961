"""The audit log: one JSON line per decision, lifecycle event and limit event.

Host side of the trust boundary. Records are written by the host only; nothing a tclet says is
written unescaped (JSON encoding does that) or unbounded (request words are capped by the wire).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import msgspec


class AuditLog:
    """Appends JSON lines to a file; a disabled log (no path) drops records at no cost."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder()
        if self.path is not None:
            self._file = self.path.open("ab", buffering=0)

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def record(self, event: str, **fields: Any) -> None:
        if self._file is None:
            return
        entry = {"time": round(time.time(), 6), "event": event, **fields}
        self._file.write(self._encoder.encode(entry) + b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
