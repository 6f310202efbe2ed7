"""Issue 14: MCAST_JOIN_(SOURCE_)GROUP by ifindex on address-less links: /proc, ip maddr, wire."""

from __future__ import annotations

import socket
import time

from kxlab import (
    GROUP_REQ,
    GROUP_SOURCE_REQ,
    MCAST_JOIN_GROUP,
    MCAST_JOIN_SOURCE_GROUP,
    Lab,
    capture_socket,
    drain,
    group_req,
    group_source_req,
    reports,
    say,
    send,
    try_call,
)

PORT = 6000


def proc_lines(lab: Lab, ns: str, path: str, key: str) -> str:
    """The lines of a /proc file that mention key (with the header), joined by ' | '."""
    lines = lab.read(ns, path).splitlines()
    keep = [ln.strip() for ln in lines[:1]] + [ln.strip() for ln in lines[1:] if key in ln]
    return " | ".join(keep)


def igmp_block(lab: Lab, ns: str, ifname: str) -> str:
    """/proc/net/igmp lists groups under an interface line: return that interface's block."""
    out, inside = [], False
    for ln in lab.read(ns, "/proc/net/igmp").splitlines()[1:]:
        if not ln.startswith("\t"):
            inside = ifname in ln.split()[:2]
        if inside:
            out.append(ln.strip())
    return " | ".join(out)


def setup(lab: Lab) -> tuple[str, str]:
    host, peer = lab.pair(7, host_addrs=False)
    lab.addr(peer, "p0", "198.18.7.3/24")  # a second source
    return host, peer


def layouts(lab: Lab, host: str, idx: int) -> None:
    s = lab.sock(host, socket.AF_INET, socket.SOCK_DGRAM)
    packed = group_req(idx, "239.7.9.9")
    short = packed[:4] + packed[8:]  # 4-byte packing, as a 32-bit layout would have it
    say("sizeof(group_req), sizeof(group_source_req)", (GROUP_REQ.size, GROUP_SOURCE_REQ.size))
    say(
        "MCAST_JOIN_GROUP with a 132-byte (unpadded) group_req",
        try_call(s.setsockopt, socket.IPPROTO_IP, MCAST_JOIN_GROUP, short),
    )
    say(
        "MCAST_JOIN_GROUP with group_req missing the padding but 136 bytes long",
        try_call(s.setsockopt, socket.IPPROTO_IP, MCAST_JOIN_GROUP, short + b"\0" * 4),
    )
    s.close()


def family_run(lab: Lab, host: str, peer: str, v6: bool) -> None:
    tag = "v6" if v6 else "v4"
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    idx = lab.ifindex(host, "j0")
    asm, ssm = ("ff3e::7:1", "ff3e::7:2") if v6 else ("239.7.0.1", "239.7.0.2")
    good_src, bad_src = ("2001:db8:7::2", "2001:db8:7::3") if v6 else ("198.18.7.2", "198.18.7.3")
    if v6:
        lab.addr(peer, "p0", "2001:db8:7::3/64")
    cap = capture_socket(lab, peer, "p0")
    rx = lab.sock(host, fam, socket.SOCK_DGRAM)
    rx.bind(("::" if v6 else "0.0.0.0", PORT))
    rx.setblocking(False)
    t0 = time.monotonic()
    say(
        f"{tag} MCAST_JOIN_GROUP {asm} on j0 by ifindex",
        try_call(rx.setsockopt, level, MCAST_JOIN_GROUP, group_req(idx, asm)),
    )
    say(
        f"{tag} MCAST_JOIN_SOURCE_GROUP ({good_src},{ssm}) on j0",
        try_call(
            rx.setsockopt, level, MCAST_JOIN_SOURCE_GROUP, group_source_req(idx, ssm, good_src)
        ),
    )
    time.sleep(0.3)
    if v6:
        say("v6 j0 addresses", lab.ip(host, "-6", "-br", "addr", "show", "j0").strip())
        say("v6 /proc/net/igmp6 (j0)", proc_lines(lab, host, "/proc/net/igmp6", "j0"))
        say("v6 /proc/net/mcfilter6", proc_lines(lab, host, "/proc/net/mcfilter6", "j0"))
    else:
        say("v4 j0 addresses", lab.ip(host, "-4", "-br", "addr", "show", "j0").strip() or "(none)")
        say("v4 /proc/net/igmp (j0 block)", igmp_block(lab, host, "j0"))
        say("v4 /proc/net/mcfilter", proc_lines(lab, host, "/proc/net/mcfilter", "j0"))
        for key in ("all", "default", "j0"):
            path = f"/proc/sys/net/ipv4/conf/{key}/rp_filter"
            say(f"v4 host {path}", lab.read(host, path).strip())
    maddr = lab.ip(host, *(["-6"] if v6 else ["-4"]), "maddr", "show", "dev", "j0")
    say(f"{tag} ip maddr show dev j0", " | ".join(ln.strip() for ln in maddr.splitlines()))
    # Traffic: ASM group from either source, SSM group from the joined and another source.
    tx = {a: lab.sock(peer, fam, socket.SOCK_DGRAM) for a in (good_src, bad_src)}
    for a, s in tx.items():
        s.bind((a, 0))
        if v6:
            s.setsockopt(level, socket.IPV6_MULTICAST_IF, lab.ifindex(peer, "p0"))
        send(s, asm, PORT, 3, tag=1)
        send(s, ssm, PORT, 3, tag=2 if a == good_src else 3)
    got = drain(rx, 0.5)
    say(
        f"{tag} received: ASM (tag 1) / SSM joined source (tag 2) / SSM other source (tag 3)",
        [sum(1 for g in got if g // 1_000_000 == k) for k in (1, 2, 3)],
    )
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # unsolicited reports repeat within ~1 s
    for src, kind, recs in reports(cap):
        say(f"{tag} report seen by peer", f"from {src} {kind} {recs}")


def main() -> None:
    with Lab() as lab:
        host, peer = setup(lab)
        layouts(lab, host, lab.ifindex(host, "j0"))
        family_run(lab, host, peer, v6=False)
        family_run(lab, host, peer, v6=True)


if __name__ == "__main__":
    main()
