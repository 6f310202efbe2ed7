"""The single change's fast paths (issue 12) give what the general code gives: requests
decoded as json.loads decodes them, responses encoded as json.dumps (compact) encodes them."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfcd import protocol
from mfcd.controller import gc_paused

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too: JSON's extensions, as json writes them
    | st.text()
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20
)
OBJECTS = st.dictionaries(st.text(), VALUES)


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


@given(OBJECTS, st.integers() | st.text() | st.none())
def test_a_result_is_encoded_as_json_dumps_encodes_it(result: dict[str, Any], rid: Any) -> None:
    expected = compact({"v": 1, "id": rid, "ok": True, "result": result})
    assert protocol.encode_result(rid, result) == expected
    assert protocol.encode_response(rid, result) == expected


@given(st.text(), st.text(), st.sampled_from([None, "group"]), st.none() | st.integers(1, 9))
def test_an_error_is_encoded_as_json_dumps_encodes_it(
    code: str, message: str, field: str | None, op: int | None
) -> None:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if op is not None:
        error["op"] = op
    expected = compact({"v": 1, "id": 3, "ok": False, "error": error})
    assert protocol.encode_error(3, code, message, field, op=op) == expected


def test_encoded_and_streamed_members_still_go_last() -> None:
    result = {"a": 1, "routes": protocol.Encoded('[{"x":1}]'), "b": [2]}
    assert protocol.encode_response(5, result) == (
        b'{"v":1,"id":5,"ok":true,"result":{"a":1,"b":[2],"routes":[{"x":1}]}}\n'
    )
    only = protocol.encode_result(5, {"routes": protocol.Encoded("[]")})
    assert only == b'{"v":1,"id":5,"ok":true,"result":{"routes":[]}}\n'
    stream = protocol.encode_response(5, {"n": 1, "routes": protocol.Streamed(iter(["[", "]"]))})
    assert isinstance(stream, protocol.Stream)
    assert stream.join() == b'{"v":1,"id":5,"ok":true,"result":{"n":1,"routes":[]}}\n'


def outcome(call: Any) -> tuple[str, Any]:
    """What a call returns, or the type and text of what it raises."""
    try:
        return "value", call()
    except Exception as e:
        return type(e).__name__, str(e)


@given(OBJECTS)
def test_a_request_is_decoded_as_json_loads_decodes_it(msg: dict[str, Any]) -> None:
    for line in (json.dumps(msg).encode(), json.dumps(msg, ensure_ascii=False).encode() + b"\n"):
        # (NaN is not equal to itself: compare the values' text)
        decoded = protocol.decode(line, 10**6)
        assert repr(decoded) == repr(json.loads(line))


@pytest.mark.parametrize(
    "line",
    [
        b'{"a": 1} x',  # extra data
        b'{"a": 1',  # cut short
        b"{\xff}",  # not UTF-8
        b'{"a": "\xed\xa0\x80"}',  # a lone surrogate, as json.loads allows it
        b"{\x00\x00\x00",  # UTF-32 by json's look at the first bytes
        '{"a": 1}'.encode("utf-16-le"),
        '{"a": 1}'.encode("utf-8-sig"),
        b"[1]",
        b" {}",
        b"{",
    ],
)
def test_a_bad_or_odd_line_is_refused_or_read_as_json_loads_does(line: bytes) -> None:
    expected = outcome(lambda: json.loads(line))
    got = outcome(lambda: protocol.decode(line, 1000))
    if expected[0] == "value" and not isinstance(expected[1], dict):
        assert got == ("ValueError", "a message must be a JSON object")
    else:
        assert got == expected


def test_gc_paused_pauses_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested: the inner one leaves it paused
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # paused before: left paused
    finally:
        gc.enable()
