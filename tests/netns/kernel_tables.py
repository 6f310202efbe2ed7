"""The kernel's multicast tables in a namespace, from /proc/net/ip_mr_* and /proc/net/ip6_mr_*."""

from __future__ import annotations

import socket
import struct

from lab.netns import Lab

Mfc = dict[tuple[str, str], tuple[int, frozenset[int]]]  # (source, group) -> (iif vif, oif vifs)


def _v4(hexaddr: str) -> str:
    # The kernel prints the big-endian address as a host-order (little-endian) 32-bit number.
    return socket.inet_ntoa(struct.pack("<I", int(hexaddr, 16)))


def _v6(hexaddr: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr.replace(":", "")))


def mfc(lab: Lab, family: int) -> Mfc:
    """The router namespace's MFC: every resolved entry with its iif and oif VIF numbers."""
    name = "ip_mr_cache" if family == 4 else "ip6_mr_cache"
    text = lab.exec(lab.router, "cat", f"/proc/net/{name}").stdout
    decode = _v4 if family == 4 else _v6
    entries: Mfc = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6:
            continue
        group, origin, iif = fields[0], fields[1], int(fields[2])
        oifs = frozenset(int(f.split(":")[0]) for f in fields[6:])
        entries[(decode(origin), decode(group))] = (iif, oifs)
    return entries


def vifs(lab: Lab, family: int) -> dict[int, str]:
    """VIF number -> interface name, as the kernel has them."""
    name = "ip_mr_vif" if family == 4 else "ip6_mr_vif"
    text = lab.exec(lab.router, "cat", f"/proc/net/{name}").stdout
    return {int(f[0]): f[1] for f in (line.split() for line in text.splitlines()[1:]) if f}


def in_kernel(lab: Lab, family: int, table: str) -> int:
    """How many MFC entries `ip mroute show table T` lists: none when the table does not
    exist (mfcd closes a table other than the default once it is empty, and the kernel
    then frees it: when depends on when mfcd's after-change work runs)."""
    shown = lab.exec(lab.router, "ip", f"-{family}", "mroute", "show", "table", table)
    if shown.returncode != 0:
        assert "MR table does not exist" in shown.stderr, shown.stderr
        return 0
    return sum(1 for line in shown.stdout.splitlines() if line.startswith("("))
