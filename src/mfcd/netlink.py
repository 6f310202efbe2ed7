"""Stdlib rtnetlink client: dump links and the multicast forwarding cache, watch link events.

Theory of operation. Every request opens its own NETLINK_ROUTE socket, sends one dump request
and reads replies until NLMSG_DONE, so no state is shared between calls and a failed dump
leaves nothing behind. Replies are parsed straight out of one reusable 1 MiB receive buffer by
the pure functions `iter_messages`, `parse_link_message`, `parse_link_event` and
`parse_mfc_message`, which take the bytes of netlink messages and never touch a socket.

`LinkMonitor` is the one long-lived socket: non-blocking, subscribed to RTNLGRP_LINK, meant
for `loop.add_reader(monitor.fileno(), ...)`. Open it *before* `dump_links()` so that no
change falls between the dump and the first event.

Structures mirror <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h> and
<linux/mroute.h>; see shared/kernel-notes.md section 4 for what the kernel sends.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, TypeVar

__all__ = [
    "Link",
    "LinkEvent",
    "LinkMonitor",
    "MRule",
    "MfcEntry",
    "MrVif",
    "NetlinkError",
    "current_links",
    "dump_links",
    "dump_mfc",
    "dump_mrules",
    "dump_vifs",
    "error_of",
    "iter_messages",
    "mfc_request",
    "parse_attrs",
    "parse_link_event",
    "parse_link_message",
    "parse_mfc_message",
    "parse_rule_message",
    "parse_vif_tables",
    "table_exists",
]

# --- kernel ABI -------------------------------------------------------------------------------

# struct nlmsghdr: len, type, flags, seq, pid (<linux/netlink.h>)
NLMSGHDR = struct.Struct("=IHHII")
# struct ifinfomsg: family, pad, type, index, flags, change (<linux/rtnetlink.h>)
IFINFOMSG = struct.Struct("=BxHiII")
# struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
# struct rtattr: len, type
RTATTR = struct.Struct("=HH")
# struct rtnexthop: len, flags, hops, ifindex
RTNEXTHOP = struct.Struct("=HBBi")
# struct rta_mfc_stats: packets, bytes, wrong_if (<linux/mroute.h>)
RTA_MFC_STATS_STRUCT = struct.Struct("=QQQ")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_I32 = struct.Struct("=i")

assert NLMSGHDR.size == 16
assert IFINFOMSG.size == 16
assert RTMSG.size == 12
assert RTATTR.size == 4
assert RTNEXTHOP.size == 8
assert RTA_MFC_STATS_STRUCT.size == 24

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
# Flags on an NLMSG_ERROR: the echoed request is cut to its header / extack TLVs follow.
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

IFLA_IFNAME = 3
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1  # (inside IFLA_LINKINFO)
IFLA_AF_SPEC = 26
# Inside IFLA_AF_SPEC of an RTM_NEWLINK of family RTNL_FAMILY_IPMR (<linux/if_link.h>)
IPMRA_TABLE_ID = 1
IPMRA_TABLE_VIFS = 6
IPMRA_VIF = 1
IPMRA_VIFA_IFINDEX = 1
IPMRA_VIFA_VIF_ID = 2
IPMRA_VIFA_BYTES_IN = 4
IPMRA_VIFA_BYTES_OUT = 5
IPMRA_VIFA_PACKETS_IN = 6
IPMRA_VIFA_PACKETS_OUT = 7
IFF_UP = 0x1

RTA_DST = 1
RTA_SRC = 2
RTA_IIF = 3
RTA_MULTIPATH = 9
RTA_TABLE = 15
RTA_MFC_STATS = 17

RTNL_FAMILY_IPMR = 128
RTNL_FAMILY_IP6MR = 129
RTNLGRP_LINK = 1

# Attribute type bits that are flags, not part of the type (<linux/netlink.h>).
NLA_TYPE_MASK = ~(0x8000 | 0x4000) & 0xFFFF
NLMSGERR_ATTR_MSG = 1

# Not exported by Python's socket module.
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33

# Kernel dump datagrams are capped near 32 KiB, so 1 MiB never truncates and keeps the
# number of recv() calls for a 100k-entry dump in the hundreds.
RECV_BUFSIZE = 1 << 20
# Link storms (hundreds of veths at once) overrun the default ~200 KiB socket queue.
MONITOR_RCVBUF = 4 << 20
# A link dump restarts when interfaces change under it; give up after this many tries.
DUMP_ATTEMPTS = 5

_FAMILIES = {4: (RTNL_FAMILY_IPMR, socket.AF_INET, 4), 6: (RTNL_FAMILY_IP6MR, socket.AF_INET6, 16)}
_VERSION_OF_RTNL_FAMILY = {RTNL_FAMILY_IPMR: 4, RTNL_FAMILY_IP6MR: 6}

ReadableBuffer = bytes | bytearray | memoryview
# One netlink message as iter_messages yields it: (type, flags, seq, the whole message).
Message = tuple[int, int, int, memoryview]
RTNH_F_UNRESOLVED = 0x20  # rtm_flags of an entry still waiting in the unresolved queue
# rtm_protocol of an MFC entry: ipmr/ip6mr report MFC_STATIC entries (written through a socket
# that is not the table's mroute socket) as RTPROT_STATIC, the others as RTPROT_MROUTED.
RTPROT_STATIC = 4
_T = TypeVar("_T")
_seq = itertools.count(1)


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface; `up` is the administrative IFF_UP flag, not the carrier."""

    ifindex: int
    name: str
    up: bool


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """RTM_NEWLINK ("new": created *or changed*) or RTM_DELLINK ("del")."""

    kind: Literal["new", "del"]
    link: Link


@dataclass(frozen=True, slots=True)
class MfcEntry:
    """One multicast forwarding cache entry; interfaces are ifindexes, not VIF numbers."""

    family: int
    table: int
    source: str
    group: str
    iif: int | None
    oifs: dict[int, int]
    packets: int
    bytes: int
    wrong_if: int
    resolved: bool = True  # False for the kernel's unresolved queue (traffic without a route)
    static: bool = False  # MFC_STATIC: written by another socket; it outlives the table's owner


@dataclass(frozen=True, slots=True)
class MrVif:
    """One VIF of an IPv4 multicast routing table, as the VIF dump reports it."""

    table: int
    vifi: int
    ifindex: int
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int


class NetlinkError(OSError):
    """A netlink request failed; `errno` is the kernel's and `kind` names the request."""

    def __init__(self, err: int, kind: str, detail: str = "") -> None:
        message = f"{kind}: {os.strerror(err)}"
        if detail:
            message += f" ({detail})"
        super().__init__(err, message)
        self.kind = kind


# --- pure parsing ---------------------------------------------------------------------------


def _align(length: int) -> int:
    return (length + 3) & ~3


def iter_messages(data: ReadableBuffer) -> Iterator[Message]:
    """Split a datagram into netlink messages; raises ValueError on a malformed header."""
    view = memoryview(data)
    offset = 0
    while len(view) - offset >= NLMSGHDR.size:
        length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(view, offset)
        if length < NLMSGHDR.size or offset + length > len(view):
            raise ValueError(f"bad nlmsg_len {length} at offset {offset} of {len(view)}")
        yield kind, flags, seq, view[offset : offset + length]
        offset += _align(length)


def parse_attrs(data: ReadableBuffer, offset: int = 0) -> dict[int, memoryview]:
    """Map attribute type -> payload for the rtattrs from `offset` on; the last duplicate wins."""
    # Hot path of a 100k-entry dump (8 attributes per entry): hence the local names.
    view = memoryview(data)
    end = len(view)
    unpack = RTATTR.unpack_from
    attrs: dict[int, memoryview] = {}
    while end - offset >= 4:
        length, kind = unpack(view, offset)
        stop = offset + length
        if length < 4 or stop > end:
            raise ValueError(f"bad rta_len {length} at offset {offset} of {end}")
        attrs[kind & NLA_TYPE_MASK] = view[offset + 4 : stop]
        offset = (stop + 3) & ~3
    return attrs


def _message(data: ReadableBuffer, fixed: int) -> tuple[int, memoryview]:
    """Return (type, message cut to nlmsg_len) after checking it holds `fixed` payload bytes."""
    view = memoryview(data)
    if len(view) < NLMSGHDR.size:
        raise ValueError(f"netlink message of {len(view)} bytes is shorter than its header")
    length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(view)
    if length > len(view) or length < NLMSGHDR.size + fixed:
        raise ValueError(f"nlmsg_len {length} does not fit {len(view)} bytes")
    return kind, view[:length]


def _u32(attr: memoryview) -> int:
    if len(attr) < _U32.size:
        raise ValueError(f"u32 attribute of {len(attr)} bytes")
    value: int = _U32.unpack_from(attr)[0]
    return value


def parse_link_message(data: ReadableBuffer) -> Link | None:
    """Decode one RTM_NEWLINK/RTM_DELLINK message; None for any other message.

    Only ifi_family AF_UNSPEC describes the interface itself: the bridge also sends
    RTM_DELLINK with AF_BRIDGE when a port merely *leaves* a bridge.
    """
    kind, view = _message(data, 0)
    if kind not in (RTM_NEWLINK, RTM_DELLINK):
        return None
    if len(view) < NLMSGHDR.size + IFINFOMSG.size:
        raise ValueError("link message shorter than struct ifinfomsg")
    family, _type, ifindex, flags, _change = IFINFOMSG.unpack_from(view, NLMSGHDR.size)
    if family != socket.AF_UNSPEC:
        return None
    name = parse_attrs(view, NLMSGHDR.size + IFINFOMSG.size).get(IFLA_IFNAME)
    if name is None:
        raise ValueError(f"link message for ifindex {ifindex} without IFLA_IFNAME")
    # os.fsdecode like socket.if_nameindex(): names are bytes and need not be UTF-8.
    return Link(ifindex, os.fsdecode(bytes(name).split(b"\0", 1)[0]), bool(flags & IFF_UP))


def parse_link_kind(data: ReadableBuffer) -> tuple[int, str, str, int] | None:
    """(ifindex, name, kind, master ifindex) of an RTM_NEWLINK of AF_UNSPEC: the kind from
    IFLA_LINKINFO's IFLA_INFO_KIND ("vrf", "bridge", "veth"; "" if none), the master 0 if
    none. None for any other message."""
    link = parse_link_message(data)
    if link is None:
        return None
    _, view = _message(data, 0)
    attrs = parse_attrs(view, NLMSGHDR.size + IFINFOMSG.size)
    kind = ""
    info = attrs.get(IFLA_LINKINFO)
    if info is not None:
        raw = parse_attrs(info).get(IFLA_INFO_KIND)
        kind = "" if raw is None else bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace")
    master = attrs.get(IFLA_MASTER)
    return link.ifindex, link.name, kind, 0 if master is None else _U32.unpack(master)[0]


def vrf_members(links: Iterable[tuple[int, str, str, int]]) -> frozenset[str]:
    """The names of the VRF devices and of the interfaces enslaved to one, of links as
    parse_link_kind gives them: what an `l3mdev` multicast rule matches."""
    links = list(links)
    vrfs = {ifindex for ifindex, _, kind, _ in links if kind == "vrf"}
    return frozenset(name for i, name, _, master in links if i in vrfs or master in vrfs)


def dump_link_kinds() -> list[tuple[int, str, str, int]]:
    """parse_link_kind of every interface of this network namespace."""
    request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _dump("dump links", RTM_GETLINK, request, parse_link_kind)


def dump_vrf_members() -> frozenset[str]:
    """vrf_members of this network namespace's interfaces."""
    return vrf_members(dump_link_kinds())


def parse_link_event(data: ReadableBuffer) -> LinkEvent | None:
    """Decode a link notification into a LinkEvent; None for messages that are not one."""
    link = parse_link_message(data)
    if link is None:
        return None
    kind = NLMSGHDR.unpack_from(data)[1]
    return LinkEvent("new" if kind == RTM_NEWLINK else "del", link)


def _address(attrs: dict[int, memoryview], key: int, family: int, size: int) -> str:
    raw = attrs.get(key)
    if raw is None or len(raw) != size:
        raise ValueError(f"MFC attribute {key} missing or not {size} bytes")
    return socket.inet_ntop(family, raw)


def _parse_oifs(multipath: memoryview) -> dict[int, int]:
    oifs: dict[int, int] = {}
    offset = 0
    while len(multipath) - offset >= RTNEXTHOP.size:
        length, _flags, hops, ifindex = RTNEXTHOP.unpack_from(multipath, offset)
        if length < RTNEXTHOP.size or offset + length > len(multipath):
            raise ValueError(f"bad rtnh_len {length} at offset {offset}")
        # Two VIFs may share one netdev; keep the lower threshold, the one that lets more out.
        oifs[ifindex] = min(hops, oifs.get(ifindex, hops))
        offset += _align(length)
    return oifs


def parse_mfc_message(data: ReadableBuffer) -> MfcEntry | None:
    """Decode one RTM_NEWROUTE/RTM_DELROUTE of family 128/129; None for any other message.

    Unresolved entries (waiting for the daemon) carry no RTA_IIF, so `iif` is None; an
    entry whose parent is not a VIF looks the same.
    """
    kind, view = _message(data, 0)
    if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
        return None
    if len(view) < NLMSGHDR.size + RTMSG.size:
        raise ValueError("route message shorter than struct rtmsg")
    rtm_family, _dl, _sl, _tos, rtm_table, proto, _scope, _type, flags = RTMSG.unpack_from(
        view, NLMSGHDR.size
    )
    version = _VERSION_OF_RTNL_FAMILY.get(rtm_family)
    if version is None:
        return None
    _, family, size = _FAMILIES[version]
    attrs = parse_attrs(view, NLMSGHDR.size + RTMSG.size)
    iif = attrs.get(RTA_IIF)
    multipath = attrs.get(RTA_MULTIPATH)
    stats = attrs.get(RTA_MFC_STATS)
    packets = octets = wrong_if = 0
    if stats is not None:
        if len(stats) < RTA_MFC_STATS_STRUCT.size:
            raise ValueError(f"RTA_MFC_STATS of {len(stats)} bytes")
        packets, octets, wrong_if = RTA_MFC_STATS_STRUCT.unpack_from(stats)
    table = attrs.get(RTA_TABLE)
    return MfcEntry(
        family=version,
        # rtm_table is a u8 (252 = "see RTA_TABLE" for larger ids); RTA_TABLE is the real id.
        table=rtm_table if table is None else _u32(table),
        source=_address(attrs, RTA_SRC, family, size),
        group=_address(attrs, RTA_DST, family, size),
        iif=None if iif is None else _u32(iif),
        oifs={} if multipath is None else _parse_oifs(multipath),
        packets=packets,
        bytes=octets,
        wrong_if=wrong_if,
        resolved=not flags & RTNH_F_UNRESOLVED,
        static=proto == RTPROT_STATIC,
    )


def _iter_attrs(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """Each (type, payload) of a run of rtattrs, duplicates included (nested lists)."""
    offset, end = 0, len(data)
    while end - offset >= RTATTR.size:
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > end:
            raise ValueError(f"bad rta_len {length} at offset {offset} of {end}")
        yield kind & NLA_TYPE_MASK, data[offset + RTATTR.size : offset + length]
        offset = _align(offset + length)


def _u64(attrs: dict[int, memoryview], key: int) -> int:
    raw = attrs.get(key)
    if raw is None or len(raw) < _U64.size:
        raise ValueError(f"VIF attribute {key} missing or short")
    value: int = _U64.unpack_from(raw)[0]
    return value


def parse_vif_tables(data: ReadableBuffer) -> list[MrVif] | None:
    """Decode one RTM_NEWLINK of family RTNL_FAMILY_IPMR (one per IPv4 table): its VIFs;
    None for any other message."""
    kind, view = _message(data, 0)
    if kind != RTM_NEWLINK or len(view) < NLMSGHDR.size + IFINFOMSG.size:
        return None
    if IFINFOMSG.unpack_from(view, NLMSGHDR.size)[0] != RTNL_FAMILY_IPMR:
        return None
    spec = parse_attrs(view, NLMSGHDR.size + IFINFOMSG.size).get(IFLA_AF_SPEC)
    if spec is None:
        return None
    table_attrs = parse_attrs(spec)
    table = _u32(table_attrs[IPMRA_TABLE_ID])
    vifs = []
    for vif_kind, nested in _iter_attrs(table_attrs.get(IPMRA_TABLE_VIFS, memoryview(b""))):
        if vif_kind != IPMRA_VIF:
            continue
        a = parse_attrs(nested)
        vifs.append(
            MrVif(
                table,
                _u32(a[IPMRA_VIFA_VIF_ID]),
                _u32(a[IPMRA_VIFA_IFINDEX]),
                _u64(a, IPMRA_VIFA_BYTES_IN),
                _u64(a, IPMRA_VIFA_BYTES_OUT),
                _u64(a, IPMRA_VIFA_PACKETS_IN),
                _u64(a, IPMRA_VIFA_PACKETS_OUT),
            )
        )
    return vifs


def _extack_message(view: memoryview, offset: int) -> str:
    """The kernel's NLMSGERR_ATTR_MSG text from the TLVs at `offset`, or ""."""
    try:
        msg = parse_attrs(view, offset).get(NLMSGERR_ATTR_MSG)
    except ValueError:
        return ""
    return "" if msg is None else bytes(msg).split(b"\0", 1)[0].decode(errors="replace")


def error_of(message: memoryview) -> tuple[int, str]:
    """(errno, kernel's explanation) of an NLMSG_ERROR or NLMSG_DONE; errno 0 means success."""
    kind, view = _message(message, 0)
    flags = NLMSGHDR.unpack_from(view)[2]
    start = NLMSGHDR.size
    if len(view) < start + _I32.size:
        return 0, ""  # an NLMSG_DONE without a status word
    err = -_I32.unpack_from(view, start)[0]
    if not flags & NLM_F_ACK_TLVS:
        return err, ""
    tlvs = start + _I32.size
    if kind == NLMSG_ERROR:
        # NLMSG_ERROR echoes the request (only its header when capped) before the TLVs.
        echoed = NLMSGHDR.unpack_from(view, tlvs)[0] if len(view) >= tlvs + NLMSGHDR.size else 0
        tlvs += NLMSGHDR.size if flags & NLM_F_CAPPED else _align(echoed)
    return err, _extack_message(view, tlvs)


# --- sockets --------------------------------------------------------------------------------


def _open_socket(kind: str) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError as exc:
        raise NetlinkError(exc.errno or errno.EIO, kind, "socket") from exc
    for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
        # Nice to have: shorter errors with the kernel's reason, and the kernel-side table
        # filter (which needs strict checking); old kernels lack them, so failures are fine.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_NETLINK, option, 1)
    return sock


def _recv(sock: socket.socket, buf: bytearray) -> memoryview | None:
    """One datagram from the kernel, None if another process sent it; EMSGSIZE if cut short."""
    nbytes, (pid, _groups) = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
    # Only the kernel (port id 0) speaks for the kernel: a root process could send to us.
    if pid != 0:
        return None
    # MSG_TRUNC makes the kernel report the full size, so a cut datagram is detectable.
    if nbytes > len(buf):
        raise OSError(errno.EMSGSIZE, f"netlink datagram of {nbytes} bytes truncated")
    return memoryview(buf)[:nbytes]


def _dump_once(
    kind: str, msg_type: int, request: bytes, parse: Callable[[memoryview], _T | None]
) -> tuple[list[_T], bool]:
    """Run one dump; return (items, interrupted) where interrupted means retry."""
    seq = next(_seq) & 0xFFFFFFFF
    flags = NLM_F_REQUEST | NLM_F_DUMP
    header = NLMSGHDR.pack(NLMSGHDR.size + len(request), msg_type, flags, seq, 0)
    buf = bytearray(RECV_BUFSIZE)
    items: list[_T] = []
    interrupted = False
    with _open_socket(kind) as sock:
        try:
            sock.send(header + request)
            for reply_type, reply_flags, message in _replies(sock, buf, seq):
                interrupted |= bool(reply_flags & NLM_F_DUMP_INTR)
                if reply_type in (NLMSG_DONE, NLMSG_ERROR):
                    err, detail = error_of(message)
                    if err:
                        raise NetlinkError(err, kind, detail)
                    if reply_type == NLMSG_DONE:
                        return items, interrupted
                    continue
                item = parse(message)
                if item is not None:
                    items.append(item)
            return items, interrupted  # (the replies never end: only for the type checker)
        except NetlinkError:
            raise
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, kind) from exc


def _replies(
    sock: socket.socket, buf: bytearray, seq: int
) -> Iterator[tuple[int, int, memoryview]]:
    """(type, flags, message) of each message the kernel sends in answer to request `seq`."""
    while True:
        view = _recv(sock, buf)
        if view is None:
            continue
        for reply_type, reply_flags, reply_seq, message in iter_messages(view):
            if reply_seq == seq:  # else left over from an earlier request; not ours
                yield reply_type, reply_flags, message


def _dump(
    kind: str, msg_type: int, request: bytes, parse: Callable[[memoryview], _T | None]
) -> list[_T]:
    # The kernel flags NLM_F_DUMP_INTR when the set changed while it was being walked (link
    # dumps check this); such a result may miss or repeat entries, so walk again.
    for _attempt in range(DUMP_ATTEMPTS):
        items, interrupted = _dump_once(kind, msg_type, request, parse)
        if not interrupted:
            return items
    raise NetlinkError(errno.EAGAIN, kind, f"dump interrupted {DUMP_ATTEMPTS} times")


def dump_links() -> list[Link]:
    """All interfaces of this network namespace."""
    # A full ifinfomsg, not the legacy rtgenmsg: strict checking rejects the short form.
    request = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _dump("dump links", RTM_GETLINK, request, parse_link_message)


def dump_vifs(table: int) -> list[MrVif]:
    """The VIFs of one IPv4 multicast routing table (any table, unlike /proc); the kernel has
    no such dump for IPv6."""
    request = IFINFOMSG.pack(RTNL_FAMILY_IPMR, 0, 0, 0, 0)
    tables = _dump("dump vifs", RTM_GETLINK, request, parse_vif_tables)
    return [vif for vifs in tables for vif in vifs if vif.table == table]


def current_links() -> dict[str, int]:
    """Every interface's name -> ifindex."""
    return {link.name: link.ifindex for link in dump_links()}


def mfc_request(family: int, table: int | None = None) -> bytes:
    """The rtmsg (+ RTA_TABLE) payload of an MFC dump request."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    request = RTMSG.pack(_FAMILIES[family][0], 0, 0, 0, 0, 0, 0, 0, 0)
    if table is not None:
        if not 0 < table <= 0xFFFFFFFF:
            raise ValueError(f"table must be 1..2**32-1, not {table!r}")
        request += RTATTR.pack(RTATTR.size + _U32.size, RTA_TABLE) + _U32.pack(table)
    return request


def dump_mfc(family: int, table: int | None = None) -> list[MfcEntry]:
    """The MFC of one family (4 or 6), all tables or only `table`; a missing table is empty."""
    request = mfc_request(family, table)
    try:
        entries = _dump("dump mfc", RTM_GETROUTE, request, parse_mfc_message)
    except NetlinkError as exc:
        # With a table filter the kernel answers ENOENT for a table that was never created.
        if table is not None and exc.errno == errno.ENOENT:
            return []
        raise
    # Keep the filter here too: without strict checking the kernel ignores RTA_TABLE.
    return [e for e in entries if table is None or e.table == table]


class LinkMonitor:
    """Non-blocking socket subscribed to RTNLGRP_LINK; see read_events()."""

    def __init__(self, *, rcvbuf: int = MONITOR_RCVBUF) -> None:
        self.overrun = False
        self._buf = bytearray(RECV_BUFSIZE)
        self._sock = _open_socket("link monitor")
        try:
            self._set_rcvbuf(rcvbuf)
            self._sock.bind((0, 1 << (RTNLGRP_LINK - 1)))
            self._sock.setblocking(False)
        except OSError as exc:
            self._sock.close()
            raise NetlinkError(exc.errno or errno.EIO, "link monitor") from exc

    def _set_rcvbuf(self, size: int) -> None:
        # SO_RCVBUFFORCE (CAP_NET_ADMIN) may exceed net.core.rmem_max; SO_RCVBUF is capped.
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_events(self) -> list[LinkEvent]:
        """Drain every queued event without blocking.

        `overrun` tells whether *this* call found the queue overrun (ENOBUFS) or a datagram
        cut short: events were lost, so resync with dump_links(). Draining continues after
        an overrun, since the events still queued are valid and the socket keeps working.
        """
        self.overrun = False
        events: list[LinkEvent] = []
        while True:
            try:
                view = _recv(self._sock, self._buf)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EMSGSIZE):
                    raise NetlinkError(exc.errno or errno.EIO, "link monitor") from exc
                self.overrun = True
                continue
            if view is None:
                continue
            for _type, _flags, _seq, message in iter_messages(view):
                event = parse_link_event(message)
                if event is not None:
                    events.append(event)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LinkMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- unicast route lookup (`ip route get`), read-only, for mfcctl diagnose --------------------

RTA_OIF = 4


def route_get_request(family: int, address: str) -> bytes:
    """The rtmsg + RTA_DST payload of an RTM_GETROUTE for one address (4 or 6)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    raw = socket.inet_pton(af, address)
    request = RTMSG.pack(af, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0)
    return request + RTATTR.pack(RTATTR.size + len(raw), RTA_DST) + raw


def parse_route_oif(data: ReadableBuffer) -> int | None:
    """The RTA_OIF (ifindex) of an RTM_NEWROUTE answer, None if it names none."""
    kind, view = _message(data, RTMSG.size)
    if kind != RTM_NEWROUTE:
        return None
    oif = parse_attrs(view, NLMSGHDR.size + RTMSG.size).get(RTA_OIF)
    return None if oif is None else _u32(oif)


def route_get(family: int, address: str) -> int | None:
    """The ifindex the kernel's unicast route to `address` leaves by (as `ip route get`);
    None when there is no route (unreachable). Reads only."""
    seq = next(_seq) & 0xFFFFFFFF
    request = route_get_request(family, address)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(request), RTM_GETROUTE, NLM_F_REQUEST, seq, 0)
    buf = bytearray(RECV_BUFSIZE // 16)
    with _open_socket("route lookup") as sock:
        try:
            sock.send(header + request)
            for reply_type, _flags, message in _replies(sock, buf, seq):
                if reply_type == NLMSG_ERROR:
                    err, detail = error_of(message)
                    if err in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES):
                        return None  # no route, or an unreachable/prohibit one
                    raise NetlinkError(err or errno.EIO, "route lookup", detail)
                return parse_route_oif(message)
            return None  # (the replies never end: only for the type checker)
        except NetlinkError:
            raise
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, "route lookup") from exc


# --- multicast routing rules (`ip mrule`), read-only, for mfcctl diagnose ---------------------

RTM_NEWRULE = 32
RTM_GETRULE = 34
# struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
# (<linux/fib_rules.h>): the same layout as struct rtmsg.
FIB_RULE_HDR = RTMSG
FIB_RULE_INVERT = 0x2
FIB_RULE_IIF_DETACHED = 0x8  # its iif does not exist (now): it matches nothing
_UID_RANGE = struct.Struct("=II")  # struct fib_rule_uid_range: start, end
FRA_IIFNAME = 3
FRA_GOTO = 4
FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TUN_ID = 12
FRA_TABLE = 15
FRA_FWMASK = 16
FRA_OIFNAME = 17
FRA_L3MDEV = 19
FRA_UID_RANGE = 20
# frh.action
FR_ACT_TO_TBL = 1
FR_ACT_GOTO = 2
FR_ACT_NOP = 3
FR_ACT_BLACKHOLE = 6
FR_ACT_UNREACHABLE = 7
FR_ACT_PROHIBIT = 8
_ACTIONS = {
    FR_ACT_TO_TBL: "lookup",
    FR_ACT_GOTO: "goto",
    FR_ACT_NOP: "nop",
    FR_ACT_BLACKHOLE: "blackhole",
    FR_ACT_UNREACHABLE: "unreachable",
    FR_ACT_PROHIBIT: "prohibit",
}


@dataclass(frozen=True, slots=True)
class MRule:
    """One multicast routing rule (`ip mrule` / `ip -6 mrule`), as the kernel dumps it.

    `action` is "lookup", "goto", "nop", "blackhole", "unreachable", "prohibit" (or
    "action N"); `table` is a lookup's table, `goto` a goto's target priority.

    What a rule matches, besides its iif (fib_rule_match() with the flow ipmr/ip6mr build
    for an arriving packet: its iif, no oif, skb->mark, uid 0, no tunnel id):
    - `unmatched`: `not` aside, it matches no arriving packet: its iif is detached (gone),
      or it also names an oif (an arriving packet has none), a tunnel id, or a uid range
      that leaves out uid 0;
    - `fwmark` (mark, mask): it matches only packets whose firewall mark (set by
      nftables/iptables or tc on the way in) has those bits; None when the mask is 0;
    - `l3mdev`: it matches only packets arriving on an interface in a VRF, and looks up
      that VRF's table (`lookup [l3mdev-table]`).
    The multicast rules ignore the rest (from/to, tos, ipproto, ports: ipmr_rule_match()
    accepts every packet), so they are not kept."""

    priority: int
    action: str
    table: int = 0
    goto: int | None = None
    iif: str | None = None  # None: any interface
    invert: bool = False  # `not`
    unmatched: bool = False
    fwmark: tuple[int, int] | None = None
    l3mdev: bool = False


def rule_request(family: int) -> bytes:
    """The fib_rule_hdr payload of an RTM_GETRULE dump of one family's multicast rules."""
    if family not in _FAMILIES:
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    return FIB_RULE_HDR.pack(_FAMILIES[family][0], 0, 0, 0, 0, 0, 0, 0, 0)


def _name(attr: memoryview) -> str:
    return os.fsdecode(bytes(attr).split(b"\0", 1)[0])


def parse_rule_message(data: ReadableBuffer, family: int) -> MRule | None:
    """Decode one RTM_NEWRULE of the multicast family of `family` (4: RTNL_FAMILY_IPMR,
    6: RTNL_FAMILY_IP6MR); None for any other message."""
    kind, view = _message(data, 0)
    if kind != RTM_NEWRULE:
        return None
    if len(view) < NLMSGHDR.size + FIB_RULE_HDR.size:
        raise ValueError("rule message shorter than struct fib_rule_hdr")
    rule_family, _dl, _sl, _tos, table, _r1, _r2, action, flags = FIB_RULE_HDR.unpack_from(
        view, NLMSGHDR.size
    )
    if rule_family != _FAMILIES[family][0]:
        return None
    attrs = parse_attrs(view, NLMSGHDR.size + FIB_RULE_HDR.size)
    # A rule with a uid range matches an arriving packet's uid (0) unless the range leaves
    # it out; the kernel reports the full range on every rule of a recent kernel.
    uids = attrs.get(FRA_UID_RANGE)
    narrow_uids = (
        uids is not None and len(uids) >= 8 and _UID_RANGE.unpack_from(uids) != (0, 0xFFFFFFFF)
    )
    unmatched = (
        bool(flags & FIB_RULE_IIF_DETACHED)
        or FRA_OIFNAME in attrs
        or (FRA_TUN_ID in attrs and any(attrs[FRA_TUN_ID]))
        or narrow_uids
    )
    # The kernel sends FRA_FWMARK only when the mark is not 0 and FRA_FWMASK when either is
    # not: `fwmark 1` comes with the mask 0xffffffff, `fwmark 0/0xff` with the mask alone.
    mark = 0 if FRA_FWMARK not in attrs else _u32(attrs[FRA_FWMARK])
    mask = attrs.get(FRA_FWMASK)
    fwmark = (mark, (0xFFFFFFFF if mark else 0) if mask is None else _u32(mask))
    iif = attrs.get(FRA_IIFNAME)
    goto = attrs.get(FRA_GOTO)
    priority = attrs.get(FRA_PRIORITY)
    table_attr = attrs.get(FRA_TABLE)
    return MRule(
        priority=0 if priority is None else _u32(priority),
        action=_ACTIONS.get(action, f"action {action}"),
        # frh.table is a u8; FRA_TABLE carries the real id.
        table=table if table_attr is None else _u32(table_attr),
        goto=None if goto is None else _u32(goto),
        iif=None if iif is None else _name(iif),
        invert=bool(flags & FIB_RULE_INVERT),
        unmatched=unmatched,
        fwmark=fwmark if fwmark[1] else None,  # mask 0: every mark matches
        l3mdev=FRA_L3MDEV in attrs and any(attrs[FRA_L3MDEV]),
    )


def dump_mrules(family: int) -> list[MRule]:
    """The multicast routing rules of one family (4 or 6), in the kernel's order. Reads only."""
    request = rule_request(family)
    return _dump(
        "dump mrules", RTM_GETRULE, request, lambda message: parse_rule_message(message, family)
    )


def table_exists(family: int, table: int) -> bool:
    """Whether the kernel has multicast routing table `table` (1..2**32-1) of `family`.

    Any MRT_TABLE setsockopt naming a table creates it (no MRT_INIT needed), and it stays
    until the namespace goes; a rule's lookup of a table that does not exist is passed
    over (ipmr_rule_action(): -EAGAIN). Asks for a dump of that table alone and reads only
    the first answer, so a table of any size costs one reply: ENOENT means no such table.
    A kernel without strict checking ignores the filter, and then every table exists.
    Reads only."""
    seq = next(_seq) & 0xFFFFFFFF
    request = mfc_request(family, table)
    header = NLMSGHDR.pack(
        NLMSGHDR.size + len(request), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    with _open_socket("table lookup") as sock:
        try:
            sock.send(header + request)
            for reply_type, _flags, message in _replies(sock, bytearray(RECV_BUFSIZE), seq):
                if reply_type not in (NLMSG_DONE, NLMSG_ERROR):
                    return True  # an entry of the table
                err, detail = error_of(message)
                if err == errno.ENOENT:
                    return False
                if err:
                    raise NetlinkError(err, "table lookup", detail)
                return True  # an empty table
            return True  # (the replies never end: only for the type checker)
        except NetlinkError:
            raise
        except OSError as exc:
            raise NetlinkError(exc.errno or errno.EIO, "table lookup") from exc
