"""A run frame's ``url`` field (a script the host fetches): decode_run's checks, field by field."""

from __future__ import annotations

import pytest

from tcletd.shared.launch import MAX_URL, RequestInvalid, decode_run


def test_an_http_or_https_url_with_no_payload_is_a_request() -> None:
    for url in ("http://127.0.0.1:8080/t.tcl", "HTTPS://example.org/a/b.tcl?x=1"):
        request = decode_run({"op": "run", "url": url}, b"")
        assert request.url == url and request.script == ""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file:///etc/passwd", "expected an http:// or https:// URL"),
        ("ftp://127.0.0.1/t.tcl", "expected an http:// or https:// URL"),
        ("/t.tcl", "expected an http:// or https:// URL"),
        ("http://", "expected a URL with a host"),
        ("http://127.0.0.1:99999/t.tcl", "not a valid URL"),
        ("http://user:secret@127.0.0.1/t.tcl", "without user info"),
        ("http://127.0.0.1/a b.tcl", "without spaces or control characters"),
        ("http://127.0.0.1/\r\nX-Injected: 1", "without spaces or control characters"),
        ("http://127.0.0.1/" + "a" * MAX_URL, f"at most {MAX_URL} characters"),
    ],
)
def test_a_url_that_is_not_one_to_fetch_is_refused_naming_the_field(url: str, says: str) -> None:
    with pytest.raises(RequestInvalid) as caught:
        decode_run({"op": "run", "url": url}, b"")
    message = str(caught.value)
    assert message.startswith("run request: url: "), message
    assert says in message and "\n" not in message, message
    assert caught.value.exit_status == 2


def test_a_url_of_4096_characters_is_taken() -> None:
    url = "http://127.0.0.1/" + "a" * (MAX_URL - len("http://127.0.0.1/"))
    assert len(url) == MAX_URL
    assert decode_run({"op": "run", "url": url}, b"").url == url


def test_a_url_and_a_script_together_are_refused() -> None:
    with pytest.raises(RequestInvalid, match=r"^run request: url: .*carries none.*7 bytes"):
        decode_run({"op": "run", "url": "http://127.0.0.1/t.tcl"}, b"puts hi")


def test_a_url_that_is_not_a_string_is_refused_naming_the_field() -> None:
    with pytest.raises(RequestInvalid, match=r"^run request: url: expected str"):
        decode_run({"op": "run", "url": ["http://127.0.0.1/"]}, b"")


def test_without_url_a_run_is_as_before() -> None:
    request = decode_run({"op": "run"}, b"puts hi")
    assert request.url is None and request.script == "puts hi"
