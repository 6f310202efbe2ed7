"""Issue 14: joins on a link with no address at all, on a down link, an SSM join's source
list across link down and up, and ASM and SSM joins of one group on one socket."""

from __future__ import annotations

import socket
import time

from kxlab import (
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    Lab,
    capture_socket,
    group_req,
    group_source_req,
    reports,
    say,
    try_call,
)

MCAST_LEAVE_SOURCE_GROUP = 47


def sources(lab: Lab, ns: str, v6: bool) -> list[str]:
    """The (group, source) lines of /proc/net/mcfilter[6] for j0."""
    text = lab.read(ns, "/proc/net/mcfilter6" if v6 else "/proc/net/mcfilter")
    return [" ".join(line.split()[2:4]) for line in text.splitlines()[1:] if " j0 " in line]


def groups6(lab: Lab, ns: str) -> list[str]:
    return [ln.split()[2] for ln in lab.read(ns, "/proc/net/igmp6").splitlines() if " j0 " in ln]


def no_address(lab: Lab) -> None:
    host, peer = lab.pair(11, host_addrs=False)
    lab.ip(host, "link", "set", "j0", "addrgenmode", "none")  # no IPv6 link-local either
    lab.ip(host, "-6", "addr", "flush", "dev", "j0")
    idx = lab.ifindex(host, "j0")
    say("j0 addresses (IPv4 and IPv6)", lab.ip(host, "-br", "addr", "show", "j0").split())
    cap = capture_socket(lab, peer, "p0")
    s = lab.sock(host, socket.AF_INET6, socket.SOCK_DGRAM)
    lv = socket.IPPROTO_IPV6
    say(
        "v6 MCAST_JOIN_GROUP ff3e::b:1, no IPv6 address at all",
        try_call(s.setsockopt, lv, MCAST_JOIN_GROUP, group_req(idx, "ff3e::b:1")),
    )
    say(
        "v6 MCAST_JOIN_SOURCE_GROUP (2001:db8:b::2, ff3e::b:2), no address",
        try_call(
            s.setsockopt,
            lv,
            MCAST_JOIN_SOURCE_GROUP,
            group_source_req(idx, "ff3e::b:2", "2001:db8:b::2"),
        ),
    )
    say("v6 /proc/net/igmp6 groups on j0", groups6(lab, host))
    time.sleep(3)
    say("v6 reports the peer saw (no address)", [(src, kind) for src, kind, _ in reports(cap)])
    lab.sh(host, "sysctl", "-qw", "net.ipv6.conf.j0.disable_ipv6=1")
    s2 = lab.sock(host, socket.AF_INET6, socket.SOCK_DGRAM)
    say(
        "v6 MCAST_JOIN_GROUP with disable_ipv6=1 on j0",
        try_call(s2.setsockopt, lv, MCAST_JOIN_GROUP, group_req(idx, "ff3e::b:3")),
    )


def link_down_up(lab: Lab, v6: bool) -> None:
    tag = "v6" if v6 else "v4"
    host, _ = lab.pair(12 if v6 else 13)
    idx = lab.ifindex(host, "j0")
    fam, lv = (socket.AF_INET6, socket.IPPROTO_IPV6) if v6 else (socket.AF_INET, socket.IPPROTO_IP)
    grp, src = ("ff3e::c:1", "2001:db8:c::2") if v6 else ("239.12.0.1", "198.18.12.2")
    s = lab.sock(host, fam, socket.SOCK_DGRAM)
    req = group_source_req(idx, grp, src)
    s.setsockopt(lv, MCAST_JOIN_SOURCE_GROUP, req)
    say(f"{tag} SSM join, link up: mcfilter", sources(lab, host, v6))
    lab.ip(host, "link", "set", "j0", "down")
    say(f"{tag} after link down: mcfilter", sources(lab, host, v6))
    lab.ip(host, "link", "set", "j0", "up")
    time.sleep(0.3)
    say(f"{tag} after link up again: mcfilter", sources(lab, host, v6))
    s.setsockopt(lv, MCAST_LEAVE_SOURCE_GROUP, req)
    s.setsockopt(lv, MCAST_JOIN_SOURCE_GROUP, req)
    say(f"{tag} after leave and join again: mcfilter", sources(lab, host, v6))
    lab.ip(host, "link", "set", "j0", "down")
    s2 = lab.sock(host, fam, socket.SOCK_DGRAM)
    grp2 = "ff3e::c:2" if v6 else "239.12.0.2"
    say(
        f"{tag} SSM join while the link is down",
        try_call(s2.setsockopt, lv, MCAST_JOIN_SOURCE_GROUP, group_source_req(idx, grp2, src)),
    )
    say(f"{tag} joined while down: mcfilter", sources(lab, host, v6))
    lab.ip(host, "link", "set", "j0", "up")
    time.sleep(0.3)
    say(f"{tag} joined while down, after link up: mcfilter", sources(lab, host, v6))


def modes(lab: Lab) -> None:
    host, _ = lab.pair(14)
    idx = lab.ifindex(host, "j0")
    for v6 in (False, True):
        tag = "v6" if v6 else "v4"
        fam, lv = (
            (socket.AF_INET6, socket.IPPROTO_IPV6) if v6 else (socket.AF_INET, socket.IPPROTO_IP)
        )
        grp, src = ("ff3e::e:1", "2001:db8:e::2") if v6 else ("239.14.0.1", "198.18.14.2")
        asm, ssm = group_req(idx, grp), group_source_req(idx, grp, src)
        first = lab.sock(host, fam, socket.SOCK_DGRAM)
        first.setsockopt(lv, MCAST_JOIN_GROUP, asm)
        say(
            f"{tag} one socket: ASM join, then SSM join of the same group",
            try_call(first.setsockopt, lv, MCAST_JOIN_SOURCE_GROUP, ssm),
        )
        second = lab.sock(host, fam, socket.SOCK_DGRAM)
        second.setsockopt(lv, MCAST_JOIN_SOURCE_GROUP, ssm)
        say(
            f"{tag} one socket: SSM join, then ASM join of the same group",
            try_call(second.setsockopt, lv, MCAST_JOIN_GROUP, asm),
        )


def main() -> None:
    with Lab() as lab:
        no_address(lab)
    with Lab() as lab:
        modes(lab)
    for v6 in (False, True):
        with Lab() as lab:
            link_down_up(lab, v6)


if __name__ == "__main__":
    main()
