"""End to end: `mfcctl diagnose` against the real daemon and kernel, one failure class each.

Each test breaks the flow's path in one way inside the lab's namespaces (a TTL-1 sender,
rp_filter with no route back, traffic on another interface, an oif down, a pending route,
a bridge that snoops with no querier), sends real packets, and checks that diagnose
names that failure, and only passes a healthy flow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lab.netns import Lab
from tests.netns.conftest import BIN, Mfcd, route_args

SOURCE, GROUP = "198.18.0.2", "239.1.1.1"
SOURCE6, GROUP6 = "2001:db8:0::2", "ff3e::1:1"

# Sends to GROUP from SOURCE out of IFNAME with the given TTL, 100 packets a second, until
# killed (at most 30 s): the flow diagnose samples.
SENDER = """
import socket, sys, time
group, ifname, source, ttl = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if ":" in group:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    index = socket.if_nametoindex(ifname)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
    s.bind((source, 0, 0, 0))
    dest = (group, 5000, 0, index)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
    s.bind((source, 0))
    dest = (group, 5000)
for i in range(3000):
    s.sendto(b"diagnose %d" % i, dest)
    time.sleep(0.01)
"""


@contextmanager
def sending(lab: Lab, source: str = SOURCE, group: str = GROUP, ttl: int = 8) -> Iterator[None]:
    """The sender sends the flow out of s0 (to the router's r0) while the block runs."""
    proc = lab.spawn(lab.sender, sys.executable, "-c", SENDER, group, "s0", source, str(ttl))
    try:
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield
    finally:
        lab.stop(proc)


def diagnose(mfcd: Mfcd, *args: str) -> tuple[int, dict[str, Any]]:
    result = mfcd.ctl("-o", "json", "diagnose", "--seconds", "1", *args)
    assert result.stdout, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, data


def checks(result: dict[str, Any], flow: int = 0) -> dict[str, dict[str, Any]]:
    """The checks of one flow by name (oifs as oif:NAME)."""
    out = {}
    for c in result["flows"][flow]["checks"]:
        name = c["check"] if c["check"] != "oif" else f"oif:{c['interface']}"
        out[name] = c
    return out


def failed(result: dict[str, Any]) -> set[str]:
    return {name for name, c in checks(result).items() if c["status"] == "failed"}


def machine_state(lab: Lab) -> str:
    """What diagnose must leave as it is: links, addresses, routes, MFC, sysctls."""
    router = lab.router
    parts = [
        lab.ip(router, "-d", "link", "show"),
        lab.ip(router, "addr", "show"),
        lab.ip(router, "route", "show", "table", "all"),
        lab.ip(router, "mroute", "show"),
        lab.exec(router, "sysctl", "-a", "--pattern", "net.ipv4.conf").stdout,
    ]
    # Counters and timers move on their own; the rest must not.
    return "\n".join(
        line
        for part in parts
        for line in part.splitlines()
        if "Iif" not in line and "used" not in line.lower()
    )


def test_a_healthy_flow_passes_and_nothing_changes(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1,r2"))
    before = machine_state(lab)
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 0, result
    assert result["verdict"] == "ok"
    found = checks(result)
    assert {c["status"] for c in found.values()} == {"passed"}
    assert "TTL 8" in found["ttl"]["detail"]
    assert "arrived on r0" in found["arrival"]["detail"]
    assert machine_state(lab) == before
    # The text form: the route, then one line per check.
    text = mfcd.ctl("diagnose", "--group", GROUP, "--seconds", "0.2").stdout
    assert text.splitlines()[0] == f"{SOURCE} -> {GROUP} iif r0 oifs r1,r2 (installed)"


def test_ipv6_healthy_flow_passes(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE6, GROUP6, "r0", "r1"))
    with sending(lab, SOURCE6, GROUP6):
        status, result = diagnose(mfcd, "--group", GROUP6, "--source", SOURCE6)
    assert (status, result["verdict"]) == (0, "ok"), result
    assert "hop limit 8" in checks(result)["ttl"]["detail"]


def test_a_ttl_1_sender(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1"))
    with sending(lab, ttl=1):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    ttl = checks(result)["ttl"]
    assert ttl["status"] == "failed"
    assert "TTL 1" in ttl["detail"]
    assert "TTL >= 2" in ttl["fix"]
    assert checks(result)["arrival"]["status"] == "passed"
    # The kernel counts them on the route, and drops them: nothing leaves.
    assert checks(result)["counted"]["status"] == "passed"
    assert checks(result)["sent"]["status"] == "failed"


def test_rp_filter_with_no_route_back(lab: Lab, mfcd: Mfcd) -> None:
    stranger = "198.19.5.5"  # the router has no route to it (and no default route)
    lab.ip(lab.sender, "addr", "add", f"{stranger}/32", "dev", "s0")
    # The namespace's own sysctl: the host's are never touched.
    sysctl = lab.exec(lab.router, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
    assert sysctl.returncode == 0, sysctl.stderr
    mfcd.ok(*route_args(stranger, GROUP, "r0", "r1"))
    with sending(lab, source=stranger):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", stranger)
    assert status == 8
    found = checks(result)
    assert found["rp_filter"]["status"] == "failed"
    assert "no route back" in found["rp_filter"]["detail"]
    assert found["arrival"]["status"] == "passed"  # it arrives, and is dropped after
    assert found["counted"]["status"] == "failed"
    # Loose mode with a route back passes.
    lab.exec(lab.router, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2")
    lab.ip(lab.router, "route", "add", f"{stranger}/32", "dev", "r0")
    with sending(lab, source=stranger):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", stranger)
    assert checks(result)["rp_filter"]["status"] == "passed", result
    assert (status, result["verdict"]) == (0, "ok"), result


def test_traffic_on_the_wrong_interface(lab: Lab, mfcd: Mfcd) -> None:
    # The route expects the flow on r1; it arrives on r0, which another route makes a VIF.
    mfcd.ok(*route_args(SOURCE, GROUP, "r1", "r2"))
    mfcd.ok(*route_args(SOURCE, "239.1.1.2", "r0", "r2"))
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    found = checks(result)
    assert found["wrong_if"]["status"] == "failed"
    assert "arrives on r0" in found["wrong_if"]["detail"]
    assert found["arrival"]["status"] == "failed"
    assert "--iif r0" in found["arrival"]["fix"]


def test_an_oif_down(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1,r2"))
    lab.ip(lab.router, "link", "set", "r2", "down")
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    assert failed(result) == {"oif:r2", "sent"}  # the kernel sends nothing out of r2
    assert checks(result)["oif:r2"]["fix"] == "ip link set r2 up"
    assert "no packet left by r2" in checks(result)["sent"]["detail"]


def test_an_oif_without_carrier(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1,r2"))
    lab.ip(lab.rx[1], "link", "set", "x0", "down")  # the veth's other end
    with sending(lab):
        _, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert failed(result) == {"oif:r2"}
    assert "no carrier" in checks(result)["oif:r2"]["detail"]


@pytest.mark.parametrize(
    ("iif", "oifs", "statuses"),
    [
        # Its iif is missing: pending, with no kernel entry to count packets on.
        ("nosuch0", "r1", {"counted": "unknown"}),
        # An oif is missing: degraded. In the kernel all the same: r0 has its VIF, and the
        # route forwards out of r1.
        ("r0", "r1,nosuch0", {"mc_forwarding": "passed", "oif:r1": "passed"}),
    ],
)
def test_a_route_waiting_for_an_interface(
    lab: Lab, mfcd: Mfcd, iif: str, oifs: str, statuses: dict[str, str]
) -> None:
    state, missing = ("pending", "iif") if iif == "nosuch0" else ("degraded", "oif:nosuch0")
    mfcd.ok(*route_args(SOURCE, GROUP, iif, oifs))
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    found = checks(result)
    assert found["state"]["status"] == "failed"
    assert found["state"]["detail"] == f"{state}: waiting for nosuch0"
    assert "create nosuch0" in found["state"]["fix"]
    assert found[missing]["detail"] == "nosuch0 does not exist"
    assert {name: found[name]["status"] for name in statuses} == statuses


def test_no_route_names_where_the_flow_arrives(lab: Lab, mfcd: Mfcd) -> None:
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP)
    assert status == 8
    assert result["flows"][0]["route"] is None
    route = checks(result)["route"]
    assert route["status"] == "failed"
    assert f"--source {SOURCE} --group {GROUP} --iif r0" in route["fix"]


def test_nothing_arrives(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1"))
    status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    arrival = checks(result)["arrival"]
    assert arrival["status"] == "failed"
    assert "join" in arrival["fix"]


def test_a_bridge_oif_snooping_with_no_querier(lab: Lab, mfcd: Mfcd) -> None:
    router = lab.router
    lab.ip(router, "link", "add", "br0", "type", "bridge", "mcast_snooping", "1")
    lab.ip(router, "link", "set", "br0", "type", "bridge", "mcast_querier", "0")
    lab.ip(router, "link", "set", "r2", "master", "br0")
    lab.ip(router, "link", "set", "br0", "up")
    lab.wait_settled()
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1,br0"))
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    # The trial's case: the flow is forwarded (the bridge floods while it hears no querier),
    # so a healthy flow is not "failed" (exit status 8): unknown, with the advice.
    assert (status, result["verdict"]) == (0, "unknown"), result
    snooping = checks(result)["bridge_snooping"]
    assert snooping["status"] == "unknown"
    assert "br0" in snooping["detail"] and "packets left by br0" in snooping["detail"]
    assert "mcast_querier 1" in snooping["fix"]
    assert checks(result)["sent"]["status"] == "passed"
    # The kernel's link dump as diagnose reads it for an l3mdev rule: kinds and masters (a
    # bridge port is in no VRF; this kernel has no vrf link type to make one).
    code = (
        "import json; from mfcd import netlink; kinds = netlink.dump_link_kinds();"
        " print(json.dumps([kinds, sorted(netlink.vrf_members(kinds))]))"
    )
    read = lab.exec(router, sys.executable, "-c", code)
    assert read.returncode == 0, read.stderr
    kinds, members = json.loads(read.stdout)
    by_name = {name: (kind, master) for _, name, kind, master in kinds}
    bridge = next(i for i, name, _, _ in kinds if name == "br0")
    assert by_name["br0"] == ("bridge", 0) and by_name["r2"] == ("veth", bridge)
    assert by_name["lo"] == ("", 0) and members == []
    assert lab.probe(GROUP)[lab.rx[1]] == 5  # rx2, behind br0's port r2
    lab.ip(router, "link", "set", "br0", "type", "bridge", "mcast_querier", "1")
    with sending(lab):
        _, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert checks(result)["bridge_snooping"]["status"] == "passed"


@contextmanager
def diagnosing(mfcd: Mfcd, seconds: int) -> Iterator[subprocess.Popen[str]]:
    """A diagnosis sampling for `seconds` in the background (0.5 s into it on entry)."""
    command = [str(BIN / "mfcctl"), "--socket", mfcd.socket, "diagnose", "--group", GROUP]
    slow = subprocess.Popen(
        [*command, "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        yield slow
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()


def test_sampling_does_not_hold_up_other_clients(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1"))
    with diagnosing(mfcd, 4) as slow:
        started = time.monotonic()
        mfcd.ok("ping")
        mfcd.ok("show")
        assert time.monotonic() - started < 2
        assert slow.poll() is None  # still sampling
        out, _ = slow.communicate(timeout=20)
    assert "verdict: failed" in out  # nothing was sent


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "10.0.0.1"], "not a multicast address"),
        (["--group", GROUP, "--seconds", "11"], "seconds must be"),
    ],
)
def test_bad_arguments_are_refused(mfcd: Mfcd, args: list[str], message: str) -> None:
    result = mfcd.ctl("diagnose", *args)
    assert result.returncode == 1
    assert message in result.stderr


def test_mfcd_stops_at_once_during_a_diagnosis(lab: Lab, mfcd: Mfcd) -> None:
    with diagnosing(mfcd, 10) as slow:
        started = time.monotonic()
        code, _ = mfcd.stop()
        assert code == 0
        assert time.monotonic() - started < 5  # not the 10 s of sampling
        _, err = slow.communicate(timeout=20)
    assert slow.returncode == 3, err  # the daemon went away: no answer, no false verdict


def test_a_template_with_a_flow_from_an_unnamed_source_passes(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r0", "--oifs", "r1,r2")
    with sending(lab):
        for args in (["--source", SOURCE], []):  # the learned entry is found either way
            status, result = diagnose(mfcd, "--group", GROUP, *args)
            assert status == 0, result
            assert result["verdict"] == "ok"
            [flow] = result["flows"]
            route = flow["route"]
            assert (route["kind"], route["source"], route["learned"]) == ("template", SOURCE, True)
            assert route["template"] == {"source": "*", "group": "239.1.0.0/16"}
            found = checks(result)
            assert {c["status"] for c in found.values()} == {"passed"}
            assert (
                found["learned"]["detail"] == f"an entry for ({SOURCE}, {GROUP}) is learned from it"
            )
            assert "arrived on r0" in found["arrival"]["detail"]
            assert found["counted"]["status"] == "passed"


def test_a_flow_that_starts_while_sampling_is_judged_as_learned(lab: Lab, mfcd: Mfcd) -> None:
    """Trial 15 F13: start diagnose, then the sender (or a flow back after its entry
    expired): the template learns the flow during the window, and diagnose says so."""
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r0", "--oifs", "r1,r2")
    started: list[subprocess.Popen[str]] = []
    late = threading.Timer(
        0.5,
        lambda: started.append(
            lab.spawn(lab.sender, sys.executable, "-c", SENDER, GROUP, "s0", SOURCE, "8")
        ),
    )
    late.start()
    try:
        result = mfcd.ctl("-o", "json", "diagnose", "--seconds", "2", "--group", GROUP)
    finally:
        late.join()
        for proc in started:
            lab.stop(proc)
    assert result.returncode == 0, result.stdout
    data = json.loads(result.stdout)
    [flow] = data["flows"]
    assert (flow["route"]["source"], flow["route"]["learned"]) == (SOURCE, True)
    found = checks(data)
    assert found["learned"]["status"] == "passed"
    assert found["counted"]["status"] == "passed", found["counted"]


def test_a_template_whose_iif_gets_no_traffic_says_nothing_is_learned(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r2", "--oifs", "r1")
    # Nothing sent at all: is a join needed?
    status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    route = result["flows"][0]["route"]
    assert (route["kind"], route["iif"], route["learned"]) == ("template", "r2", False)
    found = checks(result)
    assert found["state"]["status"] == "passed"
    assert found["learned"]["status"] == "failed"
    assert "learns it from the flow's first packet on r2" in found["learned"]["detail"]
    assert "join it on r2" in found["learned"]["fix"]
    assert found["counted"]["status"] == "unknown"
    # The flow arrives on r0, where no template waits for it: named as such.
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    found = checks(result)
    assert found["learned"]["status"] == "failed"
    assert found["arrival"]["status"] == "failed"
    assert "arrives on r0" in found["arrival"]["detail"]
    fix = found["arrival"]["fix"]
    assert "template's iif: mfcctl mfc add --group 239.1.0.0/16 --iif r0 --oifs r1" in fix
    assert mfcd.show()["routes"] == [r for r in mfcd.show()["routes"] if r.get("template")]


def test_neither_a_route_nor_a_template_matches(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok("mfc", "add", "--group", "239.2.0.0/16", "--iif", "r0", "--oifs", "r1")
    status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    assert checks(result)["route"]["detail"] == f"no route or template matches ({SOURCE}, {GROUP})"


@pytest.mark.parametrize(("family", "source", "group"), [(4, SOURCE, GROUP), (6, SOURCE6, GROUP6)])
def test_a_route_in_another_table_without_its_mrule(
    lab: Lab, mfcd: Mfcd, family: int, source: str, group: str
) -> None:
    """The user trial's case: a table-100 route, no `ip mrule iif r0 lookup 100`. Arrival,
    TTL and rp_filter are fine; the mrule check fails with the rule to add, and counted
    does not send the reader to failures above that are not there. With the rule: ok."""
    mfcd.ok("mfc", "add", "--table", "100", *route_args(source, group, "r0", "r1")[2:])
    args = ("--group", group, "--source", source, "--table", "100")
    with sending(lab, source, group):
        status, result = diagnose(mfcd, *args)
    assert (status, result["verdict"]) == (8, "failed"), result
    found = checks(result)
    ip = "ip mrule" if family == 4 else "ip -6 mrule"
    assert found["mrule"]["status"] == "failed", found["mrule"]
    assert found["mrule"]["fix"] == f"{ip} add iif r0 lookup 100 pref 32766"
    assert "not to the route's table 100" in found["mrule"]["detail"]
    for name in ("arrival", "ttl", "rp_filter"):
        assert found[name]["status"] == "passed", found[name]
    assert found["counted"]["status"] == "failed"
    assert found["counted"]["fix"] == "see the checks that failed above"
    # The fix, as diagnose wrote it.
    lab.ip(lab.router, *found["mrule"]["fix"].removeprefix("ip ").split())
    with sending(lab, source, group):
        status, result = diagnose(mfcd, *args)
    found = checks(result)
    assert (status, result["verdict"]) == (0, "ok"), result
    assert found["mrule"]["detail"] == (
        "rule 32766: iif r0 lookup 100 sends what arrives on r0 to table 100"
    )
    assert "counted" in found and found["counted"]["status"] == "passed"


# Creates multicast routing table N in the namespace it runs in and closes the socket: any
# MRT_TABLE setsockopt creates its table (no MRT_INIT needed), and the table stays.
CREATE_TABLE = """
import socket, struct, sys
family, table = int(sys.argv[1]), int(sys.argv[2])
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    level = socket.IPPROTO_IP
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    level = socket.IPPROTO_IPV6
s.setsockopt(level, 209, struct.pack("=I", table))  # MRT_TABLE / MRT6_TABLE
s.close()
"""


@pytest.mark.parametrize(("family", "source", "group"), [(4, SOURCE, GROUP), (6, SOURCE6, GROUP6)])
def test_an_mrule_to_a_table_that_does_not_exist_is_passed_over(
    lab: Lab, mfcd: Mfcd, family: int, source: str, group: str
) -> None:
    """`ip mrule add iif r0 lookup 77` before the rule to the route's table 100: while no
    table 77 exists the kernel passes over it (ipmr_rule_action(): -EAGAIN), the packets
    reach table 100 and are forwarded, and diagnose says ok, naming the rule passed over.
    Once something creates table 77, that rule decides: nothing reaches table 100."""
    mfcd.ok("mfc", "add", "--table", "100", *route_args(source, group, "r0", "r1")[2:])
    ip = "ip mrule" if family == 4 else "ip -6 mrule"
    lab.ip(lab.router, *f"{ip} add iif r0 lookup 77 pref 50".split()[1:])
    lab.ip(lab.router, *f"{ip} add iif r0 lookup 100 pref 60".split()[1:])
    assert lab.probe(group)[lab.rx[0]] == 5
    args = ("--group", group, "--source", source, "--table", "100")
    with sending(lab, source, group):
        status, result = diagnose(mfcd, *args)
    found = checks(result)
    assert (status, result["verdict"]) == (0, "ok"), result
    assert found["mrule"]["detail"] == (
        "rule 60: iif r0 lookup 100 sends what arrives on r0 to table 100; rule 50: iif r0"
        " lookup 77 is passed over while table 77 does not exist"
    )
    # Table 77 now exists (empty, with no owner): rule 50 takes r0's traffic.
    created = lab.exec(lab.router, sys.executable, "-c", CREATE_TABLE, str(family), "77")
    assert created.returncode == 0, created.stderr
    assert lab.probe(group)[lab.rx[0]] == 0
    with sending(lab, source, group):
        status, result = diagnose(mfcd, *args)
    found = checks(result)
    assert (status, result["verdict"]) == (8, "failed"), result
    assert found["mrule"]["status"] == "failed", found["mrule"]
    assert "goes to table 77 (rule 50: iif r0 lookup 77)" in found["mrule"]["detail"]
    # (first: the route where rule 50 sends the traffic, as for a default-table route)
    assert found["mrule"]["fix"].startswith("declare the route in table 77, where that traffic")
    assert found["mrule"]["fix"].endswith(
        f"; or send r0's traffic to table 100: {ip} add iif r0 lookup 100 pref 49"
    )
    assert found["counted"]["status"] == "failed"


@pytest.mark.parametrize(("family", "source", "group"), [(4, SOURCE, GROUP), (6, SOURCE6, GROUP6)])
def test_a_default_table_route_whose_iif_a_rule_steers_to_another_table(
    lab: Lab, mfcd: Mfcd, family: int, source: str, group: str
) -> None:
    """The trial's commonest multi-table mistake: `ip mrule iif r0 lookup 100` (table 100
    holds other routes) and a route for r0's flow left in the default table. Nothing is
    forwarded; diagnose failed on mrule (it blamed a firewall before), and its first fix,
    moving the route to table 100, makes it forward."""
    other = "239.1.1.9" if family == 4 else "ff3e::1:9"
    mfcd.ok("mfc", "add", "--table", "100", *route_args(source, other, "r0", "r1")[2:])
    ip = "ip mrule" if family == 4 else "ip -6 mrule"
    lab.ip(lab.router, *f"{ip} add iif r0 lookup 100 pref 100".split()[1:])
    mfcd.ok(*route_args(source, group, "r0", "r1"))
    assert lab.probe(group)[lab.rx[0]] == 0
    with sending(lab, source, group):
        status, result = diagnose(mfcd, "--group", group, "--source", source)
    assert (status, result["verdict"]) == (8, "failed"), result
    assert [f["route"]["table"] for f in result["flows"]] == [253 if family == 4 else 254]
    found = checks(result)
    assert found["mrule"]["status"] == "failed", found["mrule"]
    default = 253 if family == 4 else 254
    assert found["mrule"]["detail"] == (
        f"what arrives on r0 goes to table 100 (rule 100: iif r0 lookup 100), not to the"
        f" route's table {default}"
    )
    shown = result["flows"][0]["route"]["source"]  # canonical: 2001:db8::2
    move = f"mfcctl mfc add --table 100 --source {shown} --group {group} --iif r0 --oifs r1"
    assert move in found["mrule"]["fix"]
    # (the rule's fix takes r0's traffic from table 100 and its route: said)
    assert found["mrule"]["fix"].endswith(
        f"{ip} add iif r0 lookup {default} pref 99 (careful: rule 100 feeds table 100, where"
        " r0 carries 1 route of mfcd's: they would get none of r0's traffic)"
    )
    assert found["counted"]["fix"] == "see the checks that failed above"
    # The fix, as diagnose wrote it: the route in table 100.
    mfcd.ok("mfc", "del", "--source", source, "--group", group)
    mfcd.ok(*move.split()[1:])
    assert lab.probe(group)[lab.rx[0]] == 5
    with sending(lab, source, group):
        status, result = diagnose(mfcd, "--group", group, "--source", source)
    assert (status, result["verdict"]) == (0, "ok"), result
    assert [f["route"]["table"] for f in result["flows"]] == [100]


def test_a_default_table_template_whose_iif_a_rule_steers_elsewhere(lab: Lab, mfcd: Mfcd) -> None:
    """The trial's IPv6 case: a (*,G) template of the default table learns nothing once
    `ip -6 mrule iif r0 lookup 200` sends r0's traffic to table 200; learned pointed at
    mc_forwarding and rp_filter (both fine), now at the mrule check, which fails."""
    mfcd.ok("mfc", "add", "--table", "200", *route_args(SOURCE6, "ff3e::1:9", "r0", "r1")[2:])
    lab.ip(lab.router, "-6", "mrule", "add", "iif", "r0", "lookup", "200", "pref", "100")
    mfcd.ok("mfc", "add", "--group", "ff3e::/16", "--iif", "r0", "--oifs", "r1")
    with sending(lab, SOURCE6, GROUP6):
        status, result = diagnose(mfcd, "--group", GROUP6, "--source", SOURCE6)
    assert status == 8, result
    found = checks(result)
    assert found["learned"]["status"] == "failed"
    assert found["learned"]["fix"].startswith("see the mrule check below")
    assert found["mrule"]["status"] == "failed"
    assert found["mrule"]["fix"].startswith(
        "declare the template in table 200, where that traffic goes: mfcctl mfc add --table 200"
        " --group ff3e::/16 --iif r0 --oifs r1"
    )
    assert lab.probe(GROUP6)[lab.rx[0]] == 0


def test_without_a_table_diagnose_finds_the_route_of_another_table(lab: Lab, mfcd: Mfcd) -> None:
    """The trial's case: a table-100 route forwards the flow (`ip mrule iif r0 lookup
    100`); diagnose without --table said no route matched and told to add one. Now it
    walks the table-100 route, and `--group` alone lists the group's routes of every table;
    --table default says which table has one."""
    mfcd.ok("mfc", "add", "--table", "100", *route_args(SOURCE, GROUP, "r0", "r1")[2:])
    mfcd.ok(*route_args("198.18.0.3", GROUP, "r0", "r2"))
    lab.ip(lab.router, "mrule", "add", "iif", "r0", "lookup", "100", "pref", "100")
    assert lab.probe(GROUP)[lab.rx[0]] == 5
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
        _, every = diagnose(mfcd, "--group", GROUP)
        _, default = diagnose(mfcd, "--group", GROUP, "--source", SOURCE, "--table", "default")
    assert (status, result["verdict"]) == (0, "ok"), result
    assert [(f["route"]["source"], f["route"]["table"]) for f in result["flows"]] == [(SOURCE, 100)]
    assert checks(result)["mrule"]["status"] == "passed"
    assert [(f["route"]["source"], f["route"]["table"]) for f in every["flows"]] == [
        ("198.18.0.3", 253),
        (SOURCE, 100),
    ]
    route = checks(default)["route"]
    assert route["status"] == "failed"
    assert route["fix"].startswith("table 100 has one: diagnose with --table 100")
    text = mfcd.ctl("diagnose", "--seconds", "0.5", "--group", GROUP, "--source", SOURCE)
    assert (
        text.stdout.splitlines()[0] == f"{SOURCE} -> {GROUP} iif r0 oifs r1 (installed) table 100"
    )
    # With no route for the flow anywhere: the one to add goes where r0's traffic goes.
    mfcd.ok("mfc", "del", "--table", "100", "--source", SOURCE, "--group", GROUP)
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    assert checks(result)["route"]["fix"].startswith(
        f"add one: mfcctl mfc add --table 100 --source {SOURCE} --group {GROUP} --iif r0"
    )


# Another program's MRT_ADD_MFC through a socket of its own (no MRT_INIT), in the default
# IPv4 table: (SOURCE, group) from VIF `parent` to the VIFs `oifs`.
FOREIGN_ADD = """
import socket, struct, sys
source, group = sys.argv[1], sys.argv[2]
parent, oifs = int(sys.argv[3]), [int(v) for v in sys.argv[4:]]
ttls = bytearray(32)
for v in oifs:
    ttls[v] = 1
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, 209, struct.pack("=I", 253))  # MRT_TABLE
arg = struct.pack("=4s4sH32s2xIIIi", socket.inet_aton(source), socket.inet_aton(group),
                  parent, bytes(ttls), 0, 0, 0, 0)
s.setsockopt(socket.IPPROTO_IP, 204, arg)  # MRT_ADD_MFC
"""


def foreign_add(lab: Lab, group: str, parent: int, *oifs: int) -> None:
    args = [str(v) for v in (parent, *oifs)]
    done = lab.exec(lab.router, sys.executable, "-c", FOREIGN_ADD, SOURCE, group, *args)
    assert done.returncode == 0, done.stderr


def test_an_entry_another_program_rewrote_is_named_with_sync_as_the_fix(
    lab: Lab, mfcd: Mfcd
) -> None:
    mfcd.ok(*route_args(SOURCE, GROUP, "r0", "r1,r2"))
    vifs = {v["interface"]: v["vif"] for v in mfcd.show()["vifs"]}
    foreign_add(lab, GROUP, vifs["r0"], vifs["r1"])  # r2 dropped
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    drift = checks(result)["kernel_entry"]
    assert drift["status"] == "failed"
    assert drift["detail"] == (
        f"the kernel's entry for ({SOURCE}, {GROUP}) differs from mfcd's: the kernel has"
        " iif r0 oifs r1, mfcd wants iif r0 oifs r1,r2"
    )
    assert drift["fix"].startswith("mfcctl -n sync shows what differs; mfcctl sync")
    assert checks(result)["sent"]["fix"].startswith("see the kernel_entry check")

    mfcd.ok("sync")
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 0, failed(result)
    assert checks(result)["kernel_entry"]["status"] == "passed"


def test_a_foreign_entry_blocking_a_template_and_a_deleted_vif_are_named(
    lab: Lab, mfcd: Mfcd
) -> None:
    mfcd.ok("mfc", "add", "--group", "239.1.0.0/16", "--iif", "r0", "--oifs", "r1")
    mfcd.ok(*route_args(SOURCE, "239.2.2.2", "r0", "r2"))  # so that r2 has a VIF
    vifs = {v["interface"]: v["vif"] for v in mfcd.show()["vifs"]}
    foreign_add(lab, GROUP, vifs["r0"], vifs["r2"])  # before the first packet: none learned
    with sending(lab):
        status, result = diagnose(mfcd, "--group", GROUP, "--source", SOURCE)
    assert status == 8
    drift = checks(result)["kernel_entry"]
    assert "that mfcd did not add (iif r0 oifs r2)" in drift["detail"], drift
    assert "the kernel holds one mfcd did not add" in checks(result)["learned"]["detail"]

    mfcd.ok("sync")
    # An oif's VIF deleted behind mfcd's back.
    code = (
        "import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 2);"
        "s.setsockopt(0, 209, struct.pack('=I', 253));"
        f"s.setsockopt(0, 203, struct.pack('=HBBIi4s', {vifs['r2']}, 0, 0, 0, 0, bytes(4)))"
    )
    done = lab.exec(lab.router, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    with sending(lab, group="239.2.2.2"):
        status, result = diagnose(mfcd, "--group", "239.2.2.2", "--source", SOURCE)
    assert status == 8
    drift = checks(result)["kernel_entry"]
    assert drift["detail"].startswith("the kernel lacks the VIF of r2"), drift
