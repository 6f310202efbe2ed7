"""Which multicast rule (`ip mrule`) decides: a lookup of a table that does not exist, and the
selectors the multicast rules look at (fwmark, uidrange, oif, l3mdev) or ignore (ipproto,
ports, tos), each seen by real packets reaching table 100 or not."""

from __future__ import annotations

import socket
import struct
import time

from kxlab import MRT_TABLE, Lab, add_mfc, add_vif, drain, mroute4, mroute6, say, send

PORT = 5000
# Rule 50 comes before `iif r0 lookup 100 pref 60`, which sends r0's traffic to table 100
# (whose route forwards to rx1); rule 50 looks up table 77, which forwards nothing.
SELECTORS = [
    "iif r0",
    "iif r0 ipproto tcp",
    "iif r0 dport 9",
    "iif r0 tos 0x10",
    "iif r0 fwmark 1",
    "iif r0 fwmark 0/0xff",
    "iif r0 uidrange 0-0",
    "iif r0 uidrange 1000-2000",
    "iif r0 oif r1",
    "l3mdev",
]


def family_run(lab: Lab, v6: bool) -> None:
    tag = "v6" if v6 else "v4"
    snd, rtr, (rx1,) = lab.router_lab(receivers=1, tag=tag)
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, grp = ("2001:db8::2", "ff3e::1:1") if v6 else ("198.18.0.2", "239.1.1.1")
    s100 = (mroute6 if v6 else mroute4)(lab, rtr, table=100)
    for vifi in range(2):
        add_vif(s100, vifi, lab.ifindex(rtr, f"r{vifi}"))
    add_mfc(s100, src, grp, 0, [1])
    out, rcv = lab.sender(snd, fam), lab.receiver(rx1, grp, PORT)
    time.sleep(0.2)
    ipf = ["-6"] if v6 else []

    def received() -> int:
        send(out, grp, PORT, 5)
        return len(drain(rcv))

    lab.ip(rtr, *ipf, "mrule", "add", "iif", "r0", "lookup", "77", "pref", "50")
    lab.ip(rtr, *ipf, "mrule", "add", "iif", "r0", "lookup", "100", "pref", "60")
    say(f"{tag} 'lookup 77' (no table 77) then 'lookup 100': received of 5", received())
    # A socket that only sets MRT_TABLE 77 (no MRT_INIT), closed at once.
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_IGMP
    once = lab.sock(rtr, fam, socket.SOCK_RAW, proto)
    once.setsockopt(level, MRT_TABLE, struct.pack("=I", 77))
    once.close()
    say(f"{tag} same rules, table 77 created and its socket closed: received of 5", received())
    # Table 77 exists now: a rule 50 that matches takes r0's traffic (0 received).
    for selector in SELECTORS:
        lab.ip(rtr, *ipf, "mrule", "del", "pref", "50")
        what = "" if selector == "l3mdev" else " lookup 77"
        added = lab.ip(rtr, *ipf, "mrule", "add", "pref", "50", *f"{selector}{what}".split())
        shown = lab.ip(rtr, *ipf, "mrule", "show", "pref", "50").strip()
        result = received() if not added.strip() else f"refused: {added.strip()}"
        say(f"{tag} rule 50 '{selector}' (shown: {shown}): received of 5 (5: not matched)", result)


def main() -> None:
    with Lab() as lab:
        say("kernel", lab.sh(lab.netns("k"), "uname", "-r").strip())
        family_run(lab, v6=False)
        family_run(lab, v6=True)


if __name__ == "__main__":
    main()
