"""jsonstream: a response line read in pieces of any size gives what json.loads of it gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import jsonstream, protocol

ROUTE = st.fixed_dictionaries(
    {
        "family": st.sampled_from(["ipv4", "ipv6"]),
        "table": st.integers(0, 2**32 - 1),
        "source": st.text(max_size=5),
        "iif": st.text(max_size=5),
        "oifs": st.lists(st.text(max_size=3), max_size=3),
        "state": st.just("installed"),
    }
)
RESULT = st.fixed_dictionaries(
    {"schema": st.just(1), "vifs": st.lists(st.dictionaries(st.text(), st.integers()))}
)


def reader_of(data: bytes, sizes: list[int]) -> Callable[[], bytes]:
    """Reads of the given sizes in turn (64 bytes once they are used up), then b""."""
    pos = 0

    def read() -> bytes:
        nonlocal pos
        size = sizes.pop(0) if sizes else 64
        piece = data[pos : pos + size]
        pos += len(piece)
        return piece

    return read


@settings(deadline=None, max_examples=40)
@given(
    head=RESULT,
    routes=st.lists(ROUTE, max_size=20),
    request_id=st.integers(-(10**20), 10**20),
    sizes=st.lists(st.integers(1, 64)),
    after=st.text("{}ab1", max_size=20).map(str.encode),  # (the next response's start)
)
def test_a_response_read_in_pieces_is_the_response(
    head: dict[str, Any], routes: list[Any], request_id: int, sizes: list[int], after: bytes
) -> None:
    line = protocol.encode_result(request_id, {**head, "routes": routes})
    envelope, items, reader = jsonstream.response(reader_of(line + after, sizes), "routes")
    assert items is not None
    assert envelope["id"] == request_id and envelope["ok"] is True
    assert envelope["result"] == head
    assert list(items) == routes
    assert after.startswith(reader.rest)  # what was read past the line is kept


def test_the_streamed_response_mfcd_writes_is_read_too() -> None:
    routes = [{"source": f"10.0.0.{i}", "oifs": ["b"]} for i in range(50)]
    parts = iter(["["] + [("," if i else "") + json.dumps(r) for i, r in enumerate(routes)] + ["]"])
    stream = protocol.encode_response(7, {"schema": 1, "routes": protocol.Streamed(parts)})
    assert isinstance(stream, protocol.Stream)
    line = stream.join()
    envelope, items, _ = jsonstream.response(reader_of(line, [3] * 10000), "routes")
    assert items is not None and list(items) == routes
    assert envelope["result"] == {"schema": 1}
    assert json.loads(line)["result"]["routes"] == routes


def test_an_error_comes_whole_without_items() -> None:
    line = protocol.encode_error(3, "not_found", "no such route")
    envelope, items, _ = jsonstream.response(reader_of(line, [5] * 100), "routes")
    assert items is None and envelope == json.loads(line)


def test_a_line_cut_short_is_truncated_and_garbage_is_not_json() -> None:
    line = protocol.encode_result(1, {"routes": [{"a": 1}, {"b": 2}]})
    _, items, _ = jsonstream.response(reader_of(line[:-12], [4] * 100), "routes")
    assert items is not None
    with pytest.raises(jsonstream.Truncated):
        list(items)
    with pytest.raises(ValueError, match="not JSON"):
        jsonstream.response(reader_of(b'{"v":1,"id":nope}\n', [4] * 100), "routes")
