"""End to end: routes in two multicast routing tables, traffic steered by `ip mrule`.

The lab's rx1 namespace (on the router's r1) sends instead of receiving, so two senders
reach the router: the sender on r0 and rx1 on r1. `ip mrule iif r1 lookup 100` sends r1's
traffic to table 100. Both tables hold routes for both senders' (S,G), each to another
receiver, so a packet that reached the wrong table would arrive at the wrong receiver.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import TRAFFIC, Lab
from tests.netns.conftest import BIN, Mfcd, route_args, running, smcrouted

GROUPS = {4: "239.1.7.1", 6: "ff3e::7:1"}
UNROUTED = {4: "239.1.7.9", 6: "ff3e::7:9"}  # no route in any table
# The address of each sender: the lab's sender (r0) and rx1 (r1).
SOURCES = {4: ("198.18.0.2", "198.18.1.2"), 6: ("2001:db8::2", "2001:db8:1::2")}
TABLE = "100"


def send_and_count(
    lab: Lab, family: int, sender: int, count: int = 5, group: str | None = None
) -> list[int]:
    """Send from sender 0 (the lab's sender, on r0) or 1 (rx1, on r1); return what rx2 (on r2)
    and rx3 (on r3) received."""
    group = group or GROUPS[family]
    ns, ifname = (lab.sender, "s0") if sender == 0 else (lab.rx[0], "x0")
    receivers = {
        rx: lab.spawn(rx, sys.executable, TRAFFIC, "recv", group, "5000", "x0") for rx in lab.rx[1:]
    }
    counts = []
    try:
        for proc in receivers.values():
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        source = SOURCES[family][sender]
        sent = lab.exec(
            ns, sys.executable, TRAFFIC, "send", group, "5000", ifname, source, str(count)
        )
        assert sent.returncode == 0, sent.stderr
        time.sleep(0.3)
    finally:
        for proc in receivers.values():
            _, out, _ = lab.stop(proc)
            lines = out.strip().splitlines()
            counts.append(json.loads(lines[-1])["received"] if lines else -1)
    return counts


def upcalls(mfcd: Mfcd) -> int:
    """How many NOCACHE upcalls mfcd has read (`ping`)."""
    count: int = json.loads(mfcd.ok("ping", "-o", "json"))["upcalls"]["nocache"]
    return count


def mroute_table(lab: Lab, family: int, table: str) -> str:
    shown = lab.exec(lab.router, "ip", f"-{family}", "mroute", "show", "table", table)
    return shown.stdout


def both_tables_to_r3(lab: Lab, mfcd: Mfcd) -> None:
    """IPv4: r1's traffic steered to table 100 (`ip mrule`), r0's to the default table; a
    route in each, both out of r3 (a VIF of both tables)."""
    group = GROUPS[4]
    lab.ip(lab.router, "-4", "mrule", "add", "iif", "r1", "lookup", TABLE)
    first, second = SOURCES[4]
    mfcd.ok(*route_args(first, group, "r0", "r3"))
    mfcd.ok(*route_args(second, group, "r1", "r3"), "--table", TABLE)


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("family", [4, 6])
def test_each_table_forwards_the_traffic_its_rule_steers_to_it(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    lab.ip(lab.router, f"-{family}", "mrule", "add", "iif", "r1", "lookup", TABLE)
    group = GROUPS[family]
    first, second = SOURCES[family]
    # The default table sends both senders' traffic to r2, table 100 to r3.
    for table, oif in (("default", "r2"), (TABLE, "r3")):
        for source, iif in ((first, "r0"), (second, "r1")):
            mfcd.ok(*route_args(source, group, iif, oif), "--table", table)
    shown = mfcd.show()
    assert sorted((r["source"], r["table"]) for r in shown["routes"]) == sorted(
        (s, t) for s in (first, second) for t in (253 if family == 4 else 254, 100)
    )
    assert {(v["interface"], v["table"]) for v in shown["vifs"] if v["table"] == 100} == {
        ("r0", 100),
        ("r1", 100),
        ("r3", 100),
    }

    def forwarded() -> tuple[list[int], list[int]]:
        return send_and_count(lab, family, 0), send_and_count(lab, family, 1)

    assert forwarded() == ([5, 0], [0, 5])  # r0's traffic by the default table, r1's by 100
    in_100 = mroute_table(lab, family, TABLE)
    assert f"({second}," in in_100.replace(", ", ",") and group in in_100

    # Table 100's socket, opened after start-up, is watched too: an upcall of that table
    # (a packet from r1 to a group with no route) is read and counted.
    before = upcalls(mfcd)
    assert send_and_count(lab, family, 1, 1, UNROUTED[family]) == [0, 0]
    deadline = time.monotonic() + 5
    while upcalls(mfcd) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upcalls(mfcd) == before + 1

    # A restart restores both tables from the state file.
    mfcd.stop()
    mfcd.start()
    assert forwarded() == ([5, 0], [0, 5])
    assert mfcd.ok("sync", "--dry-run", "-o", "json").count('"action"') == 0

    # Deleting table 100's routes empties it (mfcd closes it); the rule may stay.
    for source in (first, second):
        mfcd.ok("mfc", "del", "--source", source, "--group", group, "--table", TABLE)
    assert group not in mroute_table(lab, family, TABLE)
    assert forwarded() == ([5, 0], [0, 0])  # r1's traffic finds no route in table 100
    assert [r["table"] for r in mfcd.show()["routes"]] == [253 if family == 4 else 254] * 2
    # Asked for in table 100 again, a route of the default table is named where it is.
    again = mfcd.ctl("mfc", "del", "--source", second, "--group", group, "--table", TABLE)
    assert again.returncode == 5
    default = 253 if family == 4 else 254
    assert again.stderr.strip().endswith(
        f"in table {TABLE}; there is one in the default table {default} (without --table)"
    ), again.stderr
    _, log = mfcd.stop()
    assert f"table {TABLE} is empty: closed" in log


@pytest.mark.lab(receivers=3)
def test_an_interface_recreated_comes_back_in_every_table_it_is_a_vif_of(
    lab: Lab, mfcd: Mfcd
) -> None:
    family = 4
    both_tables_to_r3(lab, mfcd)
    assert (send_and_count(lab, family, 0), send_and_count(lab, family, 1)) == ([0, 5], [0, 5])
    lab.del_router_link("r3")
    routes = mfcd.show()["routes"]
    deadline = time.monotonic() + 10
    while {r["state"] for r in routes} != {"degraded"} and time.monotonic() < deadline:
        time.sleep(0.05)
        routes = mfcd.show()["routes"]
    assert sorted((r["table"], r["state"]) for r in routes) == [
        (100, "degraded"),
        (253, "degraded"),
    ]
    lab.add_receiver_link(3)
    deadline = time.monotonic() + 10
    while {r["state"] for r in mfcd.show()["routes"]} != {"installed"}:
        assert time.monotonic() < deadline, mfcd.show()["routes"]
        time.sleep(0.05)
    assert (send_and_count(lab, family, 0), send_and_count(lab, family, 1)) == ([0, 5], [0, 5])


HOLD_TABLE = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, 209, struct.pack("=I", int(sys.argv[1])))  # MRT_TABLE
s.setsockopt(socket.IPPROTO_IP, 200, struct.pack("=i", 1))  # MRT_INIT
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.lab(receivers=3)
def test_a_table_another_router_owns_is_refused_and_nothing_changes(lab: Lab, mfcd: Mfcd) -> None:
    holder = lab.spawn(lab.router, sys.executable, "-c", HOLD_TABLE, TABLE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    first, second = SOURCES[4]
    mfcd.ok(*route_args(first, GROUPS[4], "r0", "r2"))
    before = mfcd.show()
    refused = mfcd.ctl(*route_args(second, GROUPS[4], "r1", "r3"), "--table", TABLE)
    assert refused.returncode != 0
    assert f"already owns IPv4 multicast routing table {TABLE}" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert mfcd.show() == before
    # r1's traffic steered to the owned table: diagnose of a default-table route on r1
    # does not offer to declare it there, which mfcd would refuse (trial 14 F7).
    lab.ip(lab.router, "-4", "mrule", "add", "iif", "r1", "lookup", TABLE)
    mfcd.ok(*route_args(second, GROUPS[4], "r1", "r2"))
    args = ("--source", second, "--group", GROUPS[4], "--seconds", "0.2")
    diagnosed = json.loads(mfcd.ctl("-o", "json", "diagnose", *args).stdout)
    [mrule] = [c for c in diagnosed["flows"][0]["checks"] if c["check"] == "mrule"]
    assert mrule["status"] == "failed" and f"goes to table {TABLE}" in mrule["detail"]
    assert mrule["fix"].startswith("ip mrule del pref 0"), mrule["fix"]
    lab.stop(holder)
    mfcd.ok(*route_args(second, GROUPS[4], "r1", "r3"), "--table", TABLE)
    assert [r["table"] for r in mfcd.show()["routes"]] == [100, 253, 253]


# Another privileged program changes table 100 behind mfcd's back, through a raw socket set
# to the table without MRT_INIT (the kernel lets any CAP_NET_ADMIN socket): it deletes a
# VIF, adds an entry of its own and, unless `ours` is empty, deletes mfcd's entry.
BEHIND_THE_BACK = """
import socket, struct
family, table, vifi = {family}, {table}, {vifi}
stray, ours, group = {stray!r}, {ours!r}, {group!r}
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    level, vif = socket.IPPROTO_IP, struct.pack("=HBBIi4s", vifi, 0, 0, 0, 0, bytes(4))
    def mfc(source):
        return struct.pack("=4s4sH32s2xIIIi", socket.inet_aton(source),
                           socket.inet_aton(group), 0, bytes(32), 0, 0, 0, 0)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    level, vif = socket.IPPROTO_IPV6, struct.pack("=HBBH2xI", vifi, 0, 0, 0, 0)
    def sin6(address):
        raw = socket.inet_pton(socket.AF_INET6, address)
        return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, raw, 0)
    def mfc(source):
        return struct.pack("=28s28sH2x32s", sin6(source), sin6(group), 0, bytes(32))
s.setsockopt(level, 209, struct.pack("=I", table))  # MRT_TABLE
s.setsockopt(level, 203, vif)  # MRT_DEL_VIF
s.setsockopt(level, 204, mfc(stray))  # MRT_ADD_MFC
if ours:
    s.setsockopt(level, 205, mfc(ours))  # MRT_DEL_MFC
"""
STRAYS = {4: "198.18.1.9", 6: "2001:db8:1::9"}


def behind_the_back(lab: Lab, family: int, vifi: int, ours: str) -> None:
    code = BEHIND_THE_BACK.format(
        family=family, table=TABLE, vifi=vifi, stray=STRAYS[family], ours=ours, group=GROUPS[family]
    )
    done = lab.exec(lab.router, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr


LARGEST = {4: 999_999_999, 6: 99_999_999}  # the largest id MRT_TABLE / MRT6_TABLE take


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("family", [4, 6])
def test_sync_and_the_drift_check_repair_another_table_changed_behind_mfcds_back(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    lab.ip(lab.router, f"-{family}", "mrule", "add", "iif", "r1", "lookup", TABLE, "pref", "100")
    group, source, name = GROUPS[family], SOURCES[family][1], f"ipv{family}"
    mfcd.ok(*route_args(source, group, "r1", "r2,r3"), "--table", TABLE)
    vifs = {v["interface"]: v["vif"] for v in mfcd.show()["vifs"] if v["table"] == 100}
    assert send_and_count(lab, family, 1) == [5, 5]

    # r3's VIF gone, an entry of another program's in, mfcd's entry out.
    behind_the_back(lab, family, vifs["r3"], source)
    assert STRAYS[family] in mroute_table(lab, family, TABLE)
    assert source not in mroute_table(lab, family, TABLE)
    dry = mfcd.ctl("sync", "--dry-run")
    assert dry.returncode == 8, dry.stderr  # drift found
    report = dry.stdout
    for line in (
        f"readd vif {name} table 100 VIF {vifs['r3']} (r3)",
        f"del mfc {name} table 100 {STRAYS[family]} -> {group}",
        f"reissue mfc {name} table 100 {source} -> {group}",
    ):
        assert line in report, report
    assert STRAYS[family] in mroute_table(lab, family, TABLE)  # a dry run repairs nothing

    assert "repaired" in mfcd.ok("sync")
    assert STRAYS[family] not in mroute_table(lab, family, TABLE)
    assert send_and_count(lab, family, 1) == [5, 5]
    assert mfcd.ok("sync").startswith("kernel and mfcd agree")
    assert json.loads(mfcd.ok("-o", "json", "sync", "--full"))["repairs"] == []

    # Again, and this time the drift check after an interface event repairs it: a route
    # waiting for dq0 makes dq0's arrival such an event.
    behind_the_back(lab, family, vifs["r3"], "")
    assert send_and_count(lab, family, 1) == [5, 0]
    mfcd.ok(*route_args(SOURCES[family][0], UNROUTED[family], "r0", "dq0"))
    lab.ip(lab.router, "link", "add", "dq0", "up", "type", "veth", "peer", "name", "dq1")
    deadline = time.monotonic() + 10
    while send_and_count(lab, family, 1, 1) != [1, 1]:
        assert time.monotonic() < deadline, mroute_table(lab, family, TABLE)
    assert send_and_count(lab, family, 1) == [5, 5]
    # (the check after an event looks for missing VIFs, not for entries of others)
    assert STRAYS[family] in mroute_table(lab, family, TABLE)
    _, log = mfcd.stop()
    assert re.search(r"WARNING: drift check of routes on dq0\b.*readd_vif 1", log), log


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("family", [4, 6])
def test_the_largest_table_of_each_family_works_and_one_more_is_refused_first(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    source, group, largest = SOURCES[family][0], GROUPS[family], LARGEST[family]
    before = mfcd.show()
    refused = mfcd.ctl(*route_args(source, group, "r0", "r2"), "--table", str(largest + 1))
    assert refused.returncode == 1
    name = f"IPv{family}"
    assert f"out of range for {name}: give a number from 1 to {largest}" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert mfcd.show() == before
    mfcd.ok(*route_args(source, group, "r0", "r2"), "--table", str(largest))
    assert [(r["table"], r["state"]) for r in mfcd.show()["routes"]] == [(largest, "installed")]
    assert group in mroute_table(lab, family, str(largest))


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("family", [4, 6])
def test_a_batch_table_puts_the_lines_that_name_none_in_it(
    lab: Lab, mfcd: Mfcd, family: int, tmp_path: Path
) -> None:
    """`mfcctl batch --table 100 FILE`: the file's lines name no table and land in table 100,
    which forwards the traffic its rule steers to it; a line's own --table still counts."""
    lab.ip(lab.router, f"-{family}", "mrule", "add", "iif", "r1", "lookup", TABLE)
    group = GROUPS[family]
    first, second = SOURCES[family]
    batch = tmp_path / "table100.batch"
    batch.write_text(
        f"mfc add --source {second} --group {group} --iif r1 --oifs r3\n"
        f"mfc add --source {first} --group {group} --iif r0 --oifs r2 --table default\n"
    )
    assert mfcd.ok("batch", "--table", TABLE, str(batch)).startswith("2 added")
    default = 253 if family == 4 else 254
    assert sorted((r["source"], r["table"]) for r in mfcd.show()["routes"]) == sorted(
        [(second, 100), (first, default)]
    )
    in_100 = mroute_table(lab, family, TABLE).replace(", ", ",")
    assert f"({second},{group})" in in_100 and f"({first}," not in in_100
    assert send_and_count(lab, family, 1) == [0, 5]  # r1's traffic: table 100, out of r3
    assert send_and_count(lab, family, 0) == [5, 0]  # r0's: the default table, out of r2


@pytest.mark.lab(receivers=3)
def test_a_threshold_of_one_table_stops_only_that_tables_traffic(lab: Lab, mfcd: Mfcd) -> None:
    """`vif set r3 --threshold 8 --table 100`: table 100's traffic (r1's, by the rule) with
    the lab's TTL of 8 no longer leaves r3, the default table's (r0's) still does."""
    family = 4
    both_tables_to_r3(lab, mfcd)

    def forwarded() -> tuple[list[int], list[int]]:
        return send_and_count(lab, family, 0), send_and_count(lab, family, 1)

    assert forwarded() == ([0, 5], [0, 5])
    mfcd.ok("vif", "set", "r3", "--threshold", "8", "--table", TABLE)
    assert forwarded() == ([0, 5], [0, 0])  # TTL 8 is not above table 100's threshold
    assert "r3(ttl 8)" in mroute_table(lab, family, TABLE)
    assert "ttl" not in mroute_table(lab, family, "default")
    settings = json.loads(mfcd.ok("vif", "show", "-o", "json"))["settings"]
    assert settings == [
        {"interface": "r3", "table": 100, "threshold": 8, "threshold_origin": "api"}
    ]
    # Kept across a restart, in that table only.
    mfcd.stop()
    mfcd.start()
    assert forwarded() == ([0, 5], [0, 0])
    # The every-table threshold leaves table 100's own alone; 1 there is a setting too.
    mfcd.ok("vif", "set", "r3", "--threshold", "8")
    mfcd.ok("vif", "set", "r3", "--threshold", "1", "--table", TABLE)
    assert forwarded() == ([0, 0], [0, 5])
    # `default` with --table removes table 100's own: the every-table 8 applies there too.
    mfcd.ok("vif", "set", "r3", "--threshold", "default", "--table", TABLE)
    assert forwarded() == ([0, 0], [0, 0])
    # mrdisc is per interface: refused with a table, and nothing changes.
    refused = mfcd.ctl("vif", "set", "r3", "--mrdisc", "--table", TABLE, "-o", "json")
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_argument"
    assert len(refused.stderr.strip().splitlines()) == 1
    assert mfcd.ok("sync", "--dry-run", "-o", "json").count('"action"') == 0


@pytest.mark.lab(receivers=3)
def test_a_declared_threshold_of_one_table_applies_there_and_a_reload_removes_it(
    lab: Lab, mfcd: Mfcd
) -> None:
    family = 4
    both_tables_to_r3(lab, mfcd)
    settings = mfcd.config_file.read_text()
    declared = f'\n[[interface]]\nname = "r3"\ntable = {TABLE}\nthreshold = 8\n'
    mfcd.config_file.write_text(settings + declared)
    assert "1 threshold changed" in mfcd.ok("reload")
    assert (send_and_count(lab, family, 0), send_and_count(lab, family, 1)) == ([0, 5], [0, 0])
    shown = json.loads(mfcd.ok("vif", "show", "-o", "json"))["settings"]
    assert shown == [
        {"interface": "r3", "table": 100, "threshold": 8, "threshold_origin": "config"}
    ]
    text = mfcd.ok("vif", "show").splitlines()
    assert text[-1].split() == ["r3", "100", "8", "-", "config"]
    refused = mfcd.ctl("vif", "set", "r3", "--threshold", "2", "--table", TABLE)
    assert refused.returncode != 0 and "declared in" in refused.stderr
    mfcd.config_file.write_text(settings)
    mfcd.ok("reload")
    assert (send_and_count(lab, family, 0), send_and_count(lab, family, 1)) == ([0, 5], [0, 5])


# An smcroute.conf for `smcrouted -t 100`: r1's traffic, which the rule steers to table 100,
# out of r2 and r3, with a threshold on r3 that the lab's TTL of 8 does not pass.
SMCROUTE_TABLE_100 = f"""phyint r3 ttl-threshold 8
mroute from r1 source {SOURCES[4][1]} group {GROUPS[4]} to r2 r3
"""


@pytest.mark.lab(receivers=3)
def test_an_imported_smcroute_table_keeps_its_threshold_in_that_table(
    lab: Lab, tmp_path: Path
) -> None:
    """`import-smcroute --table 100` of a file `smcrouted -t 100` ran: its ttl-threshold
    stops table 100's traffic out of r3 as smcrouted's did, and no other table's."""
    lab.ip(lab.router, "-4", "mrule", "add", "iif", "r1", "lookup", TABLE)
    original = tmp_path / "smcroute.conf"
    original.write_text(SMCROUTE_TABLE_100)
    with smcrouted(lab, original, tmp_path, "-t", TABLE):
        by_smcroute = send_and_count(lab, 4, 1)
    converted = subprocess.run(
        [str(BIN / "mfcctl"), "import-smcroute", "--table", TABLE, str(original)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (converted.returncode, converted.stderr) == (0, "")  # (no warning any more)
    with running(Mfcd(lab, tmp_path, config=converted.stdout)) as mfcd:
        mfcd.ok(*route_args(SOURCES[4][0], GROUPS[4], "r0", "r3"))  # the default table
        by_mfcd = send_and_count(lab, 4, 1)
        assert by_smcroute == by_mfcd == [5, 0]
        assert send_and_count(lab, 4, 0) == [0, 5]  # r3's threshold is table 100's only


@pytest.mark.parametrize("family", [4, 6])
def test_a_route_in_a_table_its_iifs_traffic_does_not_go_to_is_warned_of(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    """With `ip mrule iif r1 lookup 100`: a route in a table no rule sends anything to
    (`--table main` for IPv4, 253 for IPv6, which iproute2 names `default`) or in the
    default table on r1 is accepted and installed, but forwards nothing. mfc add, batch,
    reload (-n) and --check-config warn of it, naming where the traffic goes (trial 14
    F6); a route where the rules send its iif's traffic has no warning."""
    lab.ip(lab.router, f"-{family}", "mrule", "add", "iif", "r1", "lookup", TABLE)
    group = GROUPS[family]
    first, second = SOURCES[family]
    word = f"IPv{family}"
    nowhere = "main" if family == 4 else "253"
    number = 254 if family == 4 else 253
    default = 253 if family == 4 else 254
    to_nowhere = f"no multicast rule sends r0's traffic to {word} table {number}"
    to_default = (
        f"no multicast rule sends r1's traffic to {word}'s default table {default}: r1 goes"
        f" to table {TABLE}"
    )

    # Where the rules send the iif's traffic: no warning (table 100 exists from then on:
    # until it does, the kernel passes over the rule, and r1's traffic goes to the default).
    fine = mfcd.ctl("mfc", "add", "--table", TABLE, *route_args(second, group, "r1", "r3")[2:])
    assert fine.returncode == 0 and fine.stderr == ""
    fine = mfcd.ctl(*route_args(first, UNROUTED[family], "r0", "r2"))
    assert fine.returncode == 0 and fine.stderr == ""
    added = mfcd.ctl("mfc", "add", "--table", nowhere, *route_args(first, group, "r0", "r2")[2:])
    assert added.returncode == 0, added.stderr
    assert added.stderr.startswith(f"mfcctl: warning: {to_nowhere}")
    assert f"{word}'s default table is {default} (`default`)" in added.stderr
    added = mfcd.ctl(*route_args(second, group, "r1", "r2"))
    assert added.returncode == 0 and added.stderr.startswith(f"mfcctl: warning: {to_default}")
    assert {r["state"] for r in mfcd.show()["routes"]} == {"installed"}
    # (what the warnings say: r1's traffic goes to table 100 (r3), r0's to the default)
    assert send_and_count(lab, family, 1) == [0, 5]
    assert send_and_count(lab, family, 0) == [0, 0]

    # A batch: said once per table and iif; in its JSON too.
    lines = "".join(
        f"mfc add --source {second} --group {g} --iif r1 --oifs r2\n"
        for g in (("239.1.8.1", "239.1.8.2") if family == 4 else ("ff3e::8:1", "ff3e::8:2"))
    )
    batch = mfcd.ctl("-o", "json", "batch", "-", stdin=lines)
    assert batch.returncode == 0, batch.stderr
    [warning] = json.loads(batch.stdout)["warnings"]
    assert warning.startswith(to_default)

    # The config files: reload -n, reload and --check-config.
    settings = mfcd.config_file.read_text()
    mfcd.config_file.write_text(
        settings
        + f'\n[[route]]\nsource = "{first}"\ngroup = "{UNROUTED[family]}"\niif = "r0"\n'
        + f'oifs = ["r3"]\ntable = {number}\n'
    )
    line = settings.count("\n") + 2
    for dry in (["-n"], []):
        reloaded = mfcd.ctl("reload", *dry)
        assert reloaded.returncode == 0, reloaded.stderr
        assert reloaded.stderr.startswith(
            f"mfcctl: warning: {mfcd.config_file}:{line}: {to_nowhere}"
        )
    noted = lab.exec(
        lab.router, str(BIN / "mfcd"), "--check-config", "--config", str(mfcd.config_file)
    )
    assert noted.returncode == 0, noted.stderr
    assert f"note: on this machine, {mfcd.config_file}:{line}: {to_nowhere}" in noted.stderr


# Another privileged program rewrites one of mfcd's entries through a socket of its own
# (MRT_TABLE, no MRT_INIT): the kernel flags the entry MFC_STATIC (docs/kernel.md, E).
REWRITE = """
import socket, struct
family, table, parent, oif = {family}, {table}, {parent}, {oif}
source, group = {source!r}, {group!r}
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    level, ttls = socket.IPPROTO_IP, bytearray(32)
    ttls[oif] = 1
    arg = struct.pack("=4s4sH32s2xIIIi", socket.inet_aton(source), socket.inet_aton(group),
                      parent, bytes(ttls), 0, 0, 0, 0)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    level, bits = socket.IPPROTO_IPV6, [0] * 8
    bits[oif // 32] |= 1 << (oif % 32)
    def sin6(address):
        raw = socket.inet_pton(socket.AF_INET6, address)
        return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, raw, 0)
    arg = struct.pack("=28s28sH2x32s", sin6(source), sin6(group), parent, struct.pack("=8I", *bits))
s.setsockopt(level, 209, struct.pack("=I", table))  # MRT_TABLE
s.setsockopt(level, 204, arg)  # MRT_ADD_MFC
"""
DEFAULT = {4: 253, 6: 254}


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("family", [4, 6])
def test_an_entry_another_program_rewrote_is_mfcds_again_after_sync_and_goes_with_it(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    """sync deletes and adds the entry (a rewrite in place would keep it static), says what
    the kernel had, and after mfcd's stop nothing of it is left to forward."""
    group, source, name = GROUPS[family], SOURCES[family][0], f"ipv{family}"
    mfcd.ok(*route_args(source, group, "r0", "r2"))
    mfcd.ok(*route_args(source, UNROUTED[family], "r0", "r3"))  # so that r3 has a VIF
    vifs = {v["interface"]: v["vif"] for v in mfcd.show()["vifs"]}
    code = REWRITE.format(
        family=family,
        table=DEFAULT[family],
        source=source,
        group=group,
        parent=vifs["r0"],
        oif=vifs["r3"],
    )
    done = lab.exec(lab.router, sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert send_and_count(lab, family, 0) == [0, 5]  # to r3 now

    check = mfcd.ctl("-n", "sync")
    assert check.returncode == 8, check.stderr  # drift found
    assert (
        f"readd mfc {name} {source} -> {group} iif r0 oifs r2 (VIF {vifs['r0']} -> {vifs['r2']}):"
        " the kernel had iif r0 oifs r3; another program wrote it"
    ) in check.stdout, check.stdout
    assert "repaired" in mfcd.ok("sync")
    assert mfcd.ctl("-n", "sync").returncode == 0
    assert send_and_count(lab, family, 0) == [5, 0]

    mfcd.stop()
    assert group not in mroute_table(lab, family, "all")


@pytest.mark.lab(receivers=3)
def test_a_start_makes_a_static_entry_left_behind_mfcds_own(lab: Lab, mfcd: Mfcd) -> None:
    """An entry another program rewrote outlived the last mfcd (as before sync re-added
    such entries): the next start repairs it, so its stop removes it."""
    source, group = SOURCES[4][0], GROUPS[4]
    mfcd.ok(*route_args(source, group, "r0", "r2"))
    vifs = {v["interface"]: v["vif"] for v in mfcd.show()["vifs"]}
    code = REWRITE.format(
        family=4, table=253, source=source, group=group, parent=vifs["r0"], oif=vifs["r2"]
    )
    done = lab.exec(lab.router, sys.executable, "-c", code)  # the same oifs, static now
    assert done.returncode == 0, done.stderr
    mfcd.stop()
    assert group in mroute_table(lab, 4, "all")  # left behind
    mfcd.start()
    deadline = time.monotonic() + 10
    while (check := mfcd.ctl("-n", "sync")).returncode != 0:  # the start's repair is done
        assert check.returncode == 8 and time.monotonic() < deadline, check.stdout
        time.sleep(0.2)
    assert send_and_count(lab, 4, 0) == [5, 0]
    _, log = mfcd.stop()
    assert "held entries mfcd did not add; repairing them" in log
    assert "WARNING: full drift check: 1 repairs" in log
    assert group not in mroute_table(lab, 4, "all")
