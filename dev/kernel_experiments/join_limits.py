"""Issue 14: per-socket membership limits (igmp_max_memberships, optmem_max, max_msf), 10k joins."""

from __future__ import annotations

import socket
import time

from kxlab import (
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    Lab,
    errname,
    group_req,
    group_source_req,
    say,
)

CAP = 20000  # stop counting here


def setup(lab: Lab, role: str) -> tuple[str, int]:
    ns, peer = lab.netns(role), lab.netns(f"{role}p")
    lab.veth(ns, "j0", peer, "p0")
    lab.addr(ns, "j0", "198.18.8.1/24", "2001:db8:8::1/64")
    return ns, lab.ifindex(ns, "j0")


def sysctl(lab: Lab, ns: str, name: str, value: int | None = None) -> str:
    if value is not None:
        lab.sh(ns, "sysctl", "-qw", f"{name}={value}")
    return lab.sh(ns, "sysctl", "-n", name).strip()


def group(v6: bool, n: int) -> str:
    return f"ff3e::8:{n >> 16:x}:{n & 0xFFFF:x}" if v6 else f"239.8.{n >> 8 & 255}.{n & 255}"


def join_until_error(lab: Lab, ns: str, idx: int, v6: bool, base: int = 0) -> tuple[int, str]:
    """Join groups on one socket until an error (or CAP): (joins, errno name)."""
    s = lab.sock(ns, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    for n in range(CAP):
        try:
            s.setsockopt(level, MCAST_JOIN_GROUP, group_req(idx, group(v6, base + n)))
        except OSError as exc:
            s.close()
            return n, errname(exc)
    s.close()
    return CAP, "(no error)"


def sources_until_error(lab: Lab, ns: str, idx: int, v6: bool) -> tuple[int, str]:
    s = lab.sock(ns, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    for n in range(1000):
        src = f"2001:db8:8::{n + 2:x}" if v6 else f"198.18.8.{n + 2}"
        try:
            s.setsockopt(level, MCAST_JOIN_SOURCE_GROUP, group_source_req(idx, group(v6, 0), src))
        except OSError as exc:
            s.close()
            return n, errname(exc)
    s.close()
    return 1000, "(no error)"


def per_netns(lab: Lab) -> None:
    a, b = lab.netns("sysa"), lab.netns("sysb")
    for name, value in (("net.ipv4.igmp_max_memberships", 5), ("net.core.optmem_max", 65536)):
        before = sysctl(lab, b, name)
        sysctl(lab, a, name, value)
        path = "/proc/sys/" + name.replace(".", "/")
        with open(path) as f:  # read only: the host's value
            host = f.read().strip()
        say(
            f"{name}: set {value} in netns A; netns A / netns B / host",
            f"{sysctl(lab, a, name)} / {sysctl(lab, b, name)} (was {before}) / {host}",
        )
    for name in ("net.ipv4.igmp_max_msf", "net.ipv6.mld_max_msf", "net.ipv6.mld_qrv"):
        shown = lab.sh(a, "sysctl", "-n", name, check=False).strip() or "absent in a child netns"
        say(f"{name} in a child netns", shown)


def limits(lab: Lab) -> None:
    ns, idx = setup(lab, "lim")
    for v6 in (False, True):
        tag = "v6" if v6 else "v4"
        say(
            f"{tag} joins on one socket, defaults (igmp_max_memberships=20, optmem_max=131072)",
            join_until_error(lab, ns, idx, v6),
        )
        say(
            f"{tag} source-specific joins of one group on one socket",
            sources_until_error(lab, ns, idx, v6),
        )
    sysctl(lab, ns, "net.ipv4.igmp_max_memberships", 5)
    say("v4 joins with igmp_max_memberships=5", join_until_error(lab, ns, idx, False))
    sysctl(lab, ns, "net.ipv4.igmp_max_memberships", 1_000_000)
    say("v4 joins with igmp_max_memberships=1000000", join_until_error(lab, ns, idx, False))
    sysctl(lab, ns, "net.core.optmem_max", 65536)
    for v6 in (False, True):
        say(
            f"{'v6' if v6 else 'v4'} joins with optmem_max=65536 (igmp_max_memberships=1e6)",
            join_until_error(lab, ns, idx, v6),
        )
    sysctl(lab, ns, "net.core.optmem_max", 16 << 20)
    for v6 in (False, True):
        say(
            f"{'v6' if v6 else 'v4'} joins with optmem_max=16 MiB",
            join_until_error(lab, ns, idx, v6),
        )


def ten_thousand(lab: Lab) -> None:
    """10,000 IPv4 joins with the default limits (many sockets) and with raised limits (one)."""
    ns, idx = setup(lab, "tenk")
    for v6 in (False, True):
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
        socks: list[socket.socket] = []
        t0 = time.monotonic()
        for n in range(10_000):
            if n % 20 == 0:
                socks.append(lab.sock(ns, fam, socket.SOCK_DGRAM))
            socks[-1].setsockopt(level, MCAST_JOIN_GROUP, group_req(idx, group(v6, n)))
        took = time.monotonic() - t0
        proc = "/proc/net/igmp6" if v6 else "/proc/net/igmp"
        lines = len(lab.read(ns, proc).splitlines())
        t1 = time.monotonic()
        for s in socks:
            s.close()
        say(
            f"{'v6' if v6 else 'v4'} 10,000 joins at 20 per socket: sockets / seconds / "
            f"close seconds / {proc} lines",
            f"{len(socks)} / {took:.2f} / {time.monotonic() - t1:.2f} / {lines}",
        )
    sysctl(lab, ns, "net.ipv4.igmp_max_memberships", 10_000)
    sysctl(lab, ns, "net.core.optmem_max", 16 << 20)
    for v6 in (False, True):
        s = lab.sock(ns, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
        t0 = time.monotonic()
        for n in range(10_000):
            s.setsockopt(level, MCAST_JOIN_GROUP, group_req(idx, group(v6, 20_000 + n)))
        took = time.monotonic() - t0
        t1 = time.monotonic()
        s.close()
        say(
            f"{'v6' if v6 else 'v4'} 10,000 joins on one socket (limits raised): seconds / close",
            f"{took:.2f} / {time.monotonic() - t1:.2f}",
        )


def main() -> None:
    with Lab() as lab:
        per_netns(lab)
        limits(lab)
        ten_thousand(lab)


if __name__ == "__main__":
    main()
