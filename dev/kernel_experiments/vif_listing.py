"""Issue 12: how to list the VIFs (MIFs) of a table other than the default, and their devices."""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

from kxlab import Lab, add_mfc, add_vif, errname, mroute4, mroute6, say

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
RTM_GETLINK, NLMSG_ERROR, NLMSG_DONE = 18, 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
RTNL_FAMILY_IPMR, RTNL_FAMILY_IP6MR = 128, 129
SIOCGETMIFCNT_IN6 = 0x89E0  # = SIOCGETVIFCNT
SIOC_MIF_REQ6 = struct.Struct("=H6xQQQQ")


def link_dump(nl: socket.socket, family: int) -> str:
    """One RTM_GETLINK dump of this family: the ifi_family of each reply, or the errno."""
    body = IFINFOMSG.pack(family, 0, 0, 0, 0)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    nl.send(header + body)
    families: list[int] = []
    while True:
        data, pos = nl.recv(1 << 16), 0
        while pos + NLMSGHDR.size <= len(data):
            length, kind = NLMSGHDR.unpack_from(data, pos)[:2]
            if kind == NLMSG_DONE:
                return f"{len(families)} replies, ifi_family {sorted(set(families))}"
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, pos + NLMSGHDR.size)[0]
                return errno.errorcode.get(err, str(err))
            families.append(data[pos + NLMSGHDR.size])
            pos += (length + 3) & ~3


def mif_probe(s: socket.socket, mifi: int) -> str:
    buf = bytearray(SIOC_MIF_REQ6.pack(mifi, 0, 0, 0, 0))
    try:
        fcntl.ioctl(s.fileno(), SIOCGETMIFCNT_IN6, buf, True)
    except OSError as exc:
        return errname(exc)
    return f"OK {SIOC_MIF_REQ6.unpack(buf)[1:]}"


def main() -> None:
    with Lab() as lab:
        _snd, rtr, _ = lab.router_lab(receivers=2, tag="v6")
        index = {name: lab.ifindex(rtr, name) for name in ("r0", "r1", "r2")}
        v4, v6 = mroute4(lab, rtr, table=100), mroute6(lab, rtr, table=100)
        for s in (v4, v6):  # VIFs 0, 2 and 5: a gap at 1, 3 and 4
            add_vif(s, 0, index["r0"])
            add_vif(s, 2, index["r1"])
            add_vif(s, 5, index["r2"])
        add_mfc(v6, "2001:db8::2", "ff3e::5:1", 0, [2, 5])
        say("ifindex of r0 r1 r2", list(index.values()))
        nl = lab.sock(rtr, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        say("RTM_GETLINK dump, RTNL_FAMILY_IPMR", link_dump(nl, RTNL_FAMILY_IPMR))
        say("RTM_GETLINK dump, RTNL_FAMILY_IP6MR", link_dump(nl, RTNL_FAMILY_IP6MR))
        say("RTM_GETLINK dump, AF_UNSPEC", link_dump(nl, socket.AF_UNSPEC))
        say("ip6_mr_vif rows (table 100 only has MIFs)", lab.read(rtr, "/proc/net/ip6_mr_vif"))
        say("ip -6 mroute show table 100", lab.ip(rtr, "-6", "mroute", "show", "table", "100"))
        probe = mroute6(lab, rtr, table=100, init=False)  # a plain raw socket set to table 100
        for mifi in range(7):
            say(
                f"SIOCGETMIFCNT_IN6 mif {mifi}, non-init MRT6_TABLE 100 socket",
                mif_probe(probe, mifi),
            )
        say(
            "SIOCGETMIFCNT_IN6 mif 0, default-table socket",
            mif_probe(mroute6(lab, rtr, init=False), 0),
        )


if __name__ == "__main__":
    main()
