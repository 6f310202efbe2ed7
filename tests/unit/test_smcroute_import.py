"""Tests for mfcd.smcroute_import (mfcctl import-smcroute): what it writes always passes
mfcd's config reader, `phyint IF disable`, trailing backslashes, and the command's exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import config, smcroute_import, validate
from mfcd.declarations import Declarations
from tests.unit.test_cli import run_cli


def convert(tmp_path: Path, text: str) -> smcroute_import.Converted:
    conf = tmp_path / "smcroute.conf"
    conf.write_text(text)
    return smcroute_import.convert_file(str(conf))


def loads(tmp_path: Path, converted: smcroute_import.Converted) -> Declarations:
    """The declarations of the converted text as `mfcd --check-config` reads them (raises
    declarations.Problems on any problem)."""
    out = tmp_path / "mfcd.conf"
    out.write_text(converted.text)
    return config.load_all(str(out))[1]


def loads_clean(tmp_path: Path, text: str) -> Declarations:
    """`loads` of the conversion of `text`, which converts with no problem and no warning."""
    converted = convert(tmp_path, text)
    assert converted.problems == converted.warnings == []
    return loads(tmp_path, converted)


def numbers(messages: list[str]) -> list[int]:
    return [int(m.split(":")[1]) for m in messages]


def said(messages: list[str], *expected: tuple[int, str]) -> None:
    """The messages are one per (line, words) expected, in order: each about that line of
    the input and saying those words."""
    assert numbers(messages) == [line for line, _ in expected], messages
    for message, (line, words) in zip(messages, expected, strict=True):
        assert words in message, f"line {line}: {words!r} not in {message!r}"


# --- what mfcd's reader refuses is not written ---------------------------------------------------

REFUSED = [
    "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1",
    "mroute from eth0 source 198.18.0.2 group 224.0.0.5 to eth1",  # link-local group
    "mroute from eth0 source 198.18.0.3 group 239.1.1.3 to averyveryverylongname0",
    "mroute from eth2 source 198.18.0.1 group 239.1.1.1 to eth1",  # the same (S,G) again
    "mgroup from eth0 group 239.1.1.9",
    "mroute from eth0 source 127.0.0.1 group 239.1.1.4 to eth1",  # loopback source
    "mroute from eth0 source 198.18.0.5 group 239.1.1.5 to eth1",
]


def test_each_line_mfcd_would_refuse_is_a_not_converted_comment(tmp_path: Path) -> None:
    converted = convert(tmp_path, "\n".join(REFUSED) + "\n")
    said(
        converted.problems,
        (1, "smcroute.conf:1: replaced by "),  # by line 4, see below
        (2, "group 224.0.0.5 is link-local"),
        (3, "oifs 'averyveryverylongname0' is not a valid interface name"),
        (6, "source 127.0.0.1 is a loopback address"),
    )
    for k in (1, 2, 3, 6):
        assert f"# NOT CONVERTED: {REFUSED[k - 1]}\n" in converted.text
    found = loads(tmp_path, converted)
    assert {k[1] for k in found.routes} == {"198.18.0.1", "198.18.0.5"}
    assert len(found.joins) == 1


def test_routes_past_the_vif_limit_are_not_converted_one_by_one(tmp_path: Path) -> None:
    # A problem of the whole (33 interfaces in one table) names one route at a time.
    lines = [
        f"mroute from eth0 source 198.18.0.{k} group 239.1.1.{k} to e{k} f{k}" for k in range(1, 21)
    ]
    converted = convert(tmp_path, "\n".join(lines) + "\n")
    assert numbers(converted.problems) == list(range(16, 21))  # eth0 and 2 * 16 > 32
    assert all("more than 32 VIFs" in p for p in converted.problems)
    assert len(loads(tmp_path, converted).routes) == 15


# Words an smcroute.conf line is made of, right or wrong for mfcd.
WORDS = {
    "iif": ["eth0", "eth1", "eth+", "lo", "-x", "a" * 16, "eth0\\"],
    "source": ["198.18.0.1", "198.18.0.0/24", "0.0.0.0", "127.0.0.1", "2001:db8::1", "x"],
    "group": ["239.1.1.1", "239.1.0.0/16", "224.0.0.1", "ff3e::1", "225.1.2.3/24", "1.2.3.4"],
}


@st.composite
def smcroute_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["mroute", "mroute", "mgroup", "phyint", "junk"]))
    iif = draw(st.sampled_from(WORDS["iif"]))
    source = draw(st.sampled_from([None, *WORDS["source"]]))
    group = draw(st.sampled_from(WORDS["group"]))
    words = [kind, "from", iif] if kind != "phyint" else [kind, iif]
    if kind == "phyint":
        words += draw(st.sampled_from([["disable"], ["enable", "ttl-threshold", "3"], ["mrdisc"]]))
    elif kind != "junk":
        words += (["source", source] if source else []) + ["group", group]
    if kind == "mroute":
        words += ["to", *draw(st.lists(st.sampled_from(WORDS["iif"]), min_size=1, max_size=3))]
    if draw(st.booleans()):
        words.append("\\")
    return " ".join(words)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(smcroute_lines(), min_size=1, max_size=12))
def test_whatever_the_input_the_output_passes_the_config_reader(
    tmp_path: Path, lines: list[str]
) -> None:
    converted = convert(tmp_path, "\n".join(lines) + "\n")
    loads(tmp_path, converted)  # raises on any problem
    # Each line as it was written, above its declarations or as not converted.
    path = tmp_path / "smcroute.conf"
    refused = numbers(converted.problems)
    expected = [
        f"# NOT CONVERTED: {line}" if number in refused else f"# {path}:{number}: {line}"
        for number, line in enumerate(lines, 1)
    ]
    written = converted.text.splitlines()
    assert [w for w in written if w.startswith(("# NOT CONVERTED: ", f"# {path}:"))] == expected


# --- phyint IF disable ---------------------------------------------------------------------------


def test_a_disabled_interface_is_left_out_of_the_oifs_with_a_warning(tmp_path: Path) -> None:
    converted = convert(
        tmp_path,
        "phyint eth9 disable\n"
        "phyint vlan+ disable\n"
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1 eth9 vlan5\n"
        "mroute from eth0 source 198.18.0.2 group 239.1.1.2 to eth9\n"
        "mroute from eth9 source 198.18.0.3 group 239.1.1.3 to eth1\n"
        "mroute from eth0 group 239.2.0.0/16 to eth1 eth+\n"
        "mroute from vlan+ group 239.3.0.0/16 to eth1\n",
    )
    found = loads(tmp_path, converted)
    assert [p.oifs for p in found.routes.values()] == [("eth1",)]
    said(
        converted.problems,
        (4, "every oif (eth9) is disabled by phyint ... disable: smcroute installs no route"),
        (5, "smcroute routes nothing from it"),
    )
    said(
        converted.warnings,
        (3, "oif eth9 left out: phyint eth9 disable (at "),
        (3, "oif vlan5 left out: phyint vlan+ disable"),
        (6, "oif eth+ matches eth9"),
        (7, "iif vlan+ matches vlan+"),
    )
    assert numbers(converted.report) == [3, 3, 4, 5, 6, 7]


def test_a_later_enable_undoes_a_disable(tmp_path: Path) -> None:
    found = loads_clean(
        tmp_path,
        "phyint eth9 disable\nphyint eth9 enable\n"
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1 eth9\n",
    )
    assert [p.oifs for p in found.routes.values()] == [("eth1", "eth9")]


# --- a trailing backslash continues nothing, as in smcroute ------------------------------------


def test_a_trailing_backslash_continues_nothing(tmp_path: Path) -> None:
    # smcroute reads each line on its own (conf.c: fgets, then words split at white space):
    # a lone "\" word is ignored (or, after `to`, an interface it skips), "eth2\" is a name.
    converted = convert(
        tmp_path,
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1 \\\n"
        "  eth2\n"
        "mroute from eth0 source 198.18.0.2 group 239.1.1.2 to eth1 eth2\\\n"
        "mgroup from eth0 group 239.1.1.9 \\\n"
        "mgroup from eth0 group 239.1.1.8\\\n",
    )
    found = loads(tmp_path, converted)
    assert [p.oifs for p in found.routes.values()] == [("eth1",), ("eth1",)]
    assert [j.group for j in found.joins] == ["239.1.1.9"]
    said(
        converted.problems,
        (2, "unknown directive 'eth2' (smcroute.conf has phyint, mroute, mgroup, ssmgroup and"),
        (5, "the trailing backslash continues nothing in smcroute"),
    )
    assert "the line before ends in a backslash" in converted.problems[0]
    said(
        converted.warnings,
        (1, "warning: the trailing backslash is left out: smcroute reads each line on its own"),
        (3, "oif eth2\\ left out"),
        (4, "warning: the trailing backslash is left out"),
    )
    assert "# NOT CONVERTED: eth2\n" in converted.text


# --- comments and long lines, as smcroute reads them ------------------------------------------


def test_a_comment_starts_at_a_word_that_begins_with_a_hash(tmp_path: Path) -> None:
    # smcroute 2.5.6 (smcrouted -N -f, -l debug): "checking for r2#x ... not a known phyint,
    # skipping", then r3; after `to`, "# r2 r3" are oifs too (ip mroute: Oifs: r1 r2 r3).
    converted = convert(
        tmp_path,
        "# mroute from r0 source 198.18.0.9 group 239.1.1.9 to r1\n"
        "  #mroute from r0 source 198.18.0.9 group 239.1.1.9 to r1\n"
        "mroute from r0 source 198.18.0.1 group 239.1.1.1 to r1 r2#x r3\n"
        "mroute from r0 source 198.18.0.2 group 239.1.1.2 to r1 # r2 r3\n"
        "mroute from r0 source 198.18.0.3 group 239.1.1.3 to r1 #\n"
        "mroute from r0 source 198.18.0.4 group 239.1.1.4 #x to r1\n"
        "phyint r1 ttl-threshold 3 #comment\n",
    )
    found = loads(tmp_path, converted)
    assert [p.oifs for p in found.routes.values()] == [("r1", "r3"), ("r1",), ("r1",)]
    assert found.interfaces["r1"].threshold == 3
    said(converted.problems, (6, "mroute needs `to OIF...`"))
    said(
        converted.warnings,
        (3, "oif r2#x left out: a comment starts only at a word"),
        (4, "the comment '# r2 r3' is left out, but smcroute reads"),
    )


def test_a_line_longer_than_smcroutes_buffer_is_read_as_two(tmp_path: Path) -> None:
    # fgets() into 512 bytes: smcroute 2.5.6 reads the first 511 bytes as line 1 and logs
    # "line 2: Unknown command r2, skipping" for the rest.
    route = "mroute from r0 source 198.18.0.1 group 239.1.1.1 to r1"
    converted = convert(tmp_path, route + " " * (511 - len(route)) + "r2\n")
    assert [p.oifs for p in loads(tmp_path, converted).routes.values()] == [("r1",)]
    said(converted.warnings, (1, "longer than the 511 bytes"))
    said(converted.problems, (1, "unknown directive 'r2'"))
    assert "# NOT CONVERTED: r2\n" in converted.text
    # 511 bytes and a newline: one line (the newline is read as an empty line).
    found = loads_clean(tmp_path, route + " " * (509 - len(route)) + "r2\n")
    assert [p.oifs for p in found.routes.values()] == [("r1", "r2")]


# --- the same route on two lines: smcroute merges the oifs -----------------------------------


def test_the_same_route_again_adds_its_oifs_to_the_first(tmp_path: Path) -> None:
    # smcroute 2.5.6 (smcrouted -N -f, then ip mroute): "(198.18.0.10,239.1.1.1) Iif: r0
    # Oifs: r1 r3", and the (*,G) template of lines 3-4 forwards to r1 r2.
    converted = convert(
        tmp_path,
        "mroute from r0 source 198.18.0.10 group 239.1.1.1 to r1\n"
        "mroute from r0 source 198.18.0.10 group 239.1.1.1 to r3 r1\n"
        "mroute from r0 group 239.2.2.2 to r1\n"
        "mroute from r0 group 239.2.2.2 to r2 r1\n"
        "mroute from r0 group 239.2.2.2 to r2\n",
    )
    assert converted.problems == converted.warnings == []
    found = loads(tmp_path, converted)
    assert [p.oifs for p in found.routes.values()] == [("r1", "r3")]
    assert [t.oifs for t in found.templates] == [("r1", "r2")]
    path = tmp_path / "smcroute.conf"
    assert f"# (the same route as {path}:1: r3 added to its oifs there" in converted.text
    assert converted.text.split(f"{path}:5: ")[1].splitlines()[1] == (
        f"# (the same route as {path}:3: no oif to add)"
    )


def test_the_same_source_and_group_from_another_iif_replaces_the_route(tmp_path: Path) -> None:
    # smcroute 2.5.6 installs both lines; ip mroute then shows one entry, "Iif: r2 Oifs: r3":
    # the kernel keeps the (S,G) added last. A line that adds its route again (line 3 merges
    # into line 1, and smcroute installs the merged route) takes it back.
    path = tmp_path / "smcroute.conf"
    converted = convert(
        tmp_path,
        "mroute from r0 source 198.18.0.20 group 239.3.3.3 to r1\n"
        "mroute from r2 source 198.18.0.20 group 239.3.3.3 to r3\n"
        "mroute from r0 source 198.18.0.20 group 239.3.3.3 to r4\n"
        "mroute from r0 source 198.18.0.21 group 239.3.3.3 to r1\n"
        "mroute from r2 source 198.18.0.21 group 239.3.3.3 to r3\n",
    )
    said(converted.problems, (2, f"replaced by {path}:3, "), (4, f"replaced by {path}:5, "))
    assert converted.problems[0].endswith(
        f"replaced by {path}:3, the same source and group from another iif: smcroute installs"
        " that one after it, and the kernel keeps only the last (mfcd takes one iif per source"
        " and group)"
    )
    found = loads(tmp_path, converted)
    assert [(k[1], p.iif, p.oifs) for k, p in found.routes.items()] == [
        ("198.18.0.20", "r0", ("r1", "r4")),
        ("198.18.0.21", "r2", ("r3",)),
    ]


def test_a_route_merged_into_one_not_converted_is_not_converted(tmp_path: Path) -> None:
    converted = convert(
        tmp_path,
        "mroute from r0 source 198.18.0.10 group 224.0.0.5 to r1\n"
        "mroute from r0 source 198.18.0.10 group 224.0.0.5 to r3\n",
    )
    said(
        converted.problems,
        (1, "group 224.0.0.5 is link-local"),
        (2, "merged into the route of"),
    )
    assert loads(tmp_path, converted).routes == {}


# --- --table: smcrouted -t ID ------------------------------------------------------------------


def test_table_puts_every_route_and_template_in_that_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_table_names", {"video": 100})
    conf = tmp_path / "smcroute.conf"
    conf.write_text(
        "mroute from r0 source 198.18.0.10 group 239.1.1.1 to r1\n"
        "mroute from r0 group 239.2.0.0/16 to r1\n"
        "mroute from r0 source 2001:db8::1 group ff3e::1 to r1\n"
        "mgroup from r0 group 239.1.1.1\n"
    )
    out = tmp_path / "mfcd.conf"
    for table, number in (("100", 100), ("video", 100), ("default", 253), (None, 253)):
        status, _, err = run_cli(
            "import-smcroute", str(conf), "--to", str(out), *(["--table", table] if table else [])
        )
        assert (status, err) == (0, "")
        found = config.load_all(str(out))[1]
        ipv6 = 254 if number == 253 else number  # IPv6's default table is 254
        assert [k[3] for k in found.routes] == [number, ipv6]
        assert [t.table for t in found.templates] == [number]
        assert ("table = " in out.read_text()) == (number != 253)
    assert 'table = "video"' in smcroute_import.convert_file(str(conf), '"video"').text


def test_a_table_mfcd_would_refuse_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_table_names", {})
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from r0 source 198.18.0.10 group 239.1.1.1 to r1\n")
    for table, why in (("0", "out of range"), ("nosuch", "is not a table name")):
        status, out, err = run_cli("import-smcroute", str(conf), "--table", table)
        assert (status, out) == (2, "")
        assert err.startswith("mfcctl: --table: table ") and why in err
        assert len(err.splitlines()) == 1


# --- the command ---------------------------------------------------------------------------------


def test_an_output_that_cannot_be_written_is_one_line_and_status_2(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\n")
    for to in (tmp_path / "no" / "such.conf", tmp_path):
        status, out, err = run_cli("import-smcroute", str(conf), "--to", str(to))
        assert (status, out) == (2, "")
        assert err.splitlines() == [
            f"mfcctl: cannot write {to}: {os.strerror(2 if to != tmp_path else 21)}"
        ]


def test_json_output_names_problems_and_warnings(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text(
        "phyint eth9 disable\n"
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1 eth9\n"
        "mroute from eth0 source 198.18.0.2 group 224.0.0.2 to eth1\n"
    )
    status, out, err = run_cli("import-smcroute", str(conf), "-o", "json")
    result = json.loads(out)
    assert status == 1
    assert numbers(result["problems"]) == [3] and numbers(result["warnings"]) == [2]
    assert [line.split(": ", 1)[1].split(":")[1] for line in err.splitlines()] == ["2", "3"]
