"""Group joins against the real kernel: /proc, `ip maddr`, reports on the wire, scale, restarts."""

from __future__ import annotations

import itertools
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, running
from tests.netns.test_metrics import fetch

CAPTURE = str(Path(__file__).parents[2] / "lab" / "capture.py")
# IGMPv3 / MLDv2 group record types (RFC 3376 4.2.12, RFC 3810 5.2.12)
CHANGE_TO_EXCLUDE = 4
ALLOW_NEW_SOURCES = 5
# (ASM group, SSM group, SSM source) per family; the source is the receiver rx1's address.
GROUPS = {
    4: ("239.7.0.1", "239.7.0.2", "198.18.1.2"),
    6: ("ff3e::7:1", "ff3e::7:2", "2001:db8:1::2"),
}


def wait_for(check: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def read(lab: Lab, path: str) -> str:
    result = lab.exec(lab.router, "cat", path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def memberships(lab: Lab, ifname: str, family: int) -> set[str]:
    """The groups the kernel holds on ifname, from /proc/net/igmp or /proc/net/igmp6."""
    found: set[str] = set()
    if family == 4:
        inside = False
        for line in read(lab, "/proc/net/igmp").splitlines()[1:]:
            if not line.startswith("\t"):
                inside = line.split()[1] == ifname
            elif inside:
                found.add(socket.inet_ntoa(bytes.fromhex(line.split()[0])[::-1]))
        return found
    for line in read(lab, "/proc/net/igmp6").splitlines():
        fields = line.split()
        if fields[1] == ifname:
            found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[2])))
    return found


def source_filters(lab: Lab, ifname: str, family: int) -> set[tuple[str, str]]:
    """(group, source) pairs of /proc/net/mcfilter or /proc/net/mcfilter6 on ifname."""
    found: set[tuple[str, str]] = set()
    if family == 4:
        for line in read(lab, "/proc/net/mcfilter").splitlines()[1:]:
            _, dev, group, source, *_ = line.split()
            if dev == ifname:
                found.add((_ipv4(group), _ipv4(source)))
        return found
    for line in read(lab, "/proc/net/mcfilter6").splitlines()[1:]:
        _, dev, group, source, *_ = line.split()
        if dev == ifname:
            found.add(
                (
                    socket.inet_ntop(socket.AF_INET6, bytes.fromhex(group)),
                    socket.inet_ntop(socket.AF_INET6, bytes.fromhex(source)),
                )
            )
    return found


def _ipv4(hex_text: str) -> str:
    return socket.inet_ntoa(int(hex_text, 16).to_bytes(4, "big"))


def groups(mfcd: Mfcd) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = json.loads(mfcd.ok("show", "groups", "-o", "json"))["groups"]
    return shown


@contextmanager
def capture(lab: Lab, ns: str, ifname: str, seconds: float) -> Iterator[list[dict[str, Any]]]:
    """IGMP/MLD messages arriving on ns/ifname during the block (and up to `seconds`)."""
    proc = lab.spawn(ns, sys.executable, CAPTURE, ifname, str(seconds))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    seen: list[dict[str, Any]] = []
    try:
        yield seen
    finally:
        try:
            out, _ = proc.communicate(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc in lab.processes:
            lab.processes.remove(proc)
        seen += [json.loads(line) for line in out.splitlines() if line.strip()]


def records(messages: list[dict[str, Any]]) -> list[list[Any]]:
    return [record for m in messages for record in m.get("records", [])]


@pytest.mark.parametrize("family", [4, 6])
def test_asm_and_ssm_joins_show_in_the_kernel_and_on_the_wire(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    asm, ssm, source = GROUPS[family]
    with capture(lab, lab.rx[0], "x0", 3.5) as seen:
        mfcd.ok("join", "--interface", "r1", "--group", asm)
        mfcd.ok("join", "--interface", "r1", "--group", ssm, "--source", source)
    assert {asm, ssm} <= memberships(lab, "r1", family)
    assert source_filters(lab, "r1", family) == {(ssm, source)}
    maddr = lab.ip(lab.router, f"-{family}", "maddr", "show", "dev", "r1").split()
    assert (
        maddr[maddr.index(asm) - 1] == maddr[maddr.index(ssm) - 1] == f"inet{'6' * (family == 6)}"
    )
    # The reports the peer saw: an IGMPv3 (MLDv2) report for each join.
    reports = [m for m in seen if m["type"] == (0x22 if family == 4 else 143)]
    assert reports, seen
    assert [CHANGE_TO_EXCLUDE, asm, []] in records(reports)
    assert [ALLOW_NEW_SOURCES, ssm, [source]] in records(reports)
    shown = {(g["group"], g["source"]): g for g in groups(mfcd)}
    assert shown[(asm, "*")]["state"] == "joined"
    assert shown[(ssm, source)]["origin"] == "api"
    # Leaving takes the membership away (and joining again is idempotent before that).
    mfcd.ok("join", "--interface", "r1", "--group", asm)
    mfcd.ok("leave", "--interface", "r1", "--group", asm)
    assert asm not in memberships(lab, "r1", family)
    mfcd.ok("leave", "--interface", "r1", "--group", ssm, "--source", source)
    assert source_filters(lab, "r1", family) == set()
    assert groups(mfcd) == []


def test_a_group_for_any_source_and_for_one_source_on_one_interface(lab: Lab, mfcd: Mfcd) -> None:
    """Both at once, in either order, each left on its own (sockets never mix the two)."""
    source = "198.18.3.2"
    mfcd.ok("join", "--interface", "r3", "--group", "239.14.0.1", "--source", source)
    mfcd.ok("join", "--interface", "r3", "--group", "239.14.0.1")
    mfcd.ok("join", "--interface", "r3", "--group", "239.14.0.2")
    mfcd.ok("join", "--interface", "r3", "--group", "239.14.0.2", "--source", source)
    assert {g["state"] for g in groups(mfcd)} == {"joined"}
    mfcd.ok("leave", "--interface", "r3", "--group", "239.14.0.1", "--source", source)
    mfcd.ok("leave", "--interface", "r3", "--group", "239.14.0.2")
    assert {"239.14.0.1", "239.14.0.2"} <= memberships(lab, "r3", 4)
    assert source_filters(lab, "r3", 4) == {("239.14.0.2", source)}
    mfcd.ok("leave", "--interface", "r3", "--group", "239.14.0.1")
    assert "239.14.0.1" not in memberships(lab, "r3", 4)
    assert source_filters(lab, "r3", 4) == {("239.14.0.2", source)}


def test_leaving_what_was_never_joined_is_not_found(mfcd: Mfcd) -> None:
    result = mfcd.ctl("leave", "--interface", "r1", "--group", "239.7.0.9", "-o", "json")
    assert result.returncode == 5
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    assert "group 239.7.0.9 on r1 was not joined" in result.stderr


def test_leaving_a_prefix_after_one_of_its_groups_leaves_the_rest(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok("join", "--interface", "r1", "--group", "239.7.1.0/30")
    mfcd.ok("leave", "--interface", "r1", "--group", "239.7.1.1")
    out = mfcd.ok("leave", "--interface", "r1", "--group", "239.7.1.0/30")
    assert out.strip() == "left 3 joins; 1 was not joined (left before): 239.7.1.1 on r1"
    assert not {g for g in memberships(lab, "r1", 4) if g.startswith("239.7.1.")}
    assert groups(mfcd) == []
    again = mfcd.ctl("leave", "--interface", "r1", "--group", "239.7.1.0/30")
    assert again.returncode == 5, again.stderr
    assert "group 239.7.1.0/30 on r1 was not joined" in again.stderr


def test_leaving_an_ssm_join_without_its_source_says_how(lab: Lab, mfcd: Mfcd) -> None:
    source = "198.18.0.2"
    mfcd.ok("join", "--interface", "r2", "--group", "239.7.2.1", "--source", source)
    result = mfcd.ctl("leave", "--interface", "r2", "--group", "239.7.2.1", "-o", "json")
    assert result.returncode == 5
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    assert f"joined for source {source} only (SSM): leave it with --source {source}" in (
        result.stderr
    )
    assert source_filters(lab, "r2", 4) == {("239.7.2.1", source)}  # still joined
    mfcd.ok("leave", "--interface", "r2", "--group", "239.7.2.1", "--source", source)
    assert source_filters(lab, "r2", 4) == set()


def test_a_thousand_joins_on_one_interface(lab: Lab, mfcd: Mfcd) -> None:
    """1,024 IPv4 joins need 52 sockets at the default 20 per socket; no sysctl changes."""
    mfcd.ok("join", "--interface", "r1", "--group", "239.20.0.0/22")
    mfcd.ok("join", "--interface", "r1", "--group", "ff3e::20:0/118")
    v4 = {g for g in memberships(lab, "r1", 4) if g.startswith("239.20.")}
    v6 = {g for g in memberships(lab, "r1", 6) if g.startswith("ff3e::20:")}
    assert len(v4) == 1024 and "239.20.3.255" in v4
    assert len(v6) == 1024 and "ff3e::20:3ff" in v6
    assert read(lab, "/proc/sys/net/ipv4/igmp_max_memberships").strip() == "20"
    shown = groups(mfcd)
    assert len(shown) == 2048 and {g["state"] for g in shown} == {"joined"}
    # Leaving them all frees every socket's memberships.
    mfcd.ok("leave", "--interface", "r1", "--group", "239.20.0.0/22")
    assert not {g for g in memberships(lab, "r1", 4) if g.startswith("239.20.")}


def test_a_range_expands_and_one_past_the_cap_is_refused(lab: Lab, mfcd: Mfcd) -> None:
    out = mfcd.ok("join", "--interface", "r1", "--group", "239.8.0.0/30", "-o", "json")
    assert json.loads(out)["joins"] == 4
    assert {"239.8.0.0", "239.8.0.3"} <= memberships(lab, "r1", 4)
    # SSM: every group for every source.
    mfcd.ok("join", "--interface", "r2", "--group", "239.8.1.0/31", "--source", "198.18.2.0/31")
    assert len(source_filters(lab, "r2", 4)) == 4
    refused = mfcd.ctl("join", "--interface", "r1", "--group", "239.9.0.0/21")
    assert refused.returncode == 1
    assert "239.9.0.0/21 holds 2048 addresses" in refused.stderr
    assert "at most 1024" in refused.stderr
    product = mfcd.ctl(
        "join", "--interface", "r1", "--group", "239.9.0.0/22", "--source", "198.18.9.0/31"
    )
    assert product.returncode == 1 and "2048 joins" in product.stderr
    assert not {g for g in memberships(lab, "r1", 4) if g.startswith("239.9.")}
    assert len(groups(mfcd)) == 8


def test_joins_in_a_batch_file(lab: Lab, mfcd: Mfcd, tmp_path: Path) -> None:
    batch = tmp_path / "joins.batch"
    batch.write_text(
        "join --interface r1 --group 239.10.0.0/29\n"
        "mfc add --source 198.18.0.2 --group 239.10.0.1 --iif r0 --oifs r1\n"
        "join --interface r2 --group ff3e::10:1 --source 2001:db8::2\n"
        "leave --interface r1 --group 239.10.0.7\n"
    )
    dry = mfcd.ok("batch", str(batch), "--dry-run")
    assert "join ipv4 group 239.10.0.0 on r1" in dry
    assert groups(mfcd) == []
    out = mfcd.ok("batch", str(batch))
    assert "9 joined, 1 left" in out
    assert {f"239.10.0.{k}" for k in range(7)} <= memberships(lab, "r1", 4)
    assert "239.10.0.7" not in memberships(lab, "r1", 4)
    assert source_filters(lab, "r2", 6) == {("ff3e::10:1", "2001:db8::2")}
    # A bad line changes nothing at all.
    batch.write_text(
        "join --interface r3 --group 239.11.0.1\nleave --interface r3 --group 239.11.0.2\n"
    )
    failed = mfcd.ctl("batch", str(batch))
    assert failed.returncode == 5 and ":2:" in failed.stderr
    assert "239.11.0.1" not in memberships(lab, "r3", 4)


def test_joins_survive_restarts_and_an_interface_recreated(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.ok("join", "--interface", "r1", "--group", "239.12.0.1")
    mfcd.ok("join", "--interface", "r1", "--group", "ff3e::12:1", "--source", "2001:db8:1::2")
    pending = mfcd.ok("join", "--interface", "r9", "--group", "239.12.0.9")
    assert "1 of 1 joins pending: waiting for r9" in pending
    assert mfcd.proc is not None
    mfcd.proc.send_signal(signal.SIGUSR1)  # the status line counts the joins
    time.sleep(0.3)
    mfcd.stop()
    assert "0 pending; 2 of 3 groups joined" in mfcd.log
    mfcd.start()
    assert "239.12.0.1" in memberships(lab, "r1", 4)
    assert source_filters(lab, "r1", 6) == {("ff3e::12:1", "2001:db8:1::2")}
    # kill -9: the kernel drops the memberships by itself; the next start joins again.
    mfcd.stop(signal.SIGKILL)
    wait_for(lambda: "239.12.0.1" not in memberships(lab, "r1", 4), what="memberships gone")
    mfcd.start()
    assert "239.12.0.1" in memberships(lab, "r1", 4)
    # The interface deleted: pending; re-created (a new ifindex): joined again by itself.
    lab.del_router_link("r1")
    wait_for(lambda: {g["state"] for g in groups(mfcd) if g["interface"] == "r1"} == {"pending"})
    assert {g.get("reason") for g in groups(mfcd)} == {"waiting for r1", "waiting for r9"}
    lab.add_receiver_link(1)
    wait_for(lambda: "239.12.0.1" in memberships(lab, "r1", 4), what="re-joined on r1")
    wait_for(lambda: ("ff3e::12:1", "2001:db8:1::2") in source_filters(lab, "r1", 6))
    assert {g["state"] for g in groups(mfcd) if g["interface"] == "r1"} == {"joined"}


def test_joins_the_kernel_refused_are_joined_by_mfcd_once_it_takes_them(
    lab: Lab, mfcd: Mfcd
) -> None:
    """A join the kernel refuses at start (here its limit of memberships per socket is 0,
    as when a limit is reached) stays pending with the reason; mfcd's periodic check tries
    it again by itself and joins it once the limit is raised, with no command."""
    mfcd.ok("join", "--interface", "r1", "--group", "239.12.0.5")
    mfcd.ok("join", "--interface", "r1", "--group", "239.12.0.6", "--source", "198.18.1.2")
    mfcd.stop()
    limit = "net.ipv4.igmp_max_memberships"
    before = lab.exec(lab.router, "sysctl", "-n", limit).stdout.strip()
    try:
        assert lab.exec(lab.router, "sysctl", "-qw", f"{limit}=0").returncode == 0
        mfcd.start()
        for join in groups(mfcd):
            assert join["state"] == "pending", join
            assert "the kernel refused it" in join["reason"], join
            assert "mfcd tries it again by itself" in join["reason"], join
        assert not {"239.12.0.5", "239.12.0.6"} & memberships(lab, "r1", 4)
    finally:  # (the lab's own namespace: raised again whatever happened)
        lab.exec(lab.router, "sysctl", "-qw", f"{limit}={before}")
    wait_for(lambda: {"239.12.0.5", "239.12.0.6"} <= memberships(lab, "r1", 4), timeout=15)
    assert ("239.12.0.6", "198.18.1.2") in source_filters(lab, "r1", 4)
    assert {join["state"] for join in groups(mfcd)} == {"joined"}
    _, log = mfcd.stop()
    assert "joined 2 groups the kernel had refused before" in log, log[-3000:]


def test_ssm_joins_keep_their_source_across_link_down_and_up(lab: Lab, mfcd: Mfcd) -> None:
    """Linux empties a group's source list on link down and leaves it empty on up."""
    mfcd.ok("join", "--interface", "r2", "--group", "239.13.0.1", "--source", "198.18.2.2")
    mfcd.ok("join", "--interface", "r2", "--group", "ff3e::13:1", "--source", "2001:db8:2::2")
    lab.ip(lab.router, "link", "set", "r2", "down")
    wait_for(lambda: not source_filters(lab, "r2", 4), what="the kernel dropping the sources")
    lab.ip(lab.router, "link", "set", "r2", "up")
    v4, v6 = ("239.13.0.1", "198.18.2.2"), ("ff3e::13:1", "2001:db8:2::2")
    wait_for(lambda: source_filters(lab, "r2", 4) == {v4}, what="the IPv4 source again")
    wait_for(lambda: source_filters(lab, "r2", 6) == {v6}, what="the IPv6 source again")


def test_ssm_joins_get_their_source_back_after_ipv6_is_disabled_and_enabled(
    lab: Lab, mfcd: Mfcd
) -> None:
    """Disabling and enabling IPv6 on an interface empties its IPv6 source lists with no
    link event at all: mfcd's periodic check (daemon.JOIN_CHECK_INTERVAL) finds the source
    missing from /proc/net/mcfilter6, joins the group again, and says so once; the IPv4 join
    is left as it is. A join on an interface that is down is left alone (its sources come
    back with the link)."""
    v4, v6 = ("239.13.0.3", "198.18.2.2"), ("ff3e::13:3", "2001:db8:2::2")
    mfcd.ok("join", "--interface", "r2", "--group", v4[0], "--source", v4[1])
    mfcd.ok("join", "--interface", "r2", "--group", v6[0], "--source", v6[1])
    wait_for(lambda: source_filters(lab, "r2", 6) == {v6}, what="the IPv6 source")
    for value in ("1", "0"):
        done = lab.exec(lab.router, "sysctl", "-qw", f"net.ipv6.conf.r2.disable_ipv6={value}")
        assert done.returncode == 0, done.stderr
    assert source_filters(lab, "r2", 6) == set()  # (the kernel's doing: nothing to see here)
    wait_for(lambda: source_filters(lab, "r2", 6) == {v6}, timeout=15, what="the source again")
    assert source_filters(lab, "r2", 4) == {v4}
    # Down: the kernel empties both lists, and the check leaves them to the link's return.
    lab.ip(lab.rx[1], "link", "set", "x0", "down")  # (r2 loses its carrier)
    lab.ip(lab.router, "link", "set", "r2", "down")
    wait_for(lambda: not source_filters(lab, "r2", 4), what="the kernel dropping the sources")
    time.sleep(6)  # (a check or more: a join made while down would list its source now)
    assert source_filters(lab, "r2", 4) == set() and source_filters(lab, "r2", 6) == set()
    lab.ip(lab.router, "link", "set", "r2", "up")
    lab.ip(lab.rx[1], "link", "set", "x0", "up")
    wait_for(lambda: source_filters(lab, "r2", 4) == {v4}, what="the IPv4 source again")
    wait_for(lambda: source_filters(lab, "r2", 6) == {v6}, what="the IPv6 source again")
    _, log = mfcd.stop()
    assert "the kernel had lost the source of 1 SSM joins" in log, log[-3000:]
    assert f"source {v6[1]} group {v6[0]} on r2" in log


def test_the_join_check_leaves_joins_the_kernel_holds_alone(lab: Lab, tmp_path: Path) -> None:
    """With IPv6 routing off (`ipv6 = false`) the config's IPv6 SSM joins are still made,
    and the periodic check reads mcfilter6 all the same: over two checks, the joins whose sources
    the kernel holds (one written IPv4-mapped, which /proc spells otherwise) are never
    joined again."""
    config = "ipv6 = false\n" + "".join(
        f'[[join]]\ninterface = "r2"\ngroup = "{group}"\nsource = "{source}"\n'
        for group, source in (
            ("ff3e::13:5", "2001:db8:2::2"),
            ("ff3e::13:6", "::ffff:198.18.2.2"),
            ("239.13.0.5", "198.18.2.2"),
        )
    )
    with daemon(lab, tmp_path, config) as mfcd:
        assert len(source_filters(lab, "r2", 6)) == 2 and len(source_filters(lab, "r2", 4)) == 1
        time.sleep(11)
        assert mfcd.proc is not None
        _, log = mfcd.stop()
    assert "lost the source" not in log and "SSM joins checked" not in log, log[-3000:]


# --- multicast router discovery (RFC 4286) --------------------------------------------------------

SOLICIT = """
import socket, struct
from mfcd import mrdisc
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
mreqn = struct.pack("=4s4si", bytes(4), bytes(4), socket.if_nametoindex("x0"))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
s.sendto(mrdisc.message(mrdisc.SOLICITATION), (mrdisc.ALL_ROUTERS, 0))
"""


def mrd(messages: list[dict[str, Any]], kind: int) -> list[dict[str, Any]]:
    return [m for m in messages if m["family"] == 4 and m["type"] == kind]


def daemon(lab: Lab, workdir: Path, config: str) -> AbstractContextManager[Mfcd]:
    return running(Mfcd(lab, workdir, config))


def test_router_advertisements_go_out_at_the_configured_interval(lab: Lab, tmp_path: Path) -> None:
    config = "mrdisc_interval = 4\n"
    with daemon(lab, tmp_path, config) as mfcd, capture(lab, lab.rx[0], "x0", 13.0) as seen:
        mfcd.ok("vif", "set", "r1", "--mrdisc")
    adverts = mrd(seen, 0x30)
    for m in adverts:
        assert (m["dst"], m["ttl"], m["router_alert"], m["code"]) == ("224.0.0.106", 1, True, 4)
        packet = bytes.fromhex(m["bytes"])
        assert len(packet) == 8 and packet[4:] == bytes(4)  # query interval, robustness: 0
        total = sum(struct.unpack("!4H", packet))
        assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # a valid checksum
    times = [m["t"] for m in adverts]
    # Three at first within 2 s of each other, then one every 4 s (less up to 2.5%).
    assert len(times) >= 5, times
    assert all(0 <= b - a <= 2.2 for a, b in itertools.pairwise(times[:3])), times
    gaps = [b - a for a, b in itertools.pairwise(times[2:])]
    assert gaps and all(3.8 <= gap <= 4.4 for gap in gaps), times


def test_solicitations_are_answered_and_mrdisc_persists(lab: Lab, tmp_path: Path) -> None:
    with daemon(lab, tmp_path, "mrdisc_interval = 180\n") as mfcd:
        mfcd.ok("vif", "set", "r1", "--mrdisc")
        mfcd.stop()
        mfcd.start()
        assert json.loads(mfcd.ok("show", "groups", "-o", "json"))["mrdisc"] == ["r1"]
        time.sleep(4.5)  # the initial advertisements are over; the next regular one is minutes away
        with capture(lab, lab.rx[0], "x0", 2.0) as seen:
            sent = lab.exec(lab.rx[0], sys.executable, "-c", SOLICIT)
            assert sent.returncode == 0, sent.stderr
        assert len(mrd(seen, 0x30)) == 1, seen
        with capture(lab, lab.rx[0], "x0", 1.5) as seen:
            mfcd.ok("vif", "set", "r1", "--no-mrdisc")
        assert len(mrd(seen, 0x32)) == 1, seen
        assert json.loads(mfcd.ok("show", "groups", "-o", "json"))["mrdisc"] == []


def test_metrics_count_the_joins(lab: Lab, tmp_path: Path) -> None:
    listen = "127.0.0.1:10044"
    with daemon(lab, tmp_path, f'metrics_listen = "{listen}"\n') as mfcd:
        mfcd.ok("join", "--interface", "r1", "--group", "239.15.0.0/31")
        mfcd.ok("join", "--interface", "r9", "--group", "239.15.0.9")
        body = fetch(lab, f"http://{listen}/metrics")["body"]
    assert 'mfcd_joins{origin="api"} 3\n' in body
    assert 'mfcd_joins{origin="config"} 0\n' in body


def test_the_start_up_log_counts_the_saved_joins_then_all(lab: Lab, tmp_path: Path) -> None:
    """The first joins line at start counts only the saved joins (made with mfcctl, kept in
    the state file); once the config files' are made too, one line gives the totals the
    status line shows, by origin."""
    config = "".join(
        f'\n[[join]]\ninterface = "{name}"\ngroup = "239.16.0.{k}"\n'
        for k, name in enumerate(("r2", "r9"), 1)
    )
    with daemon(lab, tmp_path, config) as mfcd:
        mfcd.ok("join", "--interface", "r1", "--group", "239.16.1.1")
        mfcd.ok("join", "--interface", "r9", "--group", "239.16.1.9")
        mfcd.stop()
        first = mfcd.log
        mfcd.start()
    assert "saved joins" not in first  # none saved yet
    assert "joins: 1 of 2 joined (config files: 1 of 2)" in first
    lines = mfcd.log[len(first) :].splitlines()

    def where(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    saved = where("saved joins: 1 of 2 joined")
    totals = where("joins: 2 of 4 joined (saved: 1 of 2, config files: 1 of 2)")
    ready = where("; 2 of 4 groups joined")
    assert saved < totals < ready, lines
