"""Issue 13: WRONGVIF/WRONGMIF upcalls with MRT_ASSERT: when, how often, and with MRT_PIM."""

from __future__ import annotations

import socket
import struct
import time

from kxlab import MRT_ASSERT, MRT_PIM, Lab, add_mfc, add_vif, mroute4, mroute6, say, send, upcalls

PORT = 5002
CASES = ("noassert", "assert", "assert-oif", "pim")


def run_case(lab: Lab, v6: bool, case: str) -> None:
    """(S,G) with parent VIF 1 while packets arrive on VIF 0 (r0), 10 packets/s for 7 s."""
    tag = ("v6" if v6 else "v4") + "-" + case
    snd, rtr, _ = lab.router_lab(receivers=1, tag=f"{tag[:2]}{CASES.index(case)}")
    mr = (mroute6 if v6 else mroute4)(lab, rtr)
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    add_vif(mr, 0, lab.ifindex(rtr, "r0"))
    add_vif(mr, 1, lab.ifindex(rtr, "r1"))
    if case != "noassert":
        opt = MRT_PIM if case == "pim" else MRT_ASSERT
        mr.setsockopt(level, opt, struct.pack("=i", 1))
    src, grp = ("2001:db8::2", "ff3e::4:1") if v6 else ("198.18.0.2", "239.4.0.1")
    # Arrival VIF 0 listed as an oif ("assert-oif") or not ("assert"/"pim"/"noassert").
    add_mfc(mr, src, grp, 1, [0] if case == "assert-oif" else [])
    out = lab.sender(snd, socket.AF_INET6 if v6 else socket.AF_INET)
    upcalls(mr, 0.05)
    stamps: list[tuple[float, int, int]] = []
    t0 = time.monotonic()
    for _ in range(70):
        send(out, grp, PORT, 1)
        stamps += [(time.monotonic() - t0, u[0], u[1]) for u in upcalls(mr, 0.1)]
    say(
        f"{tag}: upcalls in 7 s of 10 pkt/s on the wrong VIF (t s, type, vif)",
        [(round(t, 1), k, v) for t, k, v in stamps],
    )


def main() -> None:
    with Lab() as lab:
        for v6 in (False, True):
            for case in CASES:
                run_case(lab, v6, case)


if __name__ == "__main__":
    main()
