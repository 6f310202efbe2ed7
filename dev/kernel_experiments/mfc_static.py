"""E: MFC_STATIC: an entry written through a socket that is not the table's owner (a raw
socket with MRT_TABLE but no MRT_INIT, as root may do) outlives the owner's close; does the
owner's in-place rewrite clear the flag, and does its delete and add?"""

from __future__ import annotations

import socket

from kxlab import MRT_ADD_MFC, MRT_DEL_MFC, Lab, add_mfc, add_vif, mfc, mroute4, mroute6, say


def entry(lab: Lab, ns: str, v6: bool, grp: str) -> str:
    out = lab.sh(ns, "ip", "-6" if v6 else "-4", "mroute", "show")
    lines = [" ".join(line.split()) for line in out.splitlines() if grp in line]
    return "; ".join(lines) or "no entry"


def main() -> None:
    with Lab() as lab:
        for v6 in (False, True):
            tag = "v6" if v6 else "v4"
            for how in ("rewrite in place", "delete and add"):
                _, rtr, _ = lab.router_lab(receivers=2, tag=f"{tag}{len(how)}")
                mroute = mroute6 if v6 else mroute4
                owner = mroute(lab, rtr)
                for vifi, name in enumerate(("r0", "r1", "r2")):
                    add_vif(owner, vifi, lab.ifindex(rtr, name))
                src, grp = ("2001:db8::2", "ff3e::7:1") if v6 else ("198.18.0.2", "239.7.0.1")
                add_mfc(owner, src, grp, 0, [1])
                rogue = mroute(lab, rtr, init=False)  # no MRT_INIT: not the owner
                add_mfc(rogue, src, grp, 0, [2])
                say(f"{tag} after a non-owner's rewrite", entry(lab, rtr, v6, grp))
                if how == "delete and add":
                    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
                    owner.setsockopt(level, MRT_DEL_MFC, mfc(src, grp, 0, []))
                    owner.setsockopt(level, MRT_ADD_MFC, mfc(src, grp, 0, [1]))
                else:
                    add_mfc(owner, src, grp, 0, [1])
                say(f"{tag} after the owner's {how}", entry(lab, rtr, v6, grp))
                owner.close()
                rogue.close()
                say(f"{tag} {how}, then the owner's close", entry(lab, rtr, v6, grp))


if __name__ == "__main__":
    main()
