"""A listing (``ps``, ``status``) is cut into frames that each fit the wire's header limit, in
order, with ``more`` on all but the last: a host of thousands of tclets has hundreds of KiB of
rows, and a longer header is a broken frame to every client."""

from __future__ import annotations

from tcletd.host.ops.base import row_frames
from tcletd.shared.control import MAX_HEADER, FrameReader, encode


def _rows(count: int, width: int) -> list[dict[str, object]]:
    return [{"id": f"{n:012x}", "origin": "o" * width, "cpu": n / 7} for n in range(count)]


def _taken(wire: bytes) -> list[dict[str, object]]:
    """The headers a client's reader takes from ``wire`` (it raises on one over MAX_HEADER)."""
    return [header for header, _ in FrameReader(0).feed(wire)]


def test_a_long_listing_is_cut_into_frames_a_reader_takes_whole() -> None:
    rows = _rows(3000, 150)
    wire = list(row_frames("ps", rows))
    assert len(wire) > 1
    frames = _taken(b"".join(wire))
    assert len(frames) == len(wire)
    assert all(len(frame) <= MAX_HEADER for frame in wire)
    assert [row for frame in frames for row in frame["tclets"]] == rows  # type: ignore[attr-defined]
    assert [frame.get("more") for frame in frames] == [True] * (len(frames) - 1) + [None]
    # A client that matches the text (the Perl example) finds the flag right after the event.
    assert all(f.startswith(b'{"event":"ps","more":true,') for f in wire[:-1])


def test_a_short_listing_is_one_frame_as_before() -> None:
    rows = _rows(20, 150)
    assert list(row_frames("status", rows)) == [encode({"event": "status", "tclets": rows})]
    assert list(row_frames("status", [])) == [encode({"event": "status", "tclets": []})]


def test_a_row_near_the_limit_still_goes_alone() -> None:
    rows = _rows(3, MAX_HEADER // 2)
    frames = _taken(b"".join(row_frames("ps", rows)))
    assert [f["tclets"] for f in frames] == [[r] for r in rows]
