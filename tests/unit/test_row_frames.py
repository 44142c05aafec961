"""A listing (``ps``, ``status``) is cut into frames that each fit the wire's header limit, in
order, with ``more`` on all but the last: a host of thousands of tclets has hundreds of KiB of
rows, and a longer header is a broken frame to every client."""

from __future__ import annotations

import json

from tcletd.host.ops.base import row_frames
from tcletd.shared.control import MAX_HEADER, FrameReader, encode


def _rows(count: int, width: int) -> list[dict[str, object]]:
    return [{"id": f"{n:012x}", "origin": "o" * width, "cpu": n / 7} for n in range(count)]


def test_a_long_listing_is_cut_into_frames_a_reader_takes_whole() -> None:
    rows = _rows(3000, 150)
    frames = list(row_frames("ps", rows))
    assert len(frames) > 1
    wire = b"".join(encode(frame) for frame in frames)
    taken = list(FrameReader(0).feed(wire))  # raises on a header over MAX_HEADER
    assert [header for header, _ in taken] == frames
    assert all(len(encode(frame)) <= MAX_HEADER for frame in frames)
    assert [row for frame in frames for row in frame["tclets"]] == rows
    assert [frame.get("more") for frame in frames] == [True] * (len(frames) - 1) + [None]
    # A client that matches the text (the Perl example) finds the flag right after the event.
    assert all(encode(f).startswith(b'{"event":"ps","more":true,') for f in frames[:-1])


def test_a_short_listing_is_one_frame_as_before() -> None:
    rows = _rows(20, 150)
    assert list(row_frames("status", rows)) == [{"event": "status", "tclets": rows}]
    assert list(row_frames("status", [])) == [{"event": "status", "tclets": []}]


def test_a_row_near_the_limit_still_goes_alone() -> None:
    rows = _rows(3, MAX_HEADER // 2)
    frames = list(row_frames("ps", rows))
    assert [len(frame["tclets"]) for frame in frames] == [1, 1, 1]
    assert [json.loads(encode(f).split(b"\n")[0])["tclets"] for f in frames] == [[r] for r in rows]
