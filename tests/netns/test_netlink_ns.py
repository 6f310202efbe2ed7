"""Root-only checks of mfcd.netlink against the real kernel, inside private network namespaces.

Python 3.11 has no os.setns, so every check runs as a child `ip netns exec NS python3 -c ...`
that imports mfcd.netlink from src/ and prints JSON; the namespaces are always deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Holds MRT_INIT sockets (one per table) with VIFs and MFC entries, prints "ready", sleeps.
# argv[1] is JSON: {"family": 4|6, "vifs": [names], "tables": [[table or 0, [route...]]]}
# with route = [source, group, parent vif, {oif vif: ttl}], and optionally "bulk": N for N
# more entries (from "bulk_source", parent 0, oif 1) in the first table.
MROUTER = textwrap.dedent(
    """
    import ipaddress, json, socket, struct, sys, time
    cfg = json.loads(sys.argv[1])
    v6 = cfg["family"] == 6
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    MRT_INIT, MRT_ADD_VIF, MRT_ADD_MFC, MRT_TABLE, VIFF_USE_IFINDEX = 200, 202, 204, 209, 8

    def sockaddr_in6(addr):
        packed = socket.inet_pton(socket.AF_INET6, addr)
        return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, packed, 0)

    def mfc4(src, grp, parent, oifs):
        ttls = bytearray(32)
        for vif, ttl in oifs.items():
            ttls[int(vif)] = ttl
        origin, group = socket.inet_aton(src), socket.inet_aton(grp)
        return struct.pack("=4s4sH32s2xIIIi", origin, group, parent, bytes(ttls), 0, 0, 0, 0)

    def mfc6(src, grp, parent, oifs):
        if_set = [0] * 8
        for vif in oifs:
            if_set[int(vif) // 32] |= 1 << (int(vif) % 32)
        bitmap = struct.pack("=8I", *if_set)
        return struct.pack("=28s28sH2x32s", sockaddr_in6(src), sockaddr_in6(grp), parent, bitmap)

    socks = []
    for table, routes in cfg["tables"]:
        if v6:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        socks.append(s)
        if table:
            s.setsockopt(level, MRT_TABLE, struct.pack("=I", table))
        s.setsockopt(level, MRT_INIT, struct.pack("i", 1))
        for vifi, name in enumerate(cfg["vifs"]):
            ifindex = socket.if_nametoindex(name)
            if v6:
                vif = struct.pack("=HBBH2xI", vifi, 0, 1, ifindex, 0)
            else:
                vif = struct.pack("=HBBIi4s", vifi, VIFF_USE_IFINDEX, 1, 0, ifindex, bytes(4))
            s.setsockopt(level, MRT_ADD_VIF, vif)
        for route in routes:
            s.setsockopt(level, MRT_ADD_MFC, (mfc6 if v6 else mfc4)(*route))
    first_group = ipaddress.ip_address("ff3e::1:0:0" if v6 else "239.100.0.0")
    for i in range(cfg.get("bulk", 0)):
        route = (cfg["bulk_source"], str(first_group + i), 0, {1: 1})
        socks[0].setsockopt(level, MRT_ADD_MFC, (mfc6 if v6 else mfc4)(*route))
    print("ready", flush=True)
    time.sleep(3600)
    """
)

# Sends argv[3] datagrams of 10 bytes to group argv[2] from argv[1] with TTL/hop limit 2
# out of interface argv[4].
SENDER = textwrap.dedent(
    """
    import socket, struct, sys
    src, grp, count, dev = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    v6 = ":" in src
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    ifindex = socket.if_nametoindex(dev)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 2)
    else:
        mreqn = struct.pack("=4s4si", bytes(4), bytes(4), ifindex)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    for _ in range(count):
        s.sendto(b"0123456789", (grp, 5000))
    """
)

# Child scripts start with this and end by printing `out` as JSON.
PRELUDE = "import dataclasses, json, select, subprocess, time\nfrom mfcd import netlink\n"
EPILOGUE = "\nprint(json.dumps(out, default=dataclasses.asdict))\n"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def exec_in(ns: str, *argv: str, timeout: float = 30) -> str:
    env = {**os.environ, "PYTHONPATH": SRC}
    cmd = ["ip", "netns", "exec", ns, *argv]
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_py(ns: str, code: str) -> Any:
    """Run PRELUDE + code in `ns` and return the JSON value of its `out`."""
    script = PRELUDE + textwrap.dedent(code) + EPILOGUE
    return json.loads(exec_in(ns, sys.executable, "-c", script))


@pytest.fixture
def make_netns() -> Iterator[Callable[[], str]]:
    """Factory for fresh namespaces named mfcdtest-nl-<random>, all deleted at teardown."""
    created: list[str] = []

    def make() -> str:
        name = f"mfcdtest-nl-{secrets.token_hex(4)}"
        ip("netns", "add", name)
        created.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture
def spawn() -> Iterator[Callable[[list[str]], None]]:
    """Start long-running helpers that print "ready"; all are killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": SRC}
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if readable else ""
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"helper did not get ready: {err}")

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_dump_links_matches_ip(netns: str) -> None:
    ip("-n", netns, "link", "add", "nlv0", "type", "veth", "peer", "name", "nlv1")
    ip("-n", netns, "link", "set", "nlv0", "up")
    expected = {
        (link["ifindex"], link["ifname"], "UP" in link["flags"])
        for link in json.loads(ip("-n", netns, "-j", "link", "show"))
    }
    links = run_py(netns, "out = netlink.dump_links()")
    assert {(link["ifindex"], link["name"], link["up"]) for link in links} == expected
    assert {"lo", "nlv0", "nlv1"} <= {link["name"] for link in links}


# Opens a monitor, runs `commands` (shell lines) and collects events until quiet for 0.5 s.
MONITOR = """
with netlink.LinkMonitor() as monitor:
    subprocess.run(COMMANDS, shell=True, check=True)
    events = []
    while select.select([monitor], [], [], 0.5)[0]:
        events += monitor.read_events()
    out = {"events": events, "overrun": monitor.overrun}
"""


def monitor(ns: str, *commands: str) -> dict[str, Any]:
    result: dict[str, Any] = run_py(ns, f"COMMANDS = {'; '.join(commands)!r}\n{MONITOR}")
    return result


def test_link_monitor_sees_veth_created_and_deleted(netns: str) -> None:
    created = monitor(netns, "ip link add nlm0 type veth peer name nlm1", "ip link set nlm0 up")
    indexes = {
        link["name"]: link["ifindex"] for link in run_py(netns, "out = netlink.dump_links()")
    }
    deleted = monitor(netns, "ip link del nlm0")

    assert not created["overrun"]
    seen = {(e["kind"], e["link"]["name"], e["link"]["ifindex"]) for e in created["events"]}
    assert ("new", "nlm0", indexes["nlm0"]) in seen
    assert ("new", "nlm1", indexes["nlm1"]) in seen
    assert created["events"][-1]["link"] == {"ifindex": indexes["nlm0"], "name": "nlm0", "up": True}
    # Deleting one end of a veth removes both.
    gone = {
        (e["link"]["name"], e["link"]["ifindex"]) for e in deleted["events"] if e["kind"] == "del"
    }
    assert gone == {("nlm0", indexes["nlm0"]), ("nlm1", indexes["nlm1"])}


def test_link_monitor_ignores_bridge_port_release(netns: str) -> None:
    # The bridge reports a port leaving it as RTM_DELLINK with ifi_family AF_BRIDGE; that must
    # not look like the interface going away.
    ip("-n", netns, "link", "add", "nlbr0", "type", "bridge")
    ip("-n", netns, "link", "add", "nlp0", "type", "veth", "peer", "name", "nlp1")
    result = monitor(netns, "ip link set nlp0 master nlbr0", "ip link set nlp0 nomaster")
    assert result["events"], "expected RTM_NEWLINK events for the port"
    assert [e for e in result["events"] if e["kind"] == "del"] == []


def test_link_monitor_overrun_is_reported_then_cleared(netns: str) -> None:
    # A 32 KiB receive queue (the kernel doubles 16 KiB) holds the two events of one veth
    # pair, but not those of 20 pairs created without reading: that forces ENOBUFS.
    out = run_py(
        netns,
        """
        with netlink.LinkMonitor(rcvbuf=16384) as monitor:
            for i in range(20):
                subprocess.run(["ip", "link", "add", f"nlo{i}", "type", "veth"], check=True)
            first = monitor.read_events()
            first_overrun = monitor.overrun
            subprocess.run(["ip", "link", "add", "nlo-last", "type", "veth"], check=True)
            select.select([monitor], [], [], 2)
            second = monitor.read_events()
            out = {"first_overrun": first_overrun, "second_overrun": monitor.overrun,
                   "second": [e.link.name for e in second], "links": len(netlink.dump_links())}
        """,
    )
    assert out["first_overrun"] is True
    assert out["second_overrun"] is False
    assert "nlo-last" in out["second"]
    assert out["links"] == 1 + 2 * 21  # lo and both ends of every pair


FAMILIES = {
    # family: (router r0 address, sender address, prefix, default table, groups, hops of oif 2)
    4: ("198.18.1.1", "198.18.1.2", 24, 253, ("239.1.2.3", "239.1.2.4", "239.1.2.5"), 3),
    # IPv6 MFC entries take their oifs as a bitmap, so every threshold reads back as 1.
    6: (
        "2001:db8:1::1",
        "2001:db8:1::2",
        64,
        254,
        ("ff3e::1:2:3", "ff3e::1:2:4", "ff3e::1:2:5"),
        1,
    ),
}
OTHER_TABLE = 100
IP_UDP_HEADERS = {4: 20 + 8, 6: 40 + 8}


@pytest.mark.parametrize("family", [4, 6])
def test_dump_mfc(
    family: int, make_netns: Callable[[], str], spawn: Callable[[list[str]], None]
) -> None:
    router_addr, source, prefix, default_table, groups, hops2 = FAMILIES[family]
    router, sender = make_netns(), make_netns()
    ip("-n", router, "link", "add", "r0", "type", "veth", "peer", "name", "s0", "netns", sender)
    # The oif peers live outside the router: IPv6 would count forwarded packets that loop
    # back in through a non-MIF interface again on the MFC (as packets and as wrong_if).
    ip("-n", router, "link", "add", "r1", "type", "veth", "peer", "name", "x1", "netns", sender)
    ip("-n", router, "link", "add", "r2", "type", "veth", "peer", "name", "x2", "netns", sender)
    for name in ("r0", "r1", "r2"):
        ip("-n", router, "link", "set", name, "up")
    for name in ("s0", "x1", "x2"):
        ip("-n", sender, "link", "set", name, "up")
    ip("-n", router, "addr", "add", f"{router_addr}/{prefix}", "dev", "r0", "nodad")
    ip("-n", sender, "addr", "add", f"{source}/{prefix}", "dev", "s0", "nodad")
    unresolved_source = "198.18.2.2" if family == 4 else "2001:db8:2::2"
    config = {
        "family": family,
        "vifs": ["r0", "r1", "r2"],
        "tables": [
            # parent 7 is no VIF, so that entry has no iif.
            [0, [[source, groups[0], 0, {1: 1, 2: 3}], [unresolved_source, groups[1], 7, {1: 1}]]],
            [OTHER_TABLE, [[source, groups[2], 0, {1: 1}]]],
        ],
    }
    spawn(["ip", "netns", "exec", router, sys.executable, "-c", MROUTER, json.dumps(config)])
    exec_in(sender, sys.executable, "-c", SENDER, source, groups[0], "3", "s0")

    out = run_py(
        router,
        f"""
        family, tables = {family}, [None, {default_table}, {OTHER_TABLE}, {OTHER_TABLE + 1}]
        deadline = time.monotonic() + 5
        # Forwarding runs in softirq after sendto() returned; wait for the counters.
        while time.monotonic() < deadline:
            entries = [e for e in netlink.dump_mfc(family) if e.packets >= 3]
            if entries:
                break
            time.sleep(0.05)
        out = {{
            "by_table": [netlink.dump_mfc(family, table) for table in tables],
            "other_family": netlink.dump_mfc(10 - family),
            "ifindex": {{link.name: link.ifindex for link in netlink.dump_links()}},
        }}
        """,
    )
    ifindex = out["ifindex"]
    everything, default, other, missing = out["by_table"]
    assert out["other_family"] == []
    assert missing == []
    assert sorted(everything, key=lambda e: e["group"]) == sorted(
        default + other, key=lambda e: e["group"]
    )

    forwarded, unresolved = sorted(default, key=lambda e: e["group"])
    assert forwarded["family"] == family
    assert forwarded["table"] == default_table
    assert (forwarded["source"], forwarded["group"]) == (source, groups[0])
    assert forwarded["iif"] == ifindex["r0"]
    assert forwarded["oifs"] == {str(ifindex["r1"]): 1, str(ifindex["r2"]): hops2}
    assert forwarded["packets"] == 3
    assert forwarded["bytes"] == 3 * (IP_UDP_HEADERS[family] + 10)
    assert forwarded["wrong_if"] == 0

    assert (unresolved["source"], unresolved["group"]) == (unresolved_source, groups[1])
    assert unresolved["iif"] is None
    assert unresolved["oifs"] == {str(ifindex["r1"]): 1}
    assert unresolved["packets"] == 0

    [in_other] = other
    assert (in_other["table"], in_other["group"], in_other["iif"]) == (
        OTHER_TABLE,
        groups[2],
        ifindex["r0"],
    )


@pytest.mark.parametrize("family", [4, 6])
def test_dump_mfc_of_100k_entries(
    family: int, netns: str, spawn: Callable[[list[str]], None]
) -> None:
    # Far more than one receive buffer: the multi-part dump must be read to NLMSG_DONE.
    ip("-n", netns, "link", "add", "r0", "type", "veth", "peer", "name", "r1")
    config = {
        "family": family,
        "vifs": ["r0", "r1"],
        "tables": [[0, []]],
        "bulk": 100_000,
        "bulk_source": FAMILIES[family][1],
    }
    spawn(["ip", "netns", "exec", netns, sys.executable, "-c", MROUTER, json.dumps(config)])
    out = run_py(
        netns,
        f"""
        entries = netlink.dump_mfc({family})
        out = [len(entries), len({{e.group for e in entries}}), len({{e.iif for e in entries}})]
        """,
    )
    assert out == [100_000, 100_000, 1]
