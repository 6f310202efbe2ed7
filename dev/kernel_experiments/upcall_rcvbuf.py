"""Issue 13: upcalls when the mroute socket's receive buffer is full, per table, and at scale."""

from __future__ import annotations

import socket
import time

from kxlab import Lab, add_vif, mroute4, mroute6, say, send, upcalls

PORT = 5004
SO_RCVBUFFORCE = 33


def unresolved(lab: Lab, rtr: str, v6: bool, table: str) -> int:
    shown = lab.ip(rtr, *(["-6"] if v6 else []), "mroute", "show", "table", table)
    return sum("unresolved" in line for line in shown.splitlines())


def group(v6: bool, n: int) -> str:
    return f"ff3e::6:{n:x}" if v6 else f"239.{6 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"


def full_buffer(lab: Lab, v6: bool) -> None:
    """Table 100 (iif r0 via mrule) gets a tiny buffer; the default table serves iif r9."""
    tag = "v6" if v6 else "v4"
    snd, rtr, _ = lab.router_lab(receivers=1, tag=tag)
    lab.veth(snd, "s9", rtr, "r9")
    lab.addr(snd, "s9", "198.18.9.2/24", "2001:db8:9::2/64")
    lab.addr(rtr, "r9", "198.18.9.1/24", "2001:db8:9::1/64")
    mk = mroute6 if v6 else mroute4
    t100, tdef = mk(lab, rtr, table=100), mk(lab, rtr)
    for s in (t100, tdef):
        add_vif(s, 0, lab.ifindex(rtr, "r0"))
        add_vif(s, 1, lab.ifindex(rtr, "r9"))
    lab.ip(
        rtr, *(["-6"] if v6 else []), "mrule", "add", "iif", "r0", "lookup", "100", "pref", "100"
    )
    t100.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    say(
        f"{tag} table-100 socket SO_RCVBUF after asking 4096",
        t100.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    out0, out9 = lab.sender(snd, fam, "s0"), lab.sender(snd, fam, "s9")
    if not v6:
        out9.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("198.18.9.2"))
    upcalls(t100, 0.05)
    upcalls(tdef, 0.05)
    # 50 new (S,G) into table 100 without reading its socket.
    for n in range(50):
        send(out0, group(v6, n), PORT, 1)
    time.sleep(0.1)
    kept = unresolved(lab, rtr, v6, "100")
    # Meanwhile the default table's socket still hears its own upcalls.
    for n in range(5):
        send(out9, group(v6, 1000 + n), PORT, 1)
    ups_def = upcalls(tdef, 0.3)
    ups_100 = upcalls(t100, 0.3)
    say(
        f"{tag} 50 new (S,G), table-100 buffer full: unresolved entries kept / upcalls read",
        f"{kept} / {len(ups_100)}",
    )
    say(f"{tag} default table upcalls while table 100's buffer is full (5 sent)", len(ups_def))
    # Buffer drained: one more packet per group.  Groups whose upcall was lost had no
    # entry, so they upcall now; those still unresolved stay silent.
    t100.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
    for n in range(50):
        send(out0, group(v6, n), PORT, 1, tag=1)
    again = upcalls(t100, 0.3)
    say(f"{tag} second packet per group after draining: new upcalls", len(again))
    silent = sorted(
        {n for n in range(50)}
        - {int(u[3].rsplit(":" if v6 else ".", 1)[1], 16 if v6 else 10) for u in again}
    )
    say(f"{tag} groups with no second upcall (entries kept from the first round)", silent)


def scale(lab: Lab, v6: bool) -> None:
    """Time to create N unresolved entries (does the kernel walk a list per packet?)."""
    tag = "v6" if v6 else "v4"
    snd, rtr, _ = lab.router_lab(receivers=1, tag=f"{tag}s")
    mr = (mroute6 if v6 else mroute4)(lab, rtr)
    mr.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
    add_vif(mr, 0, lab.ifindex(rtr, "r0"))
    out = lab.sender(snd, socket.AF_INET6 if v6 else socket.AF_INET)
    base = 0
    for count in (1000, 2000, 4000, 8000):
        t0 = time.monotonic()
        for n in range(count):
            send(out, group(v6, base + n), PORT, 1)
        took = time.monotonic() - t0
        got = len(upcalls(mr, 0.5))
        say(
            f"{tag} {count} new unresolved (S,G): send loop seconds / upcalls",
            f"{took:.2f} / {got}",
        )
        base += count
        time.sleep(11)  # all expire before the next round


def main() -> None:
    with Lab() as lab:
        for v6 in (False, True):
            full_buffer(lab, v6)
        for v6 in (False, True):
            scale(lab, v6)


if __name__ == "__main__":
    main()
