"""Tests for mfcd.validate: every rule, accepted and rejected, and canonical addresses."""

from __future__ import annotations

from typing import Any

import pytest

from mfcd import validate
from mfcd.errors import BadRequest, InvalidArgument, MfcdError
from mfcd.model import MAXVIFS, Route

GOOD = {"source": "10.1.2.3", "group": "239.1.1.1", "iif": "eth0", "oifs": ["eth1", "eth2"]}


def args(**changes: Any) -> dict[str, Any]:
    """GOOD with some fields changed; a value of `...` removes the field."""
    out = dict(GOOD, **changes)
    return {k: v for k, v in out.items() if v is not ...}


def rejected(value: Any, error: type[MfcdError] = InvalidArgument, field: str | None = None) -> str:
    """Validate `value` as `mfc add` arguments; return the message of the expected error."""
    with pytest.raises(error) as info:
        validate.route(value)
    if field is not None:
        assert info.value.field == field
    return str(info.value)


def test_a_good_route_is_accepted() -> None:
    assert validate.route(GOOD) == Route(4, "10.1.2.3", "239.1.1.1", "eth0", ("eth1", "eth2"), 253)


# --- addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "group", "key"),
    [
        ("10.1.2.3", "239.1.1.1", (4, "10.1.2.3", "239.1.1.1", 253)),
        ("192.0.2.1", "224.0.1.1", (4, "192.0.2.1", "224.0.1.1", 253)),
        ("198.51.100.7", "239.255.255.255", (4, "198.51.100.7", "239.255.255.255", 253)),
        ("2001:DB8:0::2", "FF0E::1", (6, "2001:db8::2", "ff0e::1", 254)),
        (
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "ff05::1:3",
            (6, "2001:db8::1", "ff05::1:3", 254),
        ),
        ("fd00::1", "ff08::abcd", (6, "fd00::1", "ff08::abcd", 254)),
        ("2001:db8::1", "ff3e::8000:1", (6, "2001:db8::1", "ff3e::8000:1", 254)),  # SSM, global
    ],
)
def test_addresses_are_accepted_in_canonical_form(
    source: str, group: str, key: tuple[int, str, str, int]
) -> None:
    assert validate.key({"source": source, "group": group}) == key
    route = validate.route(args(source=source, group=group))
    assert route.key == key


@pytest.mark.parametrize(
    ("source", "group", "field", "words"),
    [
        ("10.1.2.3", "10.9.9.9", "group", "not a multicast"),
        ("10.1.2.3", "240.0.0.1", "group", "not a multicast"),
        ("10.1.2.3", "224.0.0.1", "group", "link-local"),
        ("10.1.2.3", "224.0.0.255", "group", "link-local"),
        ("2001:db8::1", "2001:db8::9", "group", "not a multicast"),
        ("2001:db8::1", "ff02::1", "group", "link-local"),
        ("2001:db8::1", "ff12::1:2", "group", "link-local"),
        ("2001:db8::1", "ff01::1", "group", "interface-local"),
        ("2001:db8::1", "ff00::1", "group", "reserved"),
        ("0.0.0.0", "239.1.1.1", "source", "that is a template"),
        ("239.1.1.2", "239.1.1.1", "source", "not a unicast"),
        ("255.255.255.255", "239.1.1.1", "source", "not a unicast"),
        ("::", "ff0e::1", "source", "that is a template"),
        ("ff0e::2", "ff0e::1", "source", "not a unicast"),
        ("fe80::1", "ff0e::1", "source", "link-local"),
        ("febf::1", "ff0e::1", "source", "link-local"),
        ("10.1.2.3", "ff0e::1", "group", "different address families"),
        ("2001:db8::1", "239.1.1.1", "group", "different address families"),
        ("10.1.2", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("10.1.2.256", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("010.1.2.3", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("fe80::1%eth0", "ff0e::1", "source", "not an IPv4 or IPv6"),
        ("2001:db8::1::2", "ff0e::1", "source", "not an IPv4 or IPv6"),
        (" 10.1.2.3", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("10.1.2.3\x00", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("10.1.2.3", "239.1.1.1\n", "group", "not an IPv4 or IPv6"),
        ("\ud800", "239.1.1.1", "source", "not an IPv4 or IPv6"),
        ("", "239.1.1.1", "source", "not an IPv4 or IPv6"),
    ],
)
def test_bad_addresses_are_rejected(source: str, group: str, field: str, words: str) -> None:
    assert words in rejected(args(source=source, group=group), field=field)
    with pytest.raises(InvalidArgument):
        validate.key({"source": source, "group": group})


def test_fec0_outside_the_link_local_prefix_is_a_unicast_source() -> None:
    assert validate.key({"source": "fec0::1", "group": "ff0e::1"})[1] == "fec0::1"


# --- interface names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["eth0", "a", "x" * 15, "br-lan.100", "veth_1+a@b", "A-Z", "...", ".a", "0"]
)
def test_interface_names_accepted(name: str) -> None:
    assert validate.interface(name, "iif") == name
    assert validate.route(args(iif=name, oifs=["other"])).iif == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 16, ".", "..", "eth 0", " eth0", "eth0\n", "a/b", "a:1", "eth0\t", "é", "a\x00b"],
)
def test_interface_names_rejected(name: str) -> None:
    message = rejected(args(iif=name), field="iif")
    assert "not a valid interface name" in message
    assert "\n" not in message
    rejected(args(oifs=["eth1", name]), field="oifs")


def test_long_bad_names_are_clipped_in_the_message() -> None:
    assert len(rejected(args(iif="/" * 5000))) < 200


@pytest.mark.parametrize(
    ("oifs", "words"),
    [
        ([], "non-empty list"),
        ("eth1", "non-empty list"),
        (["eth1", "eth2", "eth1"], "names eth1 more than once"),
        (["eth1", "eth0"], "also listed in oifs"),
        ([f"e{i}" for i in range(MAXVIFS)], f"at most {MAXVIFS} interfaces"),
    ],
)
def test_bad_oif_lists_are_rejected(oifs: Any, words: str) -> None:
    assert words in rejected(args(oifs=oifs), field="oifs")


def test_a_route_may_use_all_32_vifs() -> None:
    oifs = [f"e{i}" for i in range(MAXVIFS - 1)]
    assert len(validate.route(args(oifs=oifs)).oifs) == MAXVIFS - 1


# --- fields and types ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["source", "group", "iif", "oifs"])
def test_missing_fields_are_rejected(name: str) -> None:
    assert name in rejected(args(**{name: ...}), BadRequest, field=name)


def test_unknown_fields_are_rejected() -> None:
    assert "'ttl'" in rejected(args(ttl=3), BadRequest, field="ttl")
    with pytest.raises(BadRequest):
        validate.key({"source": "10.1.2.3", "group": "239.1.1.1", "iif": "eth0"})


@pytest.mark.parametrize("value", [None, [], "source=1", 5, [GOOD]])
def test_arguments_must_be_an_object(value: Any) -> None:
    rejected(value, BadRequest)
    with pytest.raises(BadRequest):
        validate.key(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("source", 167837955),
        ("source", True),
        ("source", None),
        ("group", ["239.1.1.1"]),
        ("group", {"addr": "239.1.1.1"}),
        ("iif", 0),
        ("iif", True),
        ("iif", ["eth0"]),
        ("oifs", [True]),
        ("oifs", [1, 2]),
        ("oifs", {"eth1": 1}),
        ("oifs", None),
        ("oifs", [["eth1"]]),
    ],
)
def test_wrong_types_are_rejected(name: str, value: Any) -> None:
    rejected(args(**{name: value}), field=name)


@pytest.mark.parametrize("value", [1, 64, 255])
def test_thresholds_accepted(value: int) -> None:
    assert validate.threshold(value) == value


@pytest.mark.parametrize("value", [0, 256, -1, 10**30, True, False, 1.0, "5", None, [5]])
def test_thresholds_rejected(value: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate.threshold(value)
    assert info.value.field == "threshold"


def test_require_fields_accepts_optional_fields() -> None:
    assert validate.require_fields({"stats": True}, (), ("stats",)) == {"stats": True}
    assert validate.require_fields({}, (), ("stats",)) == {}


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:198.18.0.2", "IPv4-mapped"),
    ],
)
def test_sources_that_never_reach_a_router_are_refused(source: str, words: str) -> None:
    group = "ff3e::1" if ":" in source else "239.1.1.1"
    with pytest.raises(InvalidArgument, match=words):
        validate.route({**GOOD, "source": source, "group": group})


def test_interface_names_may_not_look_like_options() -> None:
    with pytest.raises(InvalidArgument, match="not starting with -"):
        validate.route({**GOOD, "oifs": ["eth1", "-o"]})


@pytest.mark.parametrize("table", ["²", "1²", "٣"])
def test_a_table_of_digits_other_than_ascii_is_refused_as_a_name(table: str) -> None:
    # str.isdigit() is True for them, and int() refuses "²": an internal error before.
    with pytest.raises(InvalidArgument, match="not a table name"):
        validate.route_key_of("198.18.0.1", "239.1.1.1", table)


def test_a_full_length_prefix_is_an_address_and_no_other_prefix_is() -> None:
    assert validate.route_key_of("198.18.0.2/32", "239.10.0.1/32", None)[1:3] == (
        "198.18.0.2",
        "239.10.0.1",
    )
    assert validate.group_of("ff3e::1/128") == (6, "ff3e::1")
    # Anything shorter used to be cut off silently: `mfc oif del --source 198.18.0.2/1
    # --group 239.10.0.1/4` changed the route 198.18.0.2 -> 239.10.0.1.
    for source, group, field in (
        ("198.18.0.2/1", "239.10.0.1", "source"),
        ("198.18.0.2", "239.80.0.0/24", "group"),
        ("2001:db8::1", "ff3e::/64", "group"),
        ("198.18.0.2", "239.10.0.1/", "group"),
    ):
        with pytest.raises(InvalidArgument, match="is a prefix, and this takes one address") as e:
            validate.route_key_of(source, group, None)
        assert e.value.field == field
    with pytest.raises(InvalidArgument, match=r"239\.1\.0\.0/16 is a prefix"):
        validate.group_of("239.1.0.0/16")


NAMED = {"wide4": 999_999_999, "wide6": 99_999_999, "huge": 2**32 - 1, "nine": 100_000_000}


@pytest.mark.parametrize(
    ("family", "largest"), [(4, 999_999_999), (6, 99_999_999)], ids=["ipv4", "ipv6"]
)
def test_a_table_goes_up_to_the_kernels_limit_for_its_family(family: int, largest: int) -> None:
    # MRT_TABLE takes ids below 10**9, MRT6_TABLE below 10**8 (EINVAL above: kernel-notes).
    name = "wide4" if family == 4 else "wide6"
    assert validate.table_of(largest, family) == largest
    assert validate.table_of(str(largest), family) == largest
    assert validate.table_of(name, family, NAMED) == largest
    word = "IPv4" if family == 4 else "IPv6"
    for too_large in (largest + 1, str(largest + 1), 2**32 - 1):
        with pytest.raises(InvalidArgument, match=f"out of range for {word}: .* 1 to {largest} "):
            validate.table_of(too_large, family)
    for name in ("huge", "nine") if family == 6 else ("huge",):
        with pytest.raises(
            InvalidArgument, match=f"above the kernel's limit for {word} \\({largest}\\)"
        ):
            validate.table_of(name, family, NAMED)


def test_a_route_or_template_of_a_table_too_large_for_its_family_is_refused() -> None:
    assert validate.route_key_of("2001:db8::1", "ff3e::1", 99_999_999)[3] == 99_999_999
    assert validate.route_key_of("198.18.0.1", "239.1.1.1", "100000000")[3] == 100_000_000
    for source, group, table in (
        ("2001:db8::1", "ff3e::1", 100_000_000),
        ("198.18.0.1", "239.1.1.1", "1000000000"),
        ("198.18.0.1", "239.1.1.1", 1_000_000_000),
    ):
        with pytest.raises(InvalidArgument, match="out of range") as caught:
            validate.route_key_of(source, group, table)
        assert caught.value.field == "table"
        with pytest.raises(InvalidArgument, match="out of range"):
            validate.template_change("*", group, "r0", ["r1"], table)
