"""A tclet's output as it wrote it, kept bounded for ``tcletd logs``, and followed live.

Host side of the trust boundary: the bytes are the tclet's and are never parsed but to find line
ends for ``--tail``. Every tclet has one log, fed by its output relay before the bytes go on to
whoever is attached (:meth:`OutputLog.tee`). The host keeps the last ``keep`` bytes (default
1 MiB; the oldest go first and are counted per stream, so a reader learns how many it missed), and
with ``serve --log-dir`` appends every byte to a file per tclet until the file reaches its cap.

Followers (``logs --follow``) get each chunk as it is kept; a follower that reads slower than the
tclet writes holds the tclet's relay, as an attached client does (backpressure: the tclet's writes
block, the host buffers nothing more), so what it gets is complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KEEP = 1 << 20
DEFAULT_FILE_CAP = 16 << 20
STREAMS = ("stdout", "stderr")

Chunk = tuple[str, bytes]
Follower = Callable[[str, bytes], None]
Sink = Callable[[bytes], None]


class OutputLog:
    """The last ``keep`` bytes a tclet wrote, in order, with its stream; its followers; its file."""

    def __init__(
        self, keep: int = DEFAULT_KEEP, path: Path | None = None, file_cap: int = DEFAULT_FILE_CAP
    ) -> None:
        self.keep = keep
        self._chunks: deque[Chunk] = deque()
        self.size = 0
        self.dropped = dict.fromkeys(STREAMS, 0)
        self._followers: list[Follower] = []
        self._fd = -1
        self._file_left = file_cap
        self._file_cap = file_cap
        self.path = path
        if path is not None:
            self._open(path)

    def tee(self, stream: str, downstream: Sink | None) -> Sink:
        """The relay's sink for ``stream``: kept here, then handed to ``downstream`` (an
        attached client, the embedder's callback), if any."""

        def sink(data: bytes) -> None:
            self.write(stream, data)
            if downstream is not None:
                downstream(data)

        return sink

    def write(self, stream: str, data: bytes) -> None:
        self._chunks.append((stream, data))
        self.size += len(data)
        self._trim()
        self._to_file(data)
        for follower in list(self._followers):
            follower(stream, data)

    def follow(self, follower: Follower) -> Callable[[], None]:
        """Hand ``follower`` every chunk from now on; returns what stops it."""
        self._followers.append(follower)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._followers.remove(follower)

        return stop

    def history(self, streams: Iterable[str] = STREAMS, tail: int | None = None) -> list[Chunk]:
        """The kept chunks of ``streams`` in the order the host read them (each stream in the
        order the tclet wrote it; between the two streams only as the worker's own buffering let
        them reach the host: a tclet's stdout on a pipe is buffered); with ``tail``, only the last
        ``tail`` lines of each stream (a last line without its newline counts as one)."""
        wanted = set(streams)
        start = {s: self._tail_start(s, tail) for s in wanted} if tail is not None else {}
        seen = dict.fromkeys(wanted, 0)
        out: list[Chunk] = []
        for stream, data in self._chunks:
            if stream not in wanted:
                continue
            at, seen[stream] = seen[stream], seen[stream] + len(data)
            skip = start.get(stream, 0) - at
            if skip < len(data):
                out.append((stream, data[max(skip, 0) :]))
        return out

    def _tail_start(self, stream: str, lines: int) -> int:
        """Where in ``stream``'s kept bytes its last ``lines`` lines begin."""
        text = b"".join(d for s, d in self._chunks if s == stream)
        end = len(text) - 1 if text.endswith(b"\n") else len(text)
        for _ in range(lines):
            end = text.rfind(b"\n", 0, end)
            if end < 0:
                return 0
        return end + 1 if lines else len(text)

    def discard(self) -> None:
        """Let the kept bytes go (an ended tclet's, when the host keeps too many): they count as
        dropped."""
        for stream, data in self._chunks:
            self.dropped[stream] += len(data)
        self._chunks.clear()
        self.size = 0

    def close(self) -> None:
        """The tclet has ended: no more output, no followers; its file is closed."""
        self._followers.clear()
        self.close_file()

    # ---- bounds -------------------------------------------------------------------------------

    def _trim(self) -> None:
        while self.size > self.keep and self._chunks:
            stream, data = self._chunks[0]
            excess = self.size - self.keep
            if excess >= len(data):
                self._chunks.popleft()
                cut = len(data)
            else:
                self._chunks[0] = (stream, data[excess:])
                cut = excess
            self.size -= cut
            self.dropped[stream] += cut

    def _open(self, path: Path) -> None:
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:  # the tclet runs on; its log is only in memory
            log.warning("output log: cannot open %s: %s", path, exc)

    def _to_file(self, data: bytes) -> None:
        """Append to the tclet's file (a regular file on a local disk: a write does not wait on
        a reader), up to its cap; then a last line says the rest is not in the file."""
        if self._fd < 0:
            return
        part = data[: self._file_left]
        try:
            if part:
                os.write(self._fd, part)
            self._file_left -= len(part)
            if self._file_left <= 0 and len(part) < len(data):
                note = f"\n[tcletd: log file capped at {self._file_cap} bytes]\n"
                os.write(self._fd, note.encode())
                self.close_file()
        except OSError as exc:  # a full disk: the tclet and its in-memory log go on
            log.warning("output log: cannot write %s: %s", self.path, exc)
            self.close_file()

    def close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
