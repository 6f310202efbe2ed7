"""End to end: routes survive late interfaces, interfaces that vanish and return, and drift."""

from __future__ import annotations

import json
import signal
import sys
import textwrap
import time

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd, route_args
from tests.netns.test_forwarding import FLOWS, add, received


def add_waiting(mfcd: Mfcd, family: int, iif: str, oifs: str, state: str, *missing: str) -> str:
    """`mfc add` of the family's flow naming interfaces that do not exist: the command and
    `show` say the route is `state`, waiting for `missing`. Its group."""
    source, group = FLOWS[family]
    out = mfcd.ok("mfc", "add", "--source", source, "--group", group, "--iif", iif, "--oifs", oifs)
    assert state in out and all(name in out for name in missing), out
    route = mfcd.wait_state(group, state)
    assert route["missing"] == list(missing)
    assert route["reason"] == "waiting for " + ", ".join(missing)
    return group


@pytest.mark.lab(receivers=4, linked=3)
@pytest.mark.parametrize("family", [4, 6])
def test_a_route_naming_a_missing_oif_forwards_to_the_others_at_once(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    group = add_waiting(mfcd, family, "r0", "r1,r4", "degraded", "r4")
    assert received(lab, family) == [5, 0, 0, 0]  # r1 at once, not after r4 appears

    lab.add_receiver_link(4)  # the interface appears: no command needed
    mfcd.wait_state(group, "installed")
    assert received(lab, family) == [5, 0, 0, 5]


@pytest.mark.lab(receivers=4, linked=3)
@pytest.mark.parametrize("family", [4, 6])
def test_a_route_naming_a_missing_iif_is_pending_until_it_appears(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    group = add_waiting(mfcd, family, "r4", "r1,r5", "pending", "r4", "r5")
    assert kernel_tables.mfc(lab, family) == {}
    assert kernel_tables.vifs(lab, family) == {}  # nothing reserved for a pending route

    lab.add_receiver_link(4)  # the iif appears: installed, degraded as r5 is missing
    route = mfcd.wait_state(group, "degraded")
    assert route["missing"] == ["r5"]
    assert len(kernel_tables.mfc(lab, family)) == 1


def test_a_route_that_could_not_get_vifs_for_its_missing_oifs_is_refused(
    lab: Lab, mfcd: Mfcd
) -> None:
    """Trial 14 F8: 4 VIFs in use, a route naming 29 interfaces that do not exist was
    accepted ("route pending: no free VIF: all 32 are in use"; "pending until they
    appear"); refused with vif_limit as with its interfaces there, and nothing changes."""
    mfcd.ok(*route_args("198.18.0.2", "239.65.0.1", "r0", "r1,r2,r3"))  # 4 VIFs
    vifs = kernel_tables.vifs(lab, 4)
    missing = ",".join(f"w{i}" for i in range(29))
    refused = mfcd.ctl(*route_args("198.18.0.2", "239.65.0.2", "r0", missing))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.startswith(
        "mfcctl: cannot add 29 new IPv4 VIFs (w0, w1, w2, w3 and 25 more): only 28 of the"
        " 32 VIFs of table 253 are free"
    ), refused.stderr
    assert "239.65.0.2" not in mfcd.ok("show")
    assert kernel_tables.vifs(lab, 4) == vifs
    # 28 fit: accepted, degraded, their VIF numbers reserved (the kernel has none yet).
    out = mfcd.ok(*route_args("198.18.0.2", "239.65.0.3", "r0", ",".join(missing.split(",")[:28])))
    assert out.startswith("route degraded: waiting for w0, w1")
    assert kernel_tables.vifs(lab, 4) == vifs


@pytest.mark.parametrize("family", [4, 6])
def test_a_restart_while_an_oif_is_deleted_keeps_forwarding_to_the_others(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    """An oif deleted: the route is degraded and forwards to the other oifs; a restart of
    mfcd (which takes its routes out of the kernel and restores them from the state file)
    must not change that. The interface re-created: forwarded there too."""
    group = FLOWS[family][1]
    add(mfcd, family, "r0", "r1", "r2", "r3")
    assert received(lab, family) == [5, 5, 5]
    lab.del_router_link("r3")
    mfcd.wait_state(group, "degraded")
    assert received(lab, family) == [5, 5, 0]
    vifs_before = kernel_tables.vifs(lab, family)

    mfcd.stop()
    assert kernel_tables.mfc(lab, family) == {}  # (what the restart has to put back)
    mfcd.start()
    route = mfcd.wait_state(group, "degraded")
    assert route["missing"] == ["r3"]
    assert received(lab, family) == [5, 5, 0]
    assert kernel_tables.vifs(lab, family) == vifs_before  # r3's index still reserved

    lab.add_receiver_link(3)
    mfcd.wait_state(group, "installed")
    assert received(lab, family) == [5, 5, 5]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("which", ["oif", "iif"])
def test_deleted_and_recreated_interface_resumes_forwarding(
    lab: Lab, mfcd: Mfcd, family: int, which: str
) -> None:
    group = FLOWS[family][1]
    add(mfcd, family, "r0", "r1", "r2")
    assert received(lab, family) == [5, 5, 0]
    vifs_before = kernel_tables.vifs(lab, family)

    if which == "oif":
        lab.del_router_link("r1")
    else:
        lab.del_router_link("r0")
    route = mfcd.wait_state(group, "degraded" if which == "oif" else "pending")
    assert route["missing"] == (["r1"] if which == "oif" else ["r0"])
    if which == "oif":  # (with r0 gone the sender has no link to send on)
        assert received(lab, family) == [0, 5, 0]

    if which == "oif":
        lab.add_receiver_link(1)
    else:
        lab.add_sender_link()
    mfcd.wait_state(group, "installed")
    assert received(lab, family) == [5, 5, 0]
    # The same VIF index serves the re-created interface.
    assert kernel_tables.vifs(lab, family) == vifs_before


DEL_VIF = """
import socket, struct
family, vifi = {family}, {vifi}
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    s.setsockopt(socket.IPPROTO_IP, 203, struct.pack("=HBBIi4s", vifi, 0, 0, 0, 0, bytes(4)))
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, 203, struct.pack("=HBBH2xI", vifi, 0, 0, 0, 0))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_sync_repairs_a_vif_removed_behind_the_daemons_back(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    add(mfcd, family, "r0", "r1", "r2")
    vif = {name: index for index, name in kernel_tables.vifs(lab, family).items()}["r1"]
    # Another privileged program deletes r1's VIF (the kernel allows any CAP_NET_ADMIN socket).
    code = textwrap.dedent(DEL_VIF.format(family=family, vifi=vif))
    assert lab.exec(lab.router, sys.executable, "-c", code).returncode == 0
    assert received(lab, family) == [0, 5, 0]

    dry = mfcd.ctl("--dry-run", "sync")
    assert dry.returncode == 8, dry.stderr  # drift found
    report = dry.stdout
    assert (
        "would repair" in report
        and f"readd vif {'ipv4' if family == 4 else 'ipv6'} VIF {vif}" in report
    )
    assert received(lab, family) == [0, 5, 0]  # a dry run repairs nothing

    assert "repaired" in mfcd.ok("sync")
    assert received(lab, family) == [5, 5, 0]
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")
    assert json.loads(mfcd.ok("-o", "json", "sync", "--full")) == {
        "dry_run": False,
        "repairs": [],
        "full": True,
    }


STATIC_LEFTOVERS = """
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
# Without MRT_INIT these are static: they outlive this process, as another tool's would.
s.setsockopt(socket.IPPROTO_IP, 202, struct.pack("=HBBIi4s", 0, 8, 1, 0, {ifindex}, bytes(4)))
mfc = struct.pack("=4s4sH32s2xIIIi", socket.inet_aton("198.18.0.9"), socket.inet_aton("239.9.9.9"),
                  0, bytes(32), 0, 0, 0, 0)
s.setsockopt(socket.IPPROTO_IP, 204, mfc)
"""


def test_start_up_clears_entries_another_program_left_and_installs_saved_routes(
    lab: Lab, mfcd: Mfcd
) -> None:
    add(mfcd, 4, "r0", "r1")
    mfcd.stop()
    ifindex = int(lab.ip(lab.router, "-o", "link", "show", "r3").split(":")[0])
    code = textwrap.dedent(STATIC_LEFTOVERS.format(ifindex=ifindex))
    assert lab.exec(lab.router, sys.executable, "-c", code).returncode == 0
    assert ("198.18.0.9", "239.9.9.9") in kernel_tables.mfc(lab, 4)
    assert kernel_tables.vifs(lab, 4) == {0: "r3"}  # squats the VIF index mfcd will want

    mfcd.start()
    mfcd.wait_state(FLOWS[4][1], "installed")
    assert set(kernel_tables.mfc(lab, 4)) == {FLOWS[4]}
    assert received(lab, 4) == [5, 0, 0]
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")


@pytest.mark.parametrize("family", [4, 6])
def test_renamed_interface_is_let_go_and_taken_back_by_name(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    group = FLOWS[family][1]
    add(mfcd, family, "r0", "r1", "r2")
    lab.ip(lab.router, "link", "set", "r1", "down")
    lab.ip(lab.router, "link", "set", "r1", "name", "r1x")
    lab.ip(lab.router, "link", "set", "r1x", "up")
    route = mfcd.wait_state(group, "degraded")
    assert route["missing"] == ["r1"]
    # Routes follow names: the renamed device no longer gets the traffic.
    assert "r1x" not in kernel_tables.vifs(lab, family).values()
    assert received(lab, family) == [0, 5, 0]
    lab.ip(lab.router, "link", "set", "r1x", "name", "r1")
    mfcd.wait_state(group, "installed")
    assert received(lab, family) == [5, 5, 0]
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")


def test_sync_agrees_while_an_iif_is_missing(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1", "r2")
    lab.del_router_link("r0")
    mfcd.wait_state(FLOWS[4][1], "pending")
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")


TEMPLATE_GROUPS = {4: "239.77.0.0/16", 6: "ff3e::77:0/112"}


@pytest.mark.parametrize("family", [4, 6])
def test_a_route_and_a_template_whose_iif_is_deleted_are_pending_as_after_a_restart(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    """The state depends only on which interfaces exist: a route and a template whose iif
    r0 is deleted while mfcd runs are pending, as after a restart while r0 is missing, and
    forward nothing either way. The kernel: the running daemon's entry stays, idle (r0's
    VIF went with the device, its index stays reserved); the restarted daemon writes none.
    r0 re-created: installed, and forwarded, either way."""
    source, group = FLOWS[family]
    template = TEMPLATE_GROUPS[family]
    add(mfcd, family, "r0", "r1", "r2")
    mfcd.ok("mfc", "add", "--group", template, "--iif", "r0", "--oifs", "r1")
    assert received(lab, family) == [5, 5, 0]
    vifs_before = kernel_tables.vifs(lab, family)

    lab.del_router_link("r0")
    for shown in (group, template):
        route = mfcd.wait_state(shown, "pending")
        assert (route["missing"], route["reason"]) == (["r0"], "waiting for r0")
    assert list(kernel_tables.mfc(lab, family)) == [(source, group)]  # its entry, idle
    assert "r0" not in kernel_tables.vifs(lab, family).values()
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")
    assert mfcd.proc is not None
    mfcd.proc.send_signal(signal.SIGUSR1)  # the status line (STATUS=) counts it pending too
    time.sleep(0.5)

    _, log = mfcd.stop()
    assert "status: 0 of 1 routes installed, 1 pending" in log, log[-2000:]
    mfcd.start()
    for shown in (group, template):
        route = mfcd.wait_state(shown, "pending")
        assert (route["missing"], route["reason"]) == (["r0"], "waiting for r0")
    assert kernel_tables.mfc(lab, family) == {}
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")

    lab.add_sender_link()
    mfcd.wait_state(group, "installed")
    mfcd.wait_state(template, "installed")
    assert received(lab, family) == [5, 5, 0]
    assert sorted(kernel_tables.vifs(lab, family).values()) == sorted(vifs_before.values())


def test_ipv6_refuses_an_interface_index_above_65535_and_changes_nothing(
    lab: Lab, mfcd: Mfcd
) -> None:
    # mif6ctl holds the ifindex in 16 bits; IPv4's vifctl has 32.
    lab.ip(
        lab.router, "link", "add", "big", "index", "70000", "type", "veth", "peer", "name", "bigp"
    )
    lab.ip(lab.router, "link", "set", "big", "up")
    before = mfcd.show()
    result = mfcd.ctl(*route_args(FLOWS[6][0], FLOWS[6][1], "r0", "big"))
    assert result.returncode == 6 and "65535" in result.stderr
    assert mfcd.show() == before and kernel_tables.vifs(lab, 6) == {}
    mfcd.ok(*route_args(FLOWS[4][0], FLOWS[4][1], "r0", "big,r1"))
    assert received(lab, 4) == [5, 0, 0]
