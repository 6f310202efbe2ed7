"""Issue 12: does the RTNL_FAMILY_IPMR/IP6MR MFC dump filter by table (NETLINK_GET_STRICT_CHK)?"""

from __future__ import annotations

import errno
import socket
import struct

from kxlab import Lab, add_mfc, add_vif, mroute4, mroute6, say

NLMSGHDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
RTM_GETROUTE, NLMSG_ERROR, NLMSG_DONE = 26, 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTA_DST, RTA_SRC, RTA_TABLE = 1, 2, 15
FAMILY: dict[int, int] = {socket.AF_INET: 128, socket.AF_INET6: 129}


def attrs(payload: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(payload):
        ln, kind = struct.unpack_from("=HH", payload, pos)
        if ln < 4:
            break
        out[kind & 0x7FFF] = payload[pos + 4 : pos + ln]
        pos += (ln + 3) & ~3
    return out


def dump(nl: socket.socket, family: int, hdr_table: int = 0, rta_table: int | None = None) -> str:
    """One dump; returns "table:src>dst ..." of the entries, or the errno name."""
    extra = b""
    if rta_table is not None:
        extra = struct.pack("=HHI", 8, RTA_TABLE, rta_table)
    body = RTMSG.pack(FAMILY[family], 0, 0, 0, hdr_table, 0, 0, 0, 0) + extra
    nl.send(
        NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        + body
    )
    seen: list[str] = []
    while True:
        data = nl.recv(1 << 20)
        pos = 0
        while pos < len(data):
            ln, kind, _, _, _ = NLMSGHDR.unpack_from(data, pos)
            msg = data[pos + NLMSGHDR.size : pos + ln]
            pos += (ln + 3) & ~3
            if kind == NLMSG_DONE:
                # A dump that fails after it started reports the error in NLMSG_DONE's payload.
                code = -struct.unpack_from("=i", msg)[0] if len(msg) >= 4 else 0
                done = f" (NLMSG_DONE error {errno.errorcode.get(code, code)})" if code else ""
                return (" ".join(seen) or "(none)") + done
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", msg)[0]
                return f"error {errno.errorcode.get(code, code)}" if code else " ".join(seen)
            _, _, _, _, table, _, _, _, _ = RTMSG.unpack_from(msg)
            a = attrs(msg[RTMSG.size :])
            rta = struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else None
            src = socket.inet_ntop(family, a[RTA_SRC]) if RTA_SRC in a else "*"
            dst = socket.inet_ntop(family, a[RTA_DST]) if RTA_DST in a else "*"
            seen.append(f"[rtm_table={table},RTA_TABLE={rta}]{src}>{dst}")


def main() -> None:
    with Lab() as lab:
        ns = lab.netns("nl")
        lab.veth(ns, "d0", ns, "d1")  # no dummy driver on this kernel; a veth pair will do
        idx = [lab.ifindex(ns, f"d{k}") for k in range(2)]
        socks = []
        for mk, src, grp in (
            (mroute4, "198.18.0.", "239.2.2.1"),
            (mroute6, "2001:db8::", "ff3e::2:1"),
        ):
            # Entries: default table (no MRT_TABLE) source .1, table 100 source .2, table 7 .3.
            for host, table in ((1, None), (2, 100), (3, 7)):
                s = mk(lab, ns, table=table)
                for vifi, ifindex in enumerate(idx):
                    add_vif(s, vifi, ifindex)
                add_mfc(s, f"{src}{host}", grp, 0, [1])
                socks.append(s)
        for strict in (0, 1):
            with lab.inside(ns):
                nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            nl.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, strict)
            for family in (socket.AF_INET, socket.AF_INET6):
                tag = f"family {FAMILY[family]} strict={strict}"
                say(f"{tag} no filter", dump(nl, family))
                say(f"{tag} RTA_TABLE=100", dump(nl, family, rta_table=100))
                say(f"{tag} rtm_table=100 (header only)", dump(nl, family, hdr_table=100))
                say(f"{tag} RTA_TABLE=999 (no such table)", dump(nl, family, rta_table=999))
            nl.close()
        for s in socks:
            s.close()


if __name__ == "__main__":
    main()
