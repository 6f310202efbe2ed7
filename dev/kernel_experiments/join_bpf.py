"""Issue 14: does a join socket queue the joined traffic, and does a drop-all BPF filter stop it?"""

from __future__ import annotations

import ctypes
import socket
import struct
import time

from kxlab import MCAST_JOIN_GROUP, SO_ATTACH_FILTER, Lab, drain, group_req, say, send

PORT = 6100
BPF_RET_K = 0x06  # BPF_RET | BPF_K


def drop_all(s: socket.socket) -> ctypes.Array[ctypes.c_char]:
    """Attach the classic BPF program `ret #0`; returns the buffer (keep it alive)."""
    prog = ctypes.create_string_buffer(struct.pack("=HBBI", BPF_RET_K, 0, 0, 0))
    fprog = struct.pack("@HP", 1, ctypes.addressof(prog))  # struct sock_fprog: len, pointer
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return prog


def main() -> None:
    with Lab() as lab:
        host, peer = lab.pair(10)
        idx = lab.ifindex(host, "j0")
        for v6 in (False, True):
            run_family(lab, host, peer, idx, v6)


def run_family(lab: Lab, host: str, peer: str, idx: int, v6: bool) -> None:
    tag = "v6" if v6 else "v4"
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    any_addr = "::" if v6 else "0.0.0.0"
    grp = "ff3e::a:1" if v6 else "239.10.0.1"
    cases: dict[str, socket.socket] = {}
    keep = []
    for case in ("bound", "bound+filter", "unbound", "raw"):
        if case == "raw":
            proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_IGMP
            s = lab.sock(host, fam, socket.SOCK_RAW, proto)
        else:
            s = lab.sock(host, fam, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if case.startswith("bound"):
            s.bind((any_addr, PORT))
        if case == "bound+filter":
            keep.append(drop_all(s))
        s.setsockopt(level, MCAST_JOIN_GROUP, group_req(idx, grp))
        s.setblocking(False)
        cases[case] = s
    # A witness bound to the port that has not joined anything itself.
    witness = lab.sock(host, fam, socket.SOCK_DGRAM)
    witness.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    witness.bind((any_addr, PORT))
    witness.setblocking(False)
    out = lab.sock(peer, fam, socket.SOCK_DGRAM)
    if v6:
        out.setsockopt(level, socket.IPV6_MULTICAST_IF, lab.ifindex(peer, "p0"))
    time.sleep(0.2)
    send(out, grp, PORT, 10)
    time.sleep(0.3)
    for case, s in cases.items():
        got = drain(s, 0.2)
        if case == "raw":
            got = [g for g in got if g >= 0]
        say(f"{tag} join socket '{case}': datagrams queued (of 10)", len(got))
    say(f"{tag} witness socket bound to the port, not joined: received", len(drain(witness, 0.2)))
    proc = "/proc/net/igmp6" if v6 else "/proc/net/igmp"
    text = lab.read(host, proc)
    needle = "ff3e00000000000000000000000a0001" if v6 else "01000AEF"
    users = [ln.split()[-3] if v6 else ln.split()[1] for ln in text.splitlines() if needle in ln]
    say(f"{tag} {proc} entry for {grp}: users count (4 join sockets)", users)
    # Only the filtered socket left: does its membership alone still pull the traffic in?
    for case in ("bound", "unbound", "raw"):
        cases[case].close()
    for label in ("only the filtered socket joined", "no join socket left"):
        send(out, grp, PORT, 10, tag=1)
        queued = len(drain(cases["bound+filter"], 0.2)) if "only" in label else "-"
        users = [
            ln.split()[-3] if v6 else ln.split()[1]
            for ln in lab.read(host, proc).splitlines()
            if needle in ln
        ]
        say(
            f"{tag} {label}: {proc} users / filtered socket queued / witness received",
            f"{users} / {queued} / {len(drain(witness, 0.3))}",
        )
        cases["bound+filter"].close()


if __name__ == "__main__":
    main()
