"""The worker wire's decoder (tcletd.shared.protocol): it takes any bytes and raises only its
decode errors; every message survives a round trip."""

from __future__ import annotations

import contextlib

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tcletd.shared import protocol as p


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decoder_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        p.WORKER_DECODER.decode(data)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        p.Connect,
        req=st.integers(0, 2**53),
        host=st.text(max_size=50),
        port=st.text(max_size=10),
        myaddr=st.text(max_size=10),
        myport=st.text(max_size=5),
        asynchronous=st.booleans(),
    )
)
def test_messages_round_trip(msg: p.Connect) -> None:
    assert p.WORKER_DECODER.decode(p.encode(msg)) == msg
