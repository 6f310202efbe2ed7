"""Issue 13: NOCACHE upcalls: layout, queued packets, unresolved limit and lifetime, non-VIFs."""

from __future__ import annotations

import socket
import time

from kxlab import (
    Lab,
    add_mfc,
    add_vif,
    drain,
    mroute4,
    mroute6,
    say,
    send,
    upcalls,
)

PORT = 5001
SO_RCVBUFFORCE = 33


class Net:
    """sender -- router -- receiver for one family, the router's mroute socket with VIFs 0, 1."""

    def __init__(self, lab: Lab, v6: bool, vif0: bool = True) -> None:
        self.lab, self.v6 = lab, v6
        self.tag = ("v6" if v6 else "v4") + ("" if vif0 else "-novif0")
        self.snd, self.rtr, (self.rx,) = lab.router_lab(receivers=1, tag=self.tag)
        self.src = "2001:db8::2" if v6 else "198.18.0.2"
        self.mr = (mroute6 if v6 else mroute4)(lab, self.rtr)
        if vif0:
            add_vif(self.mr, 0, lab.ifindex(self.rtr, "r0"))
        add_vif(self.mr, 1, lab.ifindex(self.rtr, "r1"))
        self.out = lab.sender(self.snd, socket.AF_INET6 if v6 else socket.AF_INET)

    def group(self, n: int) -> str:
        return f"ff3e::3:{n:x}" if self.v6 else f"239.{3 + (n >> 16)}.{n >> 8 & 255}.{n & 255}"

    def unresolved(self) -> int:
        fam = ["-6"] if self.v6 else []
        shown = self.lab.ip(self.rtr, *fam, "mroute", "show")
        return sum("unresolved" in line for line in shown.splitlines())


def layout_and_first_packet(net: Net) -> None:
    g = net.group(1)
    rcv = net.lab.receiver(net.rx, g, PORT)
    time.sleep(0.2)
    upcalls(net.mr, 0.05)
    t0 = time.monotonic()
    send(net.out, g, PORT, 1)
    # Wait for the upcall and answer it at once, as a daemon with a (*,G) template would.
    net.mr.setblocking(True)
    net.mr.settimeout(2)
    raw = net.mr.recv(65536)
    while raw[0 if net.v6 else 9] != 0:  # skip real IGMP/MLD packets
        raw = net.mr.recv(65536)
    t1 = time.monotonic()
    add_mfc(net.mr, net.src, g, 0, [1])
    got = drain(rcv, 0.5)
    say(f"{net.tag} upcall recv() length", len(raw))
    # Only the header is printed: the rest of an IPv6 upcall is not initialised by the
    # kernel (it held stale bytes of unrelated data in one run).
    head = 28 if not net.v6 else 40
    say(f"{net.tag} upcall bytes (first {head})", raw[:head].hex())
    if net.v6:
        say(f"{net.tag} upcall bytes 40..80 all zero", not any(raw[40:]))
    say(f"{net.tag} upcall latency after send (ms)", round((t1 - t0) * 1000, 2))
    say(f"{net.tag} first packet delivered after prompt MRT_ADD_MFC", got)
    # Burst of 10 packets for a fresh (S,G): how many are queued and forwarded on resolution?
    g2 = net.group(2)
    rcv2 = net.lab.receiver(net.rx, g2, PORT + 1)
    time.sleep(0.2)
    send(net.out, g2, PORT + 1, 10)
    time.sleep(0.2)
    ups = upcalls(net.mr, 0.2)
    add_mfc(net.mr, net.src, g2, 0, [1])
    say(f"{net.tag} burst of 10 before MRT_ADD_MFC: upcalls", [u[:4] for u in ups])
    say(f"{net.tag} burst of 10 before MRT_ADD_MFC: delivered seq", drain(rcv2, 0.5))
    rcv.close()
    rcv2.close()


def lifetime(net: Net) -> None:
    g = net.group(3)
    rcv = net.lab.receiver(net.rx, g, PORT + 2)
    time.sleep(0.2)
    upcalls(net.mr, 0.05)
    t0 = time.monotonic()
    send(net.out, g, PORT + 2, 1)
    refreshed = False
    while net.unresolved() and time.monotonic() - t0 < 30:
        if not refreshed and time.monotonic() - t0 > 5:
            send(net.out, g, PORT + 2, 1, tag=1)  # a second packet at 5 s: does it extend?
            refreshed = True
        time.sleep(0.2)
    gone = time.monotonic() - t0
    say(f"{net.tag} unresolved entry gone after (s, 2nd packet sent at 5 s)", round(gone, 1))
    say(f"{net.tag} upcalls for that entry (one entry, two packets)", len(upcalls(net.mr)))
    add_mfc(net.mr, net.src, g, 0, [1])
    say(f"{net.tag} delivered when MRT_ADD_MFC comes after expiry", drain(rcv, 0.5))
    rcv.close()


def limit(net: Net, count: int, big_rcvbuf: bool) -> None:
    """Packets to `count` distinct groups, nothing read meanwhile: entries and upcalls kept."""
    if big_rcvbuf:
        net.mr.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    rcvbuf = net.mr.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    upcalls(net.mr, 0.05)
    base = 4096 if big_rcvbuf else 40000
    t0 = time.monotonic()
    for n in range(count):
        send(net.out, net.group(base + n), PORT + 3, 1)
    sent = time.monotonic() - t0
    entries = net.unresolved()
    ups = upcalls(net.mr, 0.5)
    say(
        f"{net.tag} {count} new (S,G) in {sent:.2f}s, SO_RCVBUF={rcvbuf}: unresolved entries / "
        "upcalls read",
        f"{entries} / {len(ups)}",
    )


def non_vif(lab: Lab, v6: bool) -> None:
    net = Net(lab, v6, vif0=False)
    upcalls(net.mr, 0.05)
    send(net.out, net.group(7), PORT, 3)
    ups = upcalls(net.mr, 0.3)
    say(
        f"{net.tag} packet arriving on a non-VIF netdev: upcalls / unresolved",
        (f"{len(ups)} / {net.unresolved()}"),
    )


def main() -> None:
    with Lab() as lab:
        for v6 in (False, True):
            net = Net(lab, v6)
            layout_and_first_packet(net)
            non_vif(lab, v6)
            limit(net, 2000, big_rcvbuf=False)
            time.sleep(11)  # let the unresolved entries expire before the next measurement
            limit(net, 5000, big_rcvbuf=True)
            time.sleep(11)
            lifetime(net)


if __name__ == "__main__":
    main()
