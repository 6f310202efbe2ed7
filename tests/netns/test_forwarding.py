"""End to end: mfcctl tells the real mfcd to route, and real multicast packets follow."""

from __future__ import annotations

from typing import Any

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd, route_args

FLOWS = {4: ("198.18.0.2", "239.1.1.1"), 6: ("2001:db8::2", "ff3e::1:1")}
FAMILY = {4: "ipv4", 6: "ipv6"}


def add(mfcd: Mfcd, family: int, iif: str, *oifs: str, group: str | None = None) -> None:
    source, default_group = FLOWS[family]
    mfcd.ok(*route_args(source, group or default_group, iif, ",".join(oifs)))


def received(lab: Lab, family: int, group: str | None = None) -> list[int]:
    counts = lab.probe(group or FLOWS[family][1])
    return [counts[ns] for ns in lab.rx]


def assert_kernel_matches_show(lab: Lab, mfcd: Mfcd, family: int) -> None:
    """The kernel's MFC holds exactly the installed routes of `show`, with the same iif and oifs."""
    shown: dict[str, Any] = mfcd.show()
    vif_of = {v["interface"]: v["vif"] for v in shown["vifs"] if v["family"] == FAMILY[family]}
    expected = {
        (r["source"], r["group"]): (vif_of[r["iif"]], frozenset(vif_of[o] for o in r["oifs"]))
        for r in shown["routes"]
        if r["family"] == FAMILY[family] and r["state"] == "installed"
    }
    assert kernel_tables.mfc(lab, family) == expected
    kernel_vifs = kernel_tables.vifs(lab, family)
    assert kernel_vifs == {vif: name for name, vif in vif_of.items()}


@pytest.mark.parametrize("family", [4, 6])
def test_route_forwards_to_exactly_its_oifs_and_del_stops_it(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    assert received(lab, family) == [0, 0, 0]  # nothing is routed before a route exists
    add(mfcd, family, "r0", "r1", "r2")
    assert received(lab, family) == [5, 5, 0]
    assert_kernel_matches_show(lab, mfcd, family)
    source, group = FLOWS[family]
    assert f"({source},{group})" in mfcd.kernel_routes(family).replace(" ", "")

    mfcd.ok("mfc", "del", "--source", source, "--group", group)
    assert received(lab, family) == [0, 0, 0]
    assert kernel_tables.mfc(lab, family) == {}
    assert kernel_tables.vifs(lab, family) == {}  # VIFs no route uses are released
    assert mfcd.show()["routes"] == []


@pytest.mark.parametrize("family", [4, 6])
def test_replacing_a_route_moves_the_traffic(lab: Lab, mfcd: Mfcd, family: int) -> None:
    add(mfcd, family, "r0", "r1")
    assert received(lab, family) == [5, 0, 0]
    add(mfcd, family, "r0", "r3", "r2")
    assert received(lab, family) == [0, 5, 5]
    assert_kernel_matches_show(lab, mfcd, family)


def test_both_families_and_several_groups_at_once(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1")
    add(mfcd, 4, "r0", "r2", "r3", group="239.1.1.2")
    add(mfcd, 6, "r0", "r3")
    assert received(lab, 4) == [5, 0, 0]
    assert received(lab, 4, "239.1.1.2") == [0, 5, 5]
    assert received(lab, 6) == [0, 0, 5]
    assert_kernel_matches_show(lab, mfcd, 4)
    assert_kernel_matches_show(lab, mfcd, 6)


@pytest.mark.parametrize("family", [4, 6])
def test_dry_run_changes_nothing(lab: Lab, mfcd: Mfcd, family: int) -> None:
    source, group = FLOWS[family]
    out = mfcd.ok("--dry-run", *route_args(source, group, "r0", "r1"))
    assert "add vif" in out and "add mfc" in out
    assert mfcd.show()["routes"] == []
    assert kernel_tables.mfc(lab, family) == {}
    assert received(lab, family) == [0, 0, 0]


def test_errors_are_one_line_with_documented_exit_codes(mfcd: Mfcd) -> None:
    bad = mfcd.ctl(*route_args("198.18.0.2", "198.18.9.9", "r0", "r1"))
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "not a multicast address" in bad.stderr
    missing = mfcd.ctl("mfc", "del", "--source", "198.18.0.2", "--group", "239.9.9.9")
    assert missing.returncode == 5 and "no route" in missing.stderr
    assert mfcd.show()["routes"] == []
