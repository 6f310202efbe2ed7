"""Tests for mfcd.smcroute_import (mfcctl import-smcroute): what it writes always passes
mfcd's config reader, `phyint` lines (disable; enable with -N, as smcrouted -N), trailing
backslashes, thresholds under --table, wildcard joins, and the command's exits."""

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


def convert(
    tmp_path: Path, text: str, table: str | None = None, no_vifs: bool = False
) -> smcroute_import.Converted:
    conf = tmp_path / "smcroute.conf"
    conf.write_text(text)
    return smcroute_import.convert_file(str(conf), table, no_vifs)


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


def declared(found: Declarations) -> list[tuple[str, str, tuple[str, ...]]]:
    """(group, iif, oifs) of each route and template, in the order they are written."""
    routes = [(k[2], p.iif, p.oifs) for k, p in found.routes.items()]
    return routes + [(t.group, t.iif, t.oifs) for t in found.templates]


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
        words += draw(
            st.sampled_from([["disable"], ["enable"], ["enable", "ttl-threshold", "3"], ["mrdisc"]])
        )
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
@given(lines=st.lists(smcroute_lines(), min_size=1, max_size=12), no_vifs=st.booleans())
def test_whatever_the_input_the_output_passes_the_config_reader(
    tmp_path: Path, lines: list[str], no_vifs: bool
) -> None:
    converted = convert(tmp_path, "\n".join(lines) + "\n", no_vifs=no_vifs)
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
    # No oif left; from a disabled iif; from a wildcard iif all of whose interfaces are
    # disabled (smcroute routes nothing from vlan+ then).
    assert numbers(converted.problems) == [4, 5, 7]
    assert "smcroute routes nothing from it" in converted.problems[1]
    assert "iif vlan+ matches no interface with a VIF" in converted.problems[2]
    assert numbers(converted.warnings) == [3, 3, 6]
    assert "oif eth9 left out: phyint eth9 disable (at " in converted.warnings[0]
    assert "oif vlan5 left out: phyint vlan+ disable" in converted.warnings[1]
    assert "oif eth+ matches eth9" in converted.warnings[2]
    assert numbers(converted.report) == [3, 3, 4, 5, 6, 7]


def test_a_later_enable_undoes_a_disable_for_the_routes_after_it(tmp_path: Path) -> None:
    # smcrouted 2.5.6: a route gets the interfaces that have a VIF when it is read; the
    # route between the lines did not forward to r1 (`ip mroute`: Oifs: r2).
    converted = convert(
        tmp_path,
        "phyint eth9 disable\n"
        "mroute from eth0 source 198.18.0.2 group 239.1.1.2 to eth1 eth9\n"
        "phyint eth9 enable\n"
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1 eth9\n",
    )
    assert converted.problems == []
    assert declared(loads(tmp_path, converted)) == [
        ("239.1.1.2", "eth0", ("eth1",)),
        ("239.1.1.1", "eth0", ("eth1", "eth9")),
    ]
    assert numbers(converted.warnings) == [2, 2, 4]
    assert "oif eth9 left out: phyint eth9 enable (at " in converted.warnings[0]
    assert "comes after this line" in converted.warnings[0]
    # (and, since the file enables an interface: the hint for smcrouted -N, below)
    assert "--no-default-vifs" in converted.warnings[1]


# --- smcrouted -N: only the interfaces phyint enables are routed -------------------------------

# Checked with smcrouted 2.5.6 -n -N in a lab (a sender behind r0, receivers behind r1..r4):
# 239.10.7.5 from r0 reached r2 r3 (`Oifs: r0 r2 r3(ttl 3)`), 239.10.8.1 only r2, nothing
# came from r1 or r4 ("inbound r1 is not a known phyint"), 239.10.10.x came to r3 from r0 and
# r2 but not from r1, 239.10.12.1 went nowhere (`Iif: r0`, no oifs); the joins were made on
# every interface named, enabled or not (`ip maddr`: 239.20.0.1 on r1, 239.20.0.2 on r0..r4).
MINUS_N = """phyint r0 enable
phyint r2 enable
phyint r3 enable ttl-threshold 3
mroute from r0 group 239.10.7.0/24 to r+
mroute from r0 source 198.18.0.2 group 239.10.8.1 to r1 r2
mroute from r1 source 198.18.1.2 group 239.10.9.1 to r2
mroute from r+ group 239.10.10.0/24 to r3
mroute from r4 group 239.10.11.0/24 to r2
mroute from r0 source 198.18.0.2 group 239.10.12.1 to r1 r4
mgroup from r1 group 239.20.0.1
mgroup from r+ group 239.20.0.2
"""


def test_no_default_vifs_routes_only_the_enabled_interfaces(tmp_path: Path) -> None:
    converted = convert(tmp_path, MINUS_N, no_vifs=True)
    found = loads(tmp_path, converted)
    assert declared(found) == [
        ("239.10.8.1", "r0", ("r2",)),  # r1 left out
        ("239.10.7.0/24", "r0", ("r2", "r3")),  # r+: the enabled ones (r0 is the iif)
        ("239.10.10.0/24", "r0", ("r3",)),  # iif r+: one template per enabled interface
        ("239.10.10.0/24", "r2", ("r3",)),  # (r3 to r3 is nothing)
    ]
    assert {(j.interface, j.group) for j in found.joins} == {
        ("r1", "239.20.0.1"),
        ("r+", "239.20.0.2"),
    }
    assert numbers(converted.problems) == [6, 8, 9]
    assert "iif r1: no phyint r1 enable line gives it a VIF (-N)" in converted.problems[0]
    assert "no oif has a VIF in smcroute" in converted.problems[2]
    assert "smcroute installs the route with no oif" in converted.problems[2]
    assert numbers(converted.warnings) == [4, 5, 7]
    assert "oif r+ written as r2 r3" in converted.warnings[0]
    assert "oif r1 left out" in converted.warnings[1]
    assert "iif r+ written as r0 r2 r3" in converted.warnings[2]
    assert '[[interface]]\nname = "r3"\nthreshold = 3\n' in converted.text


def test_without_the_option_routes_to_interfaces_not_enabled_are_warned_about(
    tmp_path: Path,
) -> None:
    converted = convert(tmp_path, MINUS_N)
    assert converted.problems == []
    assert len(declared(loads(tmp_path, converted))) == 6  # as smcrouted without -N
    assert numbers(converted.warnings) == [4, 5, 6, 7, 8, 9]
    assert converted.warnings[0].endswith(
        "warning: r+ (other than r0 r2 r3): not enabled by a phyint line, though the file"
        " enables interfaces: if"
        " smcrouted ran with -N, smcroute routes only the enabled ones (and a wildcard"
        " matches only those); convert with --no-default-vifs to forward as it did"
    )
    assert ": warning: r1 r4: not enabled" in converted.warnings[5]
    # A file that enables nothing was not written for -N: no such warning.
    assert convert(tmp_path, MINUS_N.replace(" enable", "")).warnings == []


def test_no_default_vifs_phyint_lines(tmp_path: Path) -> None:
    # smcrouted 2.5.6 -N: a phyint line without `enable` removes the VIF ("Removing multicast
    # VIFs for r2"); a route read before `phyint r1 enable` does not get r1; a wildcard
    # phyint line enables what it matches.
    converted = convert(
        tmp_path,
        "phyint r0 enable\n"
        "mroute from r0 source 198.18.0.2 group 239.10.1.1 to r1 r5\n"
        "phyint r1 enable\n"
        "phyint r2 ttl-threshold 3\n"
        "phyint r5 enable\n"
        "phyint vlan+ enable\n"
        "phyint vlan7 disable\n"
        "mroute from r0 source 198.18.0.2 group 239.10.2.1 to r1 r2 vlan+\n",
        no_vifs=True,
    )
    found = loads(tmp_path, converted)
    assert declared(found) == [("239.10.2.1", "r0", ("r1", "vlan+"))]
    assert numbers(converted.problems) == [2, 4]
    assert "r1: phyint r1 enable (at " in converted.problems[0]
    assert "phyint r2 without enable: smcrouted -N gives r2 no VIF" in converted.problems[1]
    assert numbers(converted.warnings) == [8, 8]
    assert "oif r2 left out: phyint r2 (at " in converted.warnings[0]
    assert "without enable, gives it no VIF (-N)" in converted.warnings[0]
    assert "oif vlan+ matches vlan7, which smcroute leaves out" in converted.warnings[1]
    assert found.interfaces == {}  # r2's threshold is not written


def test_no_default_vifs_an_oif_merged_in_later_counts_from_its_own_line(tmp_path: Path) -> None:
    # smcrouted 2.5.6 -N: `Oifs: r2 r1`, r1 enabled between the two lines of the route.
    converted = convert(
        tmp_path,
        "phyint r0 enable\nphyint r2 enable\n"
        "mroute from r0 source 198.18.0.2 group 239.10.1.1 to r2\n"
        "phyint r1 enable\n"
        "mroute from r0 source 198.18.0.2 group 239.10.1.1 to r1\n",
        no_vifs=True,
    )
    assert converted.problems == converted.warnings == []
    assert declared(loads(tmp_path, converted)) == [("239.10.1.1", "r0", ("r2", "r1"))]


def test_the_cli_takes_no_default_vifs_as_smcrouted_takes_n(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("phyint r0 enable\nphyint r2 enable\nmroute from r0 group 239.1.0.0/16 to r+\n")
    for option in ("-N", "--no-default-vifs"):
        status, out, err = run_cli("import-smcroute", option, str(conf))
        assert status == 0
        assert 'oifs = ["r2"]' in out
        assert "warning: oif r+ written as r2" in err


# --- TTL thresholds: smcrouted -t keeps them on its own table's VIFs -----------------------------


def test_a_threshold_under_table_is_that_tables_own(tmp_path: Path) -> None:
    text = "phyint r2 enable ttl-threshold 5\nphyint r3 mrdisc\nphyint r4 mrdisc ttl-threshold 7\n"
    converted = convert(tmp_path, text, table="100")
    assert converted.problems == converted.warnings == []
    declared = loads(tmp_path, converted)
    assert declared.table_thresholds() == {("r2", 100): 5, ("r4", 100): 7}
    assert declared.thresholds() == {}
    assert declared.mrdisc() == {"r3": True, "r4": True}  # (mrdisc is the interface's)
    assert 'name = "r2"\ntable = 100\nthreshold = 5\n' in converted.text
    plain = convert(tmp_path, text)  # the default table: smcroute's own VIFs, every table
    assert plain.warnings == [] and loads(tmp_path, plain).thresholds() == {"r2": 5, "r4": 7}


def test_the_files_of_two_instances_keep_a_threshold_each(tmp_path: Path) -> None:
    text = "phyint r2 enable ttl-threshold 5\n"
    one = convert(tmp_path, text, table="100").text
    two = convert(tmp_path, text.replace("5", "9"), table="200").text
    out = tmp_path / "both.conf"  # (before: `declared twice`, the two in every table)
    out.write_text(one + "\n" + two)
    declared = config.load_all(str(out))[1]
    assert declared.table_thresholds() == {("r2", 100): 5, ("r2", 200): 9}


# --- wildcard joins ------------------------------------------------------------------------------


def test_a_wildcard_join_joins_on_every_match(tmp_path: Path) -> None:
    # smcrouted 2.5.6: "Join group (*,239.20.0.2) on ifindex 2 ... 6", every r* interface.
    converted = convert(
        tmp_path,
        "mgroup from r+ group 239.20.0.1\nssmgroup from vlan* source 198.18.0.2 group 232.1.1.1\n",
    )
    assert converted.problems == converted.warnings == []
    joins = loads(tmp_path, converted).joins
    assert [(j.interface, j.group, j.source) for j in joins] == [
        ("r+", "239.20.0.1", None),
        ("vlan*", "232.1.1.1", "198.18.0.2"),
    ]


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
    said(converted.problems, (6, "no `to OIF...`: smcroute installs the route with no oif"))
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


def test_to_refuses_the_input_or_a_file_it_includes_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    extra = tmp_path / "d" / "extra.conf"
    extra.write_text("mroute from eth0 source 198.18.0.2 group 239.1.1.2 to eth1\n")
    conf = tmp_path / "smcroute.conf"
    conf.write_text(
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\ninclude d/*.conf\n"
    )
    link = tmp_path / "link.conf"
    link.symlink_to(conf)
    before = {p: p.read_text() for p in (conf, extra)}
    for to, real in (
        (conf, conf),
        (extra, extra),
        (link, conf),
        (tmp_path / "d/../d/extra.conf", extra),
    ):
        for force in ([], ["--force"]):
            status, out, err = run_cli("import-smcroute", str(conf), "--to", str(to), *force)
            assert (status, out) == (2, "")
            assert err.splitlines() == [
                f"mfcctl: --to {to} is {real}, which this import reads: write the output elsewhere"
            ]
    assert {p: p.read_text() for p in (conf, extra)} == before


def test_to_replaces_only_an_earlier_import_unless_forced(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\n")
    mine = tmp_path / "mfcd.conf"
    mine.write_text('socket_path = "/run/mfcd/x.sock"\n')
    status, out, err = run_cli("import-smcroute", str(conf), "--to", str(mine))
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        f"mfcctl: --to {mine} exists and was not written by import-smcroute (its first line):"
        " nothing written; choose a new file (a drop-in), or replace it with --force"
    ]
    assert mine.read_text() == 'socket_path = "/run/mfcd/x.sock"\n'
    out_file = tmp_path / "50-smcroute.conf"
    for existing in (None, "", "stale"):  # new, empty, an earlier import: written
        if existing == "stale":
            run_cli("import-smcroute", str(conf), "--to", str(out_file))
            out_file.write_text(out_file.read_text().replace("239.1.1.1", "239.9.9.9"))
        elif existing is not None:
            out_file.write_text(existing)
        assert run_cli("import-smcroute", str(conf), "--to", str(out_file)) == (0, "", "")
        assert "239.1.1.1" in out_file.read_text() and "239.9.9.9" not in out_file.read_text()
        out_file.unlink()
    assert run_cli("import-smcroute", str(conf), "--to", str(mine), "--force") == (0, "", "")
    assert "239.1.1.1" in mine.read_text()


def test_to_is_not_written_when_a_line_is_not_converted_unless_forced(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\nbogus line\n")
    out_file = tmp_path / "50-smcroute.conf"
    status, out, err = run_cli("import-smcroute", str(conf), "--to", str(out_file))
    assert (status, out) == (1, "")
    assert not out_file.exists()
    assert err.splitlines()[-1] == (
        f"mfcctl: {out_file} not written: 1 line(s) not converted; fix or remove them and convert"
        " again, or write it anyway with --force"
    )
    status, out, err = run_cli("import-smcroute", str(conf), "--to", str(out_file), "-o", "json")
    assert status == 1 and json.loads(out)["written"] is False and not out_file.exists()
    status, out, err = run_cli("import-smcroute", str(conf), "--to", str(out_file), "--force")
    assert (status, out) == (1, "") and len(err.splitlines()) == 1
    assert "# NOT CONVERTED: bogus line" in out_file.read_text()


def test_an_include_that_matches_no_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "extra.conf").write_text(
        "mroute from eth0 source 198.18.0.2 group 239.1.1.2 to eth1\n"
    )
    converted = convert(
        tmp_path,
        "mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\n"
        f"include {tmp_path}/nosuch.d/*.conf\n"
        "include d/extr.conf\n"
        "include d/extra.conf\n",
    )
    said(converted.problems, (3, f"no such file {tmp_path}/d/extr.conf: its routes are not"))
    said(converted.warnings, (2, f"{tmp_path}/nosuch.d/*.conf matches no file: nothing included"))
    assert "# NOT CONVERTED: include d/extr.conf" in converted.text
    assert len(loads(tmp_path, converted).routes) == 2
    status, _, err = run_cli("import-smcroute", str(tmp_path / "smcroute.conf"))
    assert status == 1
    assert [line.split(":")[2] for line in err.splitlines()] == ["2", "3"]


def test_an_mroute_with_no_oif_says_the_flow_is_no_longer_blocked(tmp_path: Path) -> None:
    """Trial 15 F3: smcroute installs an mroute with no oif, which drops the flow; mfcd has
    no such route, so the message says the converted config does not block it, and names
    a template of the file that forwards it."""
    converted = convert(
        tmp_path,
        "mroute from r0 source 198.18.0.2 group 239.14.1.1\n"
        "mroute from r0 group 239.14.0.0/16 to r1\n"
        "mroute from r0 source 198.18.0.3 group 239.15.1.1 to\n"
        "mroute from r1 group 239.16.1.1\n",
    )
    blocked = (
        ": smcroute installs the route with no oif, which drops the flow (a stop filter); mfcd"
        " has no such route: the converted config does not block the flow, which is"
        " forwarded if a route or template matches it"
    )
    said(
        converted.problems,
        (
            1,
            f"no `to OIF...`{blocked}; here {tmp_path}/smcroute.conf:2 matches it: mfcd"
            " forwards it",
        ),
        (3, f"no oif after `to`{blocked}"),
        (4, f"no `to OIF...`{blocked}"),
    )
    assert [p.endswith(blocked) for p in converted.problems] == [False, True, True]
    assert len(loads(tmp_path, converted).templates) == 1


def test_to_refuses_a_config_whose_first_line_is_blank_and_a_dangling_link(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\n")
    mine = tmp_path / "mfcd.conf"
    mine.write_text('\nsocket_path = "/run/mfcd/x.sock"\n')  # (only an empty file is empty)
    status, _, err = run_cli("import-smcroute", str(conf), "--to", str(mine))
    assert status == 2 and "was not written by import-smcroute" in err
    assert mine.read_text() == '\nsocket_path = "/run/mfcd/x.sock"\n'
    dangling = tmp_path / "dangling.conf"
    dangling.symlink_to(tmp_path / "elsewhere" / "x.conf")
    for force in ([], ["--force"]):
        status, _, err = run_cli("import-smcroute", str(conf), "--to", str(dangling), *force)
        assert (status, err) == (
            2,
            f"mfcctl: --to {dangling} is a dangling symbolic link: nothing written\n",
        )
    assert not (tmp_path / "elsewhere").exists()


def test_to_replaces_a_links_target_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    conf = tmp_path / "smcroute.conf"
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.1 to eth1\n")
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "50-smcroute.conf"
    assert run_cli("import-smcroute", str(conf), "--to", str(target)) == (0, "", "")
    link = tmp_path / "50-smcroute.conf"
    link.symlink_to(target)
    conf.write_text("mroute from eth0 source 198.18.0.1 group 239.1.1.7 to eth1\n")
    assert run_cli("import-smcroute", str(conf), "--to", str(link)) == (0, "", "")
    assert link.is_symlink() and "239.1.1.7" in target.read_text()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["50-smcroute.conf"]
