"""A request line that starts with `{` is decoded by json's C scanner directly (protocol._parse):
for any such line, the same value as json.loads, or the same error with the same message."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import protocol

# The bytes JSON is made of, and some it is not (a NUL, bytes that are not UTF-8, a "€").
ALPHABET = b'{}[]",:0123456789.eE+-truefalsn \t\r\n\\/ux\x00\xff\xe2\x82\xac'
JSON_BYTES = st.sampled_from(list(ALPHABET))
TAILS = st.sampled_from([b"", b"\n", b" \n", b"\r\n", b" x", b"\n\n", b"}", b"\x0b\n", b"\xa0"])


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "value", repr(call())
    except Exception as e:
        return type(e).__name__, str(e)


def same(line: bytes) -> None:
    expected = outcome(lambda: json.loads(line))
    got = outcome(lambda: protocol.decode(line, 1000))
    if expected[0] == "value" and not expected[1].startswith("{"):
        assert got == ("ValueError", "a message must be a JSON object")
    else:
        assert got == expected, line


@settings(max_examples=2000)
@given(st.lists(JSON_BYTES, max_size=30).map(bytes), TAILS)
def test_any_line_that_starts_with_a_brace_is_read_as_json_loads_reads_it(
    body: bytes, tail: bytes
) -> None:
    same(b"{" + body + tail)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)), TAILS)
def test_an_object_and_what_follows_it_are_read_as_json_loads_reads_them(
    msg: dict[str, Any], tail: bytes
) -> None:
    same(json.dumps(msg).encode() + tail)
