"""Issue 13: SIOCGETSGCNT(_IN6) errno for a missing, an unresolved and a present (S,G)."""

from __future__ import annotations

import socket
import time

from kxlab import Lab, add_mfc, add_vif, errname, mroute4, mroute6, say, send, sg_count


def probe(s: socket.socket, src: str, grp: str) -> str:
    try:
        return f"OK {sg_count(s, src, grp)}"
    except OSError as exc:
        return errname(exc)


def main() -> None:
    with Lab() as lab:
        for v6 in (False, True):
            tag = "v6" if v6 else "v4"
            snd, rtr, _ = lab.router_lab(receivers=1, tag=tag)
            mr = (mroute6 if v6 else mroute4)(lab, rtr)
            add_vif(mr, 0, lab.ifindex(rtr, "r0"))
            add_vif(mr, 1, lab.ifindex(rtr, "r1"))
            src = "2001:db8::2" if v6 else "198.18.0.2"
            present, unres, missing = (
                ("ff3e::5:1", "ff3e::5:2", "ff3e::5:3")
                if v6
                else ("239.5.0.1", "239.5.0.2", "239.5.0.3")
            )
            add_mfc(mr, src, present, 0, [1])
            out = lab.sender(snd, socket.AF_INET6 if v6 else socket.AF_INET)
            send(out, unres, 5003, 1)  # creates an unresolved entry (no MFC for it)
            time.sleep(0.2)
            other = (mroute6 if v6 else mroute4)(lab, rtr, init=False)  # plain raw socket
            say(f"{tag} SIOCGETSGCNT present (S,G)", probe(mr, src, present))
            say(
                f"{tag} SIOCGETSGCNT present (S,G), non-init raw socket", probe(other, src, present)
            )
            say(f"{tag} SIOCGETSGCNT unresolved (S,G)", probe(mr, src, unres))
            say(f"{tag} SIOCGETSGCNT missing (S,G)", probe(mr, src, missing))
            say(f"{tag} SIOCGETSGCNT missing (*,G)", probe(mr, "::" if v6 else "0.0.0.0", missing))
            t100 = (mroute6 if v6 else mroute4)(lab, rtr, table=100, init=False)
            say(
                f"{tag} SIOCGETSGCNT present-in-default via MRT_TABLE 100 socket",
                probe(t100, src, present),
            )


if __name__ == "__main__":
    main()
