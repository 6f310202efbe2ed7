"""Tests for mfcd.rt_tables: the iproute2 table-name file format."""

from __future__ import annotations

import pytest

from mfcd import rt_tables, validate
from mfcd.errors import InvalidArgument


def test_numbers_and_names_are_read_and_everything_else_skipped() -> None:
    text = (
        "#\n# reserved values\n#\n255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n"
        "100 studio  # a comment\n0x20 hex\nnonsense line\n7\n-1 negative\n4294967296 big\n"
    )
    assert rt_tables.parse(text) == {
        "local": 255,
        "main": 254,
        "default": 253,
        "unspec": 0,
        "studio": 100,
        "hex": 32,
    }


def test_validation_resolves_default_per_family_and_names_from_the_files() -> None:
    names = {"studio": 100, "unspec": 0}
    assert validate.table_of(None, 4, names) == 253
    assert validate.table_of("default", 6, names) == 254
    assert validate.table_of("studio", 6, names) == 100
    assert validate.table_of("42", 4, names) == 42
    for bad in ("unspec", "nosuch"):
        with pytest.raises(InvalidArgument, match="is not a table name"):
            validate.table_of(bad, 4, names)


def test_a_route_key_takes_a_table_given_as_text_each_time_the_same() -> None:
    # (the IPv4 path remembers "100" -> 100 for the lines of a batch; refusals stay refusals)
    for _ in range(2):
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", "100")[3] == 100
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", 7)[3] == 7
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", "default")[3] == 253
        for bad in ("0", "4294967296", True, "-1"):
            with pytest.raises(InvalidArgument):
                validate.route_key_of("10.0.0.1", "239.1.1.1", bad)
