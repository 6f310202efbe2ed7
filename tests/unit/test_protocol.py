"""Tests for mfcd.protocol.decode: the bound on JSON values a request may hold."""

from __future__ import annotations

import json

import pytest

from mfcd import protocol

LIMIT = 1000  # values; lines of more than 2,000 bytes are counted


@pytest.mark.parametrize(
    "value",
    [
        [[] for _ in range(1001)],
        [{} for _ in range(1001)],
        ["ab"] * 1001,
        [1000] * 1001,
        [1.5] * 1001,
        [float("nan")] * 1001,
        [{"a": 1}] * 400,  # object, key and number: three values each
        {"x": ["a"] * 600, "y": list(range(600))},
    ],
    ids=["arrays", "objects", "strings", "ints", "floats", "nan", "members", "mixed"],
)
def test_more_values_than_the_limit_are_refused(value: object) -> None:
    line = json.dumps({"v": 1, "pad": " " * 2000, "args": value}).encode()
    with pytest.raises(protocol.TooManyValues, match="more than 1000 JSON values"):
        protocol.decode(line, LIMIT)


@pytest.mark.parametrize(
    "value",
    [
        ["ab"] * 990,
        list(range(990)),
        [True, False, None] * 2000,  # singletons cost a pointer each: not counted
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif a --oifs b,c\n" * 1000,
    ],
    ids=["strings", "ints", "singletons", "text"],
)
def test_values_within_the_limit_are_parsed(value: object) -> None:
    msg = {"v": 1, "pad": " " * 2000, "args": value}
    assert protocol.decode(json.dumps(msg).encode(), LIMIT) == msg


def test_a_short_line_is_not_counted() -> None:
    # 2 bytes per value at least: a line of at most twice the limit cannot exceed it by much.
    line = json.dumps({"a": [0] * 499}, separators=(",", ":")).encode()
    assert len(line) <= 2 * LIMIT
    assert protocol.decode(line, LIMIT) == {"a": [0] * 499}


def test_brackets_and_quotes_inside_strings_count_too() -> None:
    """The counts are upper bounds: a string full of brackets is refused, not misparsed."""
    line = json.dumps({"text": "[" * 2500}).encode()
    with pytest.raises(protocol.TooManyValues):
        protocol.decode(line, LIMIT)


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        protocol.decode(b"[" * 1500, 10_000)


def test_responses_are_not_limited() -> None:
    """mfcctl decodes mfcd's responses, and `show` of many routes holds millions of values."""
    response = {"v": 1, "id": 1, "ok": True, "result": {"routes": [["a", "b"]] * 3_000_000}}
    assert protocol.decode(json.dumps(response).encode()) == response
