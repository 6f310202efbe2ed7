"""End to end: a route added with mfcctl whose oifs name a wildcard (`vlan*`) follows the
interfaces that appear and go, with real packets, and keeps its pattern across a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args
from tests.netns.test_joins import groups, memberships

SOURCE = "198.18.0.2"
GROUP = "239.6.0.1"


def add_vlan(lab: Lab, k: int, name: str) -> None:
    """Link receiver k to the router, the router's end named `name`."""
    lab.link(lab.rx[k - 1], "x0", name, k)
    lab.wait_settled()


def route(mfcd: Mfcd) -> dict[str, object]:
    found: dict[str, object] = next(r for r in mfcd.show()["routes"] if r["group"] == GROUP)
    return found


def wait_for(what: Callable[[], bool], mfcd: Mfcd, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, mfcd.ok("show")
        time.sleep(0.05)


@pytest.mark.lab(receivers=3, linked=1)
def test_a_wildcard_route_follows_vlans_that_come_and_go_and_survives_a_restart(
    lab: Lab, mfcd: Mfcd
) -> None:
    add_vlan(lab, 2, "vlan1")  # rx2 behind vlan1; rx3 not linked yet; rx1 behind r1
    # The plan of the expansion (once mfcd has heard of vlan1: a dry run changes nothing).
    wait_for(lambda: "vlan1" in mfcd.ok(*route_args(SOURCE, GROUP, "r0", "vlan*"), "-n"), mfcd)
    assert GROUP not in mfcd.ok("show")
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "vlan*"))
    shown = route(mfcd)
    assert (shown["oifs"], shown["oif_patterns"]) == (["vlan1"], ["vlan*"])
    assert "vlan*(vlan1)" in mfcd.ok("show")
    assert lab.probe(GROUP) == dict(zip(lab.rx, [0, 5, 0], strict=True))

    # vlan2 appears: packets reach it with no further command.
    add_vlan(lab, 3, "vlan2")
    wait_for(lambda: route(mfcd)["oifs"] == ["vlan1", "vlan2"], mfcd)
    assert lab.probe(GROUP) == dict(zip(lab.rx, [0, 5, 5], strict=True))

    # vlan1 goes: dropped from the route, which stays installed.
    lab.del_router_link("vlan1")
    wait_for(lambda: route(mfcd)["oifs"] == ["vlan2"], mfcd)
    assert route(mfcd)["state"] == "installed"
    assert lab.probe(GROUP) == dict(zip(lab.rx, [0, 0, 5], strict=True))

    # The state file holds the pattern: after a restart, the route follows again.
    mfcd.stop()
    saved = Path(mfcd.state_file).read_text().splitlines()[1:]
    assert any('"vlan*"' in line for line in saved) and not any("vlan2" in r for r in saved)
    add_vlan(lab, 2, "vlan1")  # back while mfcd was down
    mfcd.start()
    shown = route(mfcd)
    assert (shown["oifs"], shown["oif_patterns"]) == (["vlan1", "vlan2"], ["vlan*"])
    assert lab.probe(GROUP) == dict(zip(lab.rx, [0, 5, 5], strict=True))
    lab.del_router_link("vlan2")
    wait_for(lambda: route(mfcd)["oifs"] == ["vlan1"], mfcd)
    assert lab.probe(GROUP) == dict(zip(lab.rx, [0, 5, 0], strict=True))

    # del names the route as always; a wildcard iif is refused, as in the config files.
    refused = mfcd.ctl(*route_args(SOURCE, "239.6.0.2", "vlan*", "r1"), "-o", "json")
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_argument"
    assert "iif vlan* is a wildcard" in refused.stderr
    mfcd.ok("mfc", "del", "--source", SOURCE, "--group", GROUP)
    assert GROUP not in mfcd.ok("show")


@pytest.mark.lab(receivers=3, linked=1)
def test_a_template_with_wildcard_iif_and_oifs_learns_and_forwards_to_vlans_that_appear(
    lab: Lab, mfcd: Mfcd
) -> None:
    group = "239.7.0.1"
    mfcd.ok("mfc", "add", "--group", "239.7.0.0/16", "--iif", "r*", "--oifs", "vlan*")

    def templates() -> list[tuple[str, str, list[str]]]:
        shown = [r for r in mfcd.show()["routes"] if r.get("template")]
        return [(t["iif"], t["iif_pattern"], t["oifs"]) for t in shown]

    # r0 (the sender's side) and r1 match r*; no vlan yet: no oif, so no template, but
    # show lists the wildcard template, degraded (it used to leave it out).
    assert templates() == [("", "r*", [])]
    (waiting,) = [r for r in mfcd.show()["routes"] if r.get("template")]
    assert (waiting["state"], waiting["reason"]) == ("degraded", "no interface matches vlan* yet")
    assert "r*()" in mfcd.ok("show") and "vlan*()" in mfcd.ok("show")
    add_vlan(lab, 2, "vlan1")
    deadline = time.monotonic() + 10
    while templates() != [("r0", "r*", ["vlan1"]), ("r1", "r*", ["vlan1"])]:
        assert time.monotonic() < deadline, templates()
        time.sleep(0.05)
    assert "r*(r0)" in mfcd.ok("show")
    assert lab.probe(group) == dict(zip(lab.rx, [0, 5, 0], strict=True))  # learned from r0's

    mfcd.stop()
    add_vlan(lab, 3, "vlan2")  # appears while mfcd is down
    mfcd.start()
    assert templates() == [("r0", "r*", ["vlan1", "vlan2"]), ("r1", "r*", ["vlan1", "vlan2"])]
    assert lab.probe(group) == dict(zip(lab.rx, [0, 5, 5], strict=True))
    refused = mfcd.ctl("mfc", "del", "--group", "239.7.0.0/16", "--iif", "r1")
    assert refused.returncode != 0 and "--iif 'r*'" in refused.stderr
    mfcd.ok("mfc", "del", "--group", "239.7.0.0/16", "--iif", "r*")
    assert templates() == []


@pytest.mark.lab(receivers=3, linked=1)
def test_a_join_on_a_wildcard_interface_follows_vlans_in_the_kernel(lab: Lab, mfcd: Mfcd) -> None:
    group = "239.8.0.1"
    add_vlan(lab, 2, "vlan1")
    mfcd.ok("join", "--interface", "vlan*", "--group", group)
    deadline = time.monotonic() + 10
    while group not in memberships(lab, "vlan1", 4):  # (once mfcd has heard of vlan1)
        assert time.monotonic() < deadline, groups(mfcd)
        time.sleep(0.05)
    add_vlan(lab, 3, "vlan2")  # appears: joined there too, with no command
    while group not in memberships(lab, "vlan2", 4):
        assert time.monotonic() < deadline, groups(mfcd)
        time.sleep(0.05)
    assert [(g["interface"], g["interface_pattern"]) for g in groups(mfcd)] == [
        ("vlan1", "vlan*"),
        ("vlan2", "vlan*"),
    ]
    lab.del_router_link("vlan1")
    while [g["interface"] for g in groups(mfcd)] != ["vlan2"]:
        assert time.monotonic() < deadline, groups(mfcd)
        time.sleep(0.05)
    mfcd.stop()
    add_vlan(lab, 2, "vlan1")
    mfcd.start()  # the wildcard was saved, not vlan2
    assert group in memberships(lab, "vlan1", 4) and group in memberships(lab, "vlan2", 4)
    mfcd.ok("leave", "--interface", "vlan*", "--group", group)
    assert groups(mfcd) == [] and group not in memberships(lab, "vlan1", 4)


def test_a_wildcard_that_matches_nothing_or_lacks_vifs_is_degraded_and_says_why(
    lab: Lab, mfcd: Mfcd
) -> None:
    """Trial 14 F9: `--oifs 'd+'` before any d* existed was `installed` with no oif and no
    warning; an interface it matched when the VIF table was full was left out with only
    a log line (at each interface event), the route still `installed`."""
    # 32 VIFs: r0..r3 and 28 reserved for interfaces that do not exist.
    missing = ",".join(f"w{i}" for i in range(28))
    mfcd.ok(*route_args(SOURCE, "239.6.1.1", "r0", f"r1,r2,r3,{missing}"))
    added = mfcd.ctl(*route_args(SOURCE, GROUP, "r0", "d+"))
    assert added.returncode == 0
    assert added.stdout == "route degraded: no interface matches d+ yet\n"
    assert added.stderr == (
        "mfcctl: warning: no interface matches d+ (yet); the route is degraded until it appears\n"
    )
    # d0 appears, but every VIF is taken: left out, and said so.
    lab.ip(lab.router, "link", "add", "d0", "type", "veth", "peer", "name", "e0")
    lab.ip(lab.router, "link", "set", "d0", "up")
    wait_for(lambda: route(mfcd)["reason"] == "no free VIF for d0", mfcd)
    assert (route(mfcd)["state"], route(mfcd)["oifs"]) == ("degraded", [])
    # VIFs freed: the next interface event catches up.
    mfcd.ok("mfc", "del", "--source", SOURCE, "--group", "239.6.1.1")
    lab.ip(lab.router, "link", "add", "d1", "type", "veth", "peer", "name", "e1")
    wait_for(lambda: route(mfcd)["state"] == "installed", mfcd)
    assert route(mfcd)["oifs"] == ["d0", "d1"]
