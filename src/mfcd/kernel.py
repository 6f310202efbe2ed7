"""The kernel's multicast routing API (linux/mroute.h, linux/mroute6.h); the only code using it.

The one exception is kernel_writer.py, the process it hands long runs of a restore to
(see Writer).

`Kernel` is the real data plane (see dataplane.py for the interface it implements).
Per (family, table) one raw socket (IGMP for IPv4, ICMPv6 for IPv6) does MRT_INIT and
then owns the table: VIFs and MFC entries added through it live exactly as long as
the socket, so a crash or exit never leaves stale routes behind.  The daemon
re-applies its saved state at start.  Under systemd each socket is also kept in the
unit's file descriptor store (FdKeeper, named by fdname) right after MRT_INIT: then a
restart does not flush the table, the next mfcd adopts the socket it is passed
(Kernel's `passed`) and repairs the table's content, and nothing calls MRT_DONE on a
stored socket but close_table (docs/operations.md, "Restarts without a forwarding gap").
The kernel queues upcalls (and on IPv4 IGMP packets) on the socket; `Kernel.events()`
must be called whenever it is readable, as a full receive buffer silently drops both
the upcall and the unresolved entry.

Packing the kernel's structures and parsing what it sends are pure functions
(pack_*, parse_*), unit-tested in tests/unit/test_kernel.py; the layouts of the
structures are declared in uapi.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, itemgetter, length_hint
from queue import SimpleQueue
from typing import Any, NamedTuple, NoReturn, Protocol

from mfcd import kernel_writer, netlink
from mfcd.dataplane import (
    LATER_MIN,
    Counters,
    Events,
    LinkChange,
    Observation,
    ObservedEntry,
    ObservedVif,
    SgCounters,
    Upcall,
    UpcallKind,
    VifCounters,
    undo,
)
from mfcd.errors import KernelError
from mfcd.model import (
    DEFAULT_TABLE,
    MAXVIFS,
    AddMfc,
    AddMfcRun,
    AddVif,
    DelMfc,
    DelMfcRun,
    DelVif,
    KernelOp,
    Oifs,
    RouteKey,
)
from mfcd.protocol import family_text
from mfcd.uapi import (
    IF_SET,
    IGMPMSG,
    MF6CCTL,
    MFCCTL,
    MIF6CTL,
    MRT6MSG,
    SIOC_SG_REQ,
    SIOC_SG_REQ6,
    SIOC_VIF_REQ,
    SOCKADDR_IN6,
    VIFCTL,
)

log = logging.getLogger("mfcd")

# Socket option numbers, shared by IPv4 (level IPPROTO_IP) and IPv6 (level IPPROTO_IPV6).
MRT_INIT = 200
MRT_DONE = 201
MRT_ADD_VIF = 202
MRT_DEL_VIF = 203
MRT_ADD_MFC = 204
MRT_DEL_MFC = 205
MRT_VERSION = 206
MRT_ASSERT = 207
MRT_TABLE = 209
SO_RCVBUFFORCE = 33  # socket.SO_RCVBUFFORCE where Python defines it
# Receive buffer of each table's socket: the kernel drops an upcall (and its unresolved
# entry, with the packets queued on it) when the buffer is full. An upcall takes about
# 832 bytes of buffer (docs/kernel.md), so 4 MiB (which the kernel doubles for its
# bookkeeping) holds some 10,000 upcalls read late; the default (208 KiB) 256.
UPCALL_BUFFER = 4 * 1024 * 1024

VIFF_USE_IFINDEX = 0x8  # vifctl: lcl_ifindex holds an ifindex, not an address
ICMP6_FILTER = 1  # level IPPROTO_ICMPV6
SIOCGETVIFCNT = 0x89E0  # also SIOCGETMIFCNT_IN6
SIOCGETSGCNT = 0x89E1  # also SIOCGETSGCNT_IN6

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_pton = socket.inet_pton

_OPNAMES = {
    MRT_INIT: "MRT_INIT",
    MRT_DONE: "MRT_DONE",
    MRT_ADD_VIF: "MRT_ADD_VIF",
    MRT_DEL_VIF: "MRT_DEL_VIF",
    MRT_ADD_MFC: "MRT_ADD_MFC",
    MRT_DEL_MFC: "MRT_DEL_MFC",
    MRT_TABLE: "MRT_TABLE",
    MRT_ASSERT: "MRT_ASSERT",
    SIOCGETSGCNT: "SIOCGETSGCNT",
}


def _explain(family: int, optname: int, err: int, table: int | None = None) -> str:
    """A one-line message for a refused socket option, with what to do about it (`table`:
    the table of the socket, None or the default for the family's default table)."""
    fam = family_text(family)
    op = _OPNAMES.get(optname, str(optname))
    other = table is not None and table != DEFAULT_TABLE[family]
    if optname == MRT_INIT and err == errno.EADDRINUSE:
        which = (
            f"{fam} multicast routing table {table}"
            if other
            else f"the {fam} multicast routing table"
        )
        return (
            f"another multicast router already owns {which}"
            " (smcroute, pimd, FRR pimd, igmpproxy, mrouted or a second mfcd): stop it first"
            + ("" if not other else " or use another table")
        )
    if optname == MRT_TABLE and err in (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL):
        option = f"CONFIG_IP{'V6' if family == 6 else ''}_MROUTE_MULTIPLE_TABLES"
        return (
            f"this kernel has only the default {fam} multicast routing table ({option} is"
            f" off): table {table} cannot be used; use the default table"
        )
    if err in (errno.EPERM, errno.EACCES):
        op = op if optname else "a raw socket"
        return f"{op} ({fam}) not permitted: mfcd needs CAP_NET_ADMIN and CAP_NET_RAW (run as root)"
    if optname == 0 and err == errno.EAFNOSUPPORT:
        return f"{fam} is turned off in this kernel (ipv6.disable=1?): set ipv{family} = false"
    if optname == 0:
        return f"cannot open a raw {fam} socket: {os.strerror(err)} (errno {err})"
    if optname == MRT_INIT and err in (errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EAFNOSUPPORT):
        return (
            f"this kernel has no {fam} multicast routing"
            f" (CONFIG_IP{'V6' if family == 6 else ''}_MROUTE); disable {fam} in the config"
        )
    return f"{op} ({fam}) failed: {os.strerror(err)} (errno {err})"


# --- pure packing and parsing (unit-tested in tests/unit/test_kernel.py) ----------------------

# IGMPMSG_NOCACHE/WRONGVIF/WHOLEPKT/WRVIFWHOLE (mroute.h); MRT6MSG_NOCACHE/WRONGMIF/WHOLEPKT
# (mroute6.h, which has no WRMIFWHOLE). WRVIFWHOLE is a WRONGVIF that carries the packet.
_UPCALL_KINDS: dict[int, dict[int, UpcallKind]] = {
    4: {1: "nocache", 2: "wrongvif", 3: "wholepkt", 4: "wrongvif"},
    6: {1: "nocache", 2: "wrongvif", 3: "wholepkt"},
}


def pack_vifctl(vifi: int, ifindex: int, threshold: int) -> bytes:
    """An IPv4 vifctl naming its device by ifindex (VIFF_USE_IFINDEX)."""
    return VIFCTL.pack(vifi, VIFF_USE_IFINDEX, threshold, 0, ifindex, b"\0" * 4)


def pack_mif6ctl(mifi: int, ifindex: int, threshold: int) -> bytes:
    """An IPv6 mif6ctl; its pifi (the ifindex) is 16 bits wide."""
    if ifindex > 0xFFFF:
        raise KernelError(
            f"IPv6 cannot route through interface index {ifindex}: the kernel's mif6ctl"
            " holds at most 65535 (re-create the interface to get a lower index)",
            "MRT6_ADD_MIF",
            0,
        )
    return MIF6CTL.pack(mifi, 0, threshold, ifindex, 0)


def pack_ttls(oifs: Oifs) -> bytes:
    """mfcctl.mfcc_ttls: each oif's threshold at its VIF index, 0 (no forwarding) elsewhere."""
    array = bytearray(32)
    for vifi, ttl in oifs:
        array[vifi] = ttl
    return bytes(array)


def pack_mfcctl(source: str, group: str, parent: int, ttls: bytes) -> bytes:
    return MFCCTL.pack(_pton(_AF_INET, source), _pton(_AF_INET, group), parent, ttls, 0, 0, 0, 0)


def pack_mf6cctl(source: str, group: str, parent: int, oifs: Oifs) -> bytes:
    """An mf6cctl: IPv6 has no per-entry thresholds, a set bit in the if_set means forward."""
    words = [0] * 8
    for vifi, _ttl in oifs:
        words[vifi >> 5] |= 1 << (vifi & 31)
    return MF6CCTL.pack(_sin6(source), _sin6(group), parent, IF_SET.pack(*words))


def mfc_layout(family: int, parent: int, ttls_or_oifs: bytes | Oifs) -> tuple[bytes, bytes, bytes]:
    """The parts of an MFC entry's structure around its two addresses, packed once for a run
    of routes sharing the entry: head + packed source + mid + packed group + tail is
    pack_mfcctl (IPv4, given its ttls) or pack_mf6cctl (IPv6, given its oifs)."""
    if family == 4:
        assert isinstance(ttls_or_oifs, bytes)
        return b"", b"", pack_mfcctl("0.0.0.0", "0.0.0.0", parent, ttls_or_oifs)[8:]
    assert isinstance(ttls_or_oifs, tuple)
    whole = pack_mf6cctl("::", "::", parent, ttls_or_oifs)
    # sockaddr_in6: family, port, flowinfo (8 bytes), the address (16), scope id (4)
    return whole[:8], whole[24:36], whole[52:]


MFC_RUN_CHUNK = 4096  # routes a run packs at once (a few hundred KiB of structures)
_SOURCE, _GROUP = itemgetter(1), itemgetter(2)


def mfc_structs(
    family: int, keys: Sequence[RouteKey], layout: tuple[bytes, bytes, bytes]
) -> list[bytes]:
    """The MFC structure of each key's (S,G) on one entry (`layout`, from mfc_layout): head +
    packed source + mid + packed group + tail, packed in a few passes at C speed."""
    head, mid, tail = layout
    af, size = (_AF_INET, 4) if family == 4 else (_AF_INET6, 16)
    pack = struct.Struct(f"={len(head)}s{size}s{len(mid)}s{size}s{len(tail)}s").pack
    sources = map(_pton, repeat(af), map(_SOURCE, keys))
    groups = map(_pton, repeat(af), map(_GROUP, keys))
    return list(map(pack, repeat(head), sources, repeat(mid), groups, repeat(tail)))


def pack_sg_req(family: int, source: str, group: str) -> bytes:
    """The SIOCGETSGCNT request (sioc_sg_req / sioc_sg_req6) for one (S,G)."""
    if family == 4:
        return SIOC_SG_REQ.pack(_pton(_AF_INET, source), _pton(_AF_INET, group), 0, 0, 0)
    return SIOC_SG_REQ6.pack(_sin6(source), _sin6(group), 0, 0, 0)


def parse_sg_req(family: int, data: bytes | bytearray) -> SgCounters:
    layout = SIOC_SG_REQ if family == 4 else SIOC_SG_REQ6
    _, _, packets, nbytes, wrong_if = layout.unpack(data)
    return SgCounters(packets, nbytes, wrong_if)


def pack_vif_req(vifi: int) -> bytes:
    """The SIOCGETVIFCNT request (sioc_vif_req; sioc_mif_req6 has the same layout)."""
    return SIOC_VIF_REQ.pack(vifi, 0, 0, 0, 0)


def parse_vif_req(data: bytes | bytearray) -> VifCounters:
    _, icount, ocount, ibytes, obytes = SIOC_VIF_REQ.unpack(data)
    return VifCounters(icount, ocount, ibytes, obytes)


def parse_upcall(family: int, table: int, data: bytes | bytearray | memoryview) -> Upcall | None:
    """The upcall in a datagram read from a table's mroute socket; None for anything else
    (IGMP packets, which share the IPv4 socket, and unknown message types).

    IPv6: only the first 40 bytes (struct mrt6msg) are read. The kernel sends more, which it
    does not initialise (stale memory of other processes): never parse or log them.
    """
    if family == 4:
        if len(data) < IGMPMSG.size:
            return None
        kind, mbz, vif, vif_hi, src, dst = IGMPMSG.unpack_from(data)
        if mbz != 0:  # an IP header's protocol byte: a real IGMP packet, not an upcall
            return None
        vif |= vif_hi << 8
        source, group = socket.inet_ntop(_AF_INET, src), socket.inet_ntop(_AF_INET, dst)
    else:
        if len(data) < MRT6MSG.size:
            return None
        mbz, kind, vif, _pad, src, dst = MRT6MSG.unpack_from(data)
        if mbz != 0:
            return None
        source, group = socket.inet_ntop(_AF_INET6, src), socket.inet_ntop(_AF_INET6, dst)
    name = _UPCALL_KINDS[family].get(kind)
    return None if name is None else Upcall(name, family, table, source, group, vif)


def parse_proc_vifs(family: int, text: str) -> dict[int, ObservedVif]:
    """/proc/net/ip_mr_vif or ip6_mr_vif: the default table's VIFs.

    Columns: index, device, bytes in, packets in, bytes out, packets out, flags, and for
    IPv4 local and remote; a VIF added with VIFF_USE_IFINDEX shows its ifindex as local.
    """
    vifs = {}
    for line in text.splitlines()[1:]:
        row = line.split()
        if len(row) < 7:
            continue
        ifindex = None
        if family == 4 and len(row) >= 8 and int(row[6], 16) & VIFF_USE_IFINDEX:
            ifindex = int(row[7], 16)
        counters = VifCounters(int(row[3]), int(row[5]), int(row[2]), int(row[4]))
        vifs[int(row[0])] = ObservedVif(row[1], ifindex, counters)
    return vifs


def probe_mifs(sock: socket.socket) -> dict[int, ObservedVif]:
    """The MIFs of the IPv6 table `sock` is set to (MRT6_TABLE), from SIOCGETMIFCNT_IN6 on
    each index: it answers EADDRNOTAVAIL for an index without a MIF below the highest one,
    EINVAL past it. The answer holds counters but no device, and nothing else the kernel
    offers names the device of a MIF outside the default table: device and ifindex None."""
    vifs = {}
    for vifi in range(MAXVIFS):
        buf = bytearray(pack_vif_req(vifi))
        try:
            fcntl.ioctl(sock.fileno(), SIOCGETVIFCNT, buf, True)
        except OSError as e:
            if e.errno == errno.EINVAL:
                break
            if e.errno == errno.EADDRNOTAVAIL:
                continue
            raise
        vifs[vifi] = ObservedVif(None, None, parse_vif_req(buf))
    return vifs


def _disabled(family: int) -> KernelError:
    return KernelError(f"{family_text(family)} is disabled in the configuration", "config", 0)


def _sin6(address: str) -> bytes:
    return SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, address), 0)


def fdname(family: int, table: int) -> str:
    """The name a table's socket is stored under (FDNAME=): the kernel cannot tell which
    table a socket owns (getsockopt(MRT_TABLE) is ENOPROTOOPT), so the name says it."""
    return f"mrt{family}-{table}"


def parse_fdname(name: str) -> tuple[int, int] | None:
    """(family, table) of a name fdname gives; None for any other name."""
    prefix, dash, number = name.partition("-")
    family = {"mrt4": 4, "mrt6": 6}.get(prefix)
    if family is None or not dash or not number.isascii() or not number.isdigit():
        return None
    if number != str(int(number)) or int(number) > 0xFFFFFFFF:
        return None
    return family, int(number)


def release_passed(passed: Sequence[tuple[int, str]], keeper: FdKeeper) -> None:
    """Release the (fd, name)s systemd passed and no Kernel took: MRT_DONE on each that
    owns a table (the kernel flushes it at once, copies elsewhere notwithstanding),
    closed, and taken out of the store. For a start that fails before the Kernel adopts
    them (a bad config file, say): a crash loop then forwards no stale routes."""
    for fd, name in passed:
        key = parse_fdname(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # not a socket: closed all the same
            with contextlib.suppress(OSError):
                os.close(fd)
        else:
            if key is not None:
                _done(sock, _KINDS[key[0]][2])
            sock.close()
        keeper.drop(name)


class FdKeeper(Protocol):
    """Where table sockets outlive the process (notify.FdStore: systemd's fd store)."""

    def keep(self, name: str, fd: int) -> bool: ...  # whether it went out
    def drop(self, name: str) -> None: ...


# --- sockets --------------------------------------------------------------------------------------


class MrouteSocket:
    """One table's MRT_INIT socket; with `adopted`, the one a previous mfcd made (see
    Kernel._adopt), which owns the table already: only its other options are set again."""

    def __init__(
        self, family: int, table: int | None = None, adopted: socket.socket | None = None
    ) -> None:
        self.family = family
        self.table = DEFAULT_TABLE[family] if table is None else table
        self.level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
        # Also held by the fd store: close() then leaves the table to it (no MRT_DONE).
        self.stored = adopted is not None
        # An adopted table's VIFs not claimed yet (vifi -> ifindex, None: device unknown):
        # add_vif keeps one already on the device it names (see add_vif).
        self.kept: dict[int, int | None] = {}
        if adopted is not None:
            self.sock = adopted
        else:
            self.sock = _raw_socket(family)
        self._ttls: dict[Oifs, bytes] = {}  # IPv4 oif set -> ttls
        try:
            if family == 6:
                # Block every ICMPv6 type: MLD and other ICMPv6 stop queueing up on the
                # socket; upcalls do not pass the filter and still arrive.
                self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
            self.sock.setblocking(False)
            if adopted is None:
                self._init_table(table)
            # WRONGVIF/WRONGMIF upcalls for packets of an entry arriving on another VIF (the
            # kernel sends at most one per entry every 3 s): learned entries follow them.
            self._setsockopt(MRT_ASSERT, struct.pack("=i", 1))
            self._size_buffer()
        except BaseException:
            if adopted is None:  # (an adopted one is the caller's to release)
                self.sock.close()
            raise

    def _init_table(self, table: int | None) -> None:
        """MRT_TABLE, then MRT_INIT: the socket owns the table from now on."""
        # The default table without MRT_TABLE: a kernel without multiple tables has no
        # MRT_TABLE option at all.
        if table is not None and table != DEFAULT_TABLE[self.family]:
            self._setsockopt(MRT_TABLE, struct.pack("=I", table))
        self._setsockopt(MRT_INIT, struct.pack("=i", 1))

    def _size_buffer(self) -> None:
        """UPCALL_BUFFER bytes of receive buffer: SO_RCVBUFFORCE (root, CAP_NET_ADMIN)
        passes net.core.rmem_max; without it SO_RCVBUF gets what rmem_max allows."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UPCALL_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPCALL_BUFFER)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _setsockopt(self, optname: int, value: bytes) -> None:
        try:
            self.sock.setsockopt(self.level, optname, value)
        except OSError as e:
            self._refused(optname, e)

    def _refused(self, optname: int, e: OSError) -> NoReturn:
        raise KernelError(
            _explain(self.family, optname, e.errno or 0, self.table),
            _OPNAMES.get(optname, "?"),
            e.errno or 0,
        ) from None

    def add_vif(self, vifi: int, ifindex: int, threshold: int) -> None:
        """MRT_ADD_VIF; in an adopted table, a VIF the previous mfcd left at `vifi` is kept
        if it is on the same device (forwarding through it goes on: the kernel cannot
        replace a VIF in place), else removed first (its threshold is not read back: only
        the entries' TTLs, which the restore writes again, decide forwarding)."""
        if self.kept and vifi in self.kept:
            if self.kept.pop(vifi) == ifindex:
                return
            try:
                self.del_vif(vifi)
            except KernelError as e:
                # Gone already: the kernel removes a VIF with its device.
                if e.errno != errno.EADDRNOTAVAIL:
                    raise
        if self.family == 4:
            data = pack_vifctl(vifi, ifindex, threshold)
        else:
            data = pack_mif6ctl(vifi, ifindex, threshold)
        self._setsockopt(MRT_ADD_VIF, data)

    def del_vif(self, vifi: int) -> None:
        self.kept.pop(vifi, None)
        data = pack_vifctl(vifi, 0, 0) if self.family == 4 else MIF6CTL.pack(vifi, 0, 0, 0, 0)
        self._setsockopt(MRT_DEL_VIF, data)

    def _mfc(self, source: str, group: str, parent: int, oifs: Oifs) -> bytes:
        if self.family == 4:
            return pack_mfcctl(source, group, parent, self._ttls_of(oifs))
        return pack_mf6cctl(source, group, parent, oifs)

    def _ttls_of(self, oifs: Oifs) -> bytes:
        """pack_ttls, once per oif set: 100,000 entries share a few sets."""
        ttls = self._ttls.get(oifs)
        if ttls is None:
            ttls = pack_ttls(oifs)
            if len(self._ttls) < 4096:
                self._ttls[oifs] = ttls
        return ttls

    def add_mfc(self, source: str, group: str, parent: int, oifs: Oifs) -> None:
        if self.family == 4:  # (_mfc without its call: this is the call made per route)
            data = pack_mfcctl(source, group, parent, self._ttls.get(oifs) or self._ttls_of(oifs))
        else:
            data = pack_mf6cctl(source, group, parent, oifs)
        try:  # not _setsockopt: the one call made per route, so one Python call less
            self.sock.setsockopt(self.level, MRT_ADD_MFC, data)
        except OSError as e:
            self._refused(MRT_ADD_MFC, e)

    def del_mfc(self, source: str, group: str) -> None:
        self._setsockopt(MRT_DEL_MFC, self._mfc(source, group, 0, ()))

    def mfc_run(self, optname: int, keys: Sequence[RouteKey], parent: int, oifs: Oifs) -> None:
        """MRT_ADD_MFC (or MRT_DEL_MFC) of one entry for each key's (S,G), in order: the
        structure is packed once and only the addresses change. On a failure the KernelError's
        `partial` says how many went in before it."""
        ttls = self._ttls_of(oifs) if self.family == 4 else oifs
        layout = mfc_layout(self.family, parent, ttls)
        call = self.sock.setsockopt
        # A chunk at a time, packed and written at C speed (no bytecode per route: at
        # 1,000,000 routes the loop's own work was a third of the kernel's); a chunk that
        # cannot be packed is written route by route, which says at which one.
        for at in range(0, len(keys), MFC_RUN_CHUNK):
            chunk = keys[at : at + MFC_RUN_CHUNK]
            try:
                structs = mfc_structs(self.family, chunk, layout)
            except Exception:  # (what the route-by-route loop then names: a bad address)
                self._mfc_each(optname, chunk, at, layout)
                continue
            left = iter(structs)
            try:
                deque(map(call, repeat(self.level), repeat(optname), left), 0)
            except Exception as e:
                done = at + len(structs) - length_hint(left) - 1  # (the one refused was taken)
                raise self._run_error(optname, keys[done], done, e) from None

    def _mfc_each(
        self,
        optname: int,
        keys: Sequence[RouteKey],
        at: int,
        layout: tuple[bytes, bytes, bytes],
    ) -> None:
        """mfc_run of keys that come `at` routes into the run, packed and written one by one."""
        head, mid, tail = layout
        setsockopt, level = self.sock.setsockopt, self.level
        af = _AF_INET if self.family == 4 else _AF_INET6
        for i, key in enumerate(keys):
            try:
                setsockopt(
                    level, optname, head + _pton(af, key[1]) + mid + _pton(af, key[2]) + tail
                )
            except Exception as e:
                raise self._run_error(optname, key, at + i, e) from None

    def _run_error(self, optname: int, key: RouteKey, done: int, e: Exception) -> KernelError:
        """The KernelError of a run stopped at `key` after `done` routes went in."""
        if isinstance(e, OSError) and e.errno is not None:  # the kernel refused it
            error = KernelError(
                _explain(self.family, optname, e.errno, self.table), _OPNAMES[optname], e.errno
            )
        else:  # a value the structure cannot hold (the model never makes one)
            error = KernelError(f"cannot apply the entry of {key}: {e}", "encode", 0)
        error.partial = done
        return error

    def sg_counters(self, source: str, group: str) -> SgCounters | None:
        """The (S,G) entry's counters (one O(1) SIOCGETSGCNT), or None when the table holds
        no such entry (EADDRNOTAVAIL, also for an unresolved one)."""
        buf = bytearray(pack_sg_req(self.family, source, group))
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, buf, True)
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENOENT):
                return None
            self._refused(SIOCGETSGCNT, e)
        return parse_sg_req(self.family, buf)

    def vif_counters(self, vifi: int) -> VifCounters | None:
        """A VIF's counters, or None when there is no such VIF (EINVAL past the highest one,
        EADDRNOTAVAIL for a gap below it)."""
        buf = bytearray(pack_vif_req(vifi))
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETVIFCNT, buf, True)
        except OSError:
            return None
        return parse_vif_req(buf)

    def read_upcalls(self, limit: int = 256) -> list[Upcall]:
        """Read what is queued (upcalls, and on IPv4 IGMP packets, which are skipped); the
        upcalls parsed. At most `limit` datagrams per call, so a flood cannot starve the
        event loop: the socket stays readable and the loop calls again."""
        upcalls = []
        recv, family, table = self.sock.recv, self.family, self.table
        for _ in range(limit):
            try:
                data = recv(_UPCALL_READ)
            except (BlockingIOError, InterruptedError):
                break
            upcall = parse_upcall(family, table, data)
            if upcall is not None:
                upcalls.append(upcall)
        return upcalls

    def close(self, release: bool = True) -> None:
        """MRT_DONE (with `release`), then close: the kernel removes this socket's VIFs and
        MFC entries. Without `release` only this copy is closed: the table lives on while
        another holds the socket (systemd's fd store), and goes with the last copy."""
        if self.sock.fileno() < 0:
            return
        # If MRT_DONE fails, closing the socket flushes the table all the same.
        if release:
            _done(self.sock, self.level)
        self.sock.close()


def _raw_socket(family: int) -> socket.socket:
    """A raw IGMP (IPv4) or ICMPv6 socket, the kind that does MRT_INIT."""
    try:
        if family == 4:
            return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        return socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except OSError as e:  # no CAP_NET_RAW, or the family is off (ipv6.disable=1)
        raise KernelError(_explain(family, 0, e.errno or 0), "socket", e.errno or 0) from None


def _done(sock: socket.socket, level: int) -> None:
    """MRT_DONE: the table the socket owns is flushed and free at once, whoever else holds
    the socket (refused, harmlessly, on a socket that owns none)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(level, MRT_DONE, struct.pack("=i", 1))


# SO_DOMAIN and SO_PROTOCOL (asm-generic/socket.h), where Python lacks the names.
_SO_DOMAIN = getattr(socket, "SO_DOMAIN", 39)
_SO_PROTOCOL = getattr(socket, "SO_PROTOCOL", 38)
_KINDS = {
    4: (socket.AF_INET, socket.IPPROTO_IGMP, socket.IPPROTO_IP),
    6: (socket.AF_INET6, socket.IPPROTO_ICMPV6, socket.IPPROTO_IPV6),
}


def unfit(sock: socket.socket, family: int, table: int) -> str | None:
    """Why a passed socket is not the MRT_INIT socket of (family, table), or None if it is
    as far as the kernel tells: a raw socket of the family's protocol, on which MRT_TABLE is
    EBUSY (only a socket that owns a table answers so; which table the kernel does not say,
    the name does). A kernel without multiple tables has no MRT_TABLE to ask (ENOPROTOOPT):
    its one table is taken on the name's word."""
    domain, protocol, level = _KINDS[family]
    get = sock.getsockopt
    kind = (get(socket.SOL_SOCKET, _SO_DOMAIN), get(socket.SOL_SOCKET, socket.SO_TYPE))
    if kind != (domain, socket.SOCK_RAW):
        return f"not a raw {family_text(family)} socket"
    if get(socket.SOL_SOCKET, _SO_PROTOCOL) != protocol:
        return "not an IGMP socket" if family == 4 else "not an ICMPv6 socket"
    try:
        sock.setsockopt(level, MRT_TABLE, struct.pack("=I", table))
    except OSError as e:
        if e.errno == errno.EBUSY:
            return None
        if e.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP) and table == DEFAULT_TABLE[family]:
            return None
        return f"MRT_TABLE answers {os.strerror(e.errno or 0)}"
    return "it owns no multicast routing table (nothing to adopt)"


# Bytes read per datagram: the upcall headers (20 and 40 bytes) and the start of the packet
# after them; the rest of a long datagram (WHOLEPKT) is discarded by the kernel.
_UPCALL_READ = 256


# --- the writer process: long runs written on the second CPU ------------------------------------

# Routes of a run from which Kernel.apply_later hands it to the writer process: starting and
# feeding it costs more than it saves on fewer (bench/writer_overlap.py).
WRITER_MIN = LATER_MIN
# In a long batch (apply_later's `every_run`), its chunks' runs (controller.CHUNK changes
# each when the batch is uniform) go to the writer from this length on. Shorter runs stay
# here while the writer has nothing (see Kernel._for_writer): any op not for the writer
# first waits for it, a round trip each, which made a batch of 16-route runs between
# deletes half as slow again.
WRITER_CHUNK_MIN = 512
WRITER_BUFFER = 1024 * 1024  # bytes of structures in flight to the writer at most, about
# Writer processes at most: the kernel takes MRT_ADD_MFC under the RTNL lock, but two
# processes calling side by side write a run in 0.6 of the time one takes (the Python and
# system-call work around the lock overlaps); a third gains little on two CPUs.
CREW = 2
# Routes of a piece of a long run (a restore's) that one writer takes: the pieces go to
# the writer with the fewest routes in hand, so both stay busy to the end of the run.
WRITER_PIECE = 8192
# Routes a writer may have in hand (about half a second of its calls): a piece waits for
# room (_room), so a refusal stops the other writer soon, not after all that was queued.
WRITER_AHEAD = 8 * WRITER_PIECE


class WriterJob(NamedTuple):
    """A piece of a run handed to a writer: its op's position among the ops since the last
    settle, and its routes' place in the op's keys (no copy of them: a restore's pieces
    stay listed until the settle)."""

    at: int  # its op's position among the ops since the last settle
    first: int  # its first route's position in the op's keys
    size: int  # its routes: op.keys[first : first + size]
    sock: MrouteSocket
    op: AddMfcRun

    def keys(self) -> Sequence[RouteKey]:
        keys = self.op.keys
        return keys if self.size == len(keys) else keys[self.first : self.first + self.size]


# A WriterReport status beside kernel_writer's: the writer stopped before it reported the
# piece, which went in up to some route (in order), found by probing (_written).
GONE = -1


class WriterReport(NamedTuple):
    """What became of a piece: its routes that went in (-1: unknown, GONE), the errno of
    the one refused (0: none), and kernel_writer's status (DONE, REFUSED, SKIPPED) or GONE."""

    job: WriterJob
    done: int
    err: int
    status: int


class Writer:
    """A kernel writer process (kernel_writer.py) and the thread that packs its pieces'
    structures and streams them to it, in order; the daemon's thread only waits for the
    reports (Kernel.settle). It writes through the daemon's own MRT sockets (sent to it once
    each by SCM_RIGHTS) and exits at end of file, so it never outlives the daemon. A Kernel
    runs one or two (its crew) for a long restore or batch (Kernel.apply_later) and ends
    them after it (release_writer)."""

    def __init__(self) -> None:
        conn, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for end in (conn, theirs):
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WRITER_BUFFER)
                with contextlib.suppress(OSError):
                    end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, WRITER_BUFFER)
            # -I -S: no site, no environment; the script imports the standard library only.
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", kernel_writer.__file__], stdin=theirs.fileno()
            )
        except BaseException:
            conn.close()
            raise
        finally:
            theirs.close()
        self.conn = conn
        self.slots: dict[int, int] = {}  # id of an MrouteSocket -> slot in the writer
        self.jobs: deque[WriterJob] = deque()  # sent, not reported yet
        self.reports: list[WriterReport] = []  # taken since the last wait()
        # A report taken by collect() was a refusal: the writer skips every later piece
        # until wait() resets it.
        self.refused = False
        self.gone = False  # it stopped (or was stopped) before reporting every piece
        self.unpackable = False  # the feeder stopped it at a route it could not pack
        # A reset, a socket (slot, fd), or a job (family, header, layout, job); None: stop.
        self.queue: SimpleQueue[bytes | tuple[Any, ...] | None] = SimpleQueue()
        self.thread = threading.Thread(target=self._feed, name="mfcd-kernel-writer", daemon=True)
        self.thread.start()

    def submit(self, job: WriterJob) -> None:
        sock = job.sock
        slot = self.slots.get(id(sock))
        if slot is None:
            slot = self.slots[id(sock)] = len(self.slots)
            self.queue.put((slot, sock.fileno()))
        family, op = sock.family, job.op
        # (the layout here: the socket's cache of ttls is the daemon thread's)
        layout = mfc_layout(family, op.parent, sock._ttls_of(op.oifs) if family == 4 else op.oifs)
        size = MFCCTL.size if family == 4 else MF6CCTL.size
        header = kernel_writer.pack_job(slot, sock.level, MRT_ADD_MFC, size, job.size)
        self.jobs.append(job)
        self.queue.put((family, header, layout, job))

    def load(self) -> int:
        """Routes handed to it and not reported yet (after taking the reports that came)."""
        self.collect()
        return sum(job.size for job in self.jobs)

    def _feed(self) -> None:
        """The feeding thread: pack each job's structures a chunk at a time and send them.
        A failure (the writer gone, a structure that cannot be packed) closes the connection:
        the writer stops there and Kernel.settle finds out how far it got."""
        conn, get = self.conn, self.queue.get
        try:
            while (item := get()) is not None:
                if isinstance(item, bytes):
                    conn.sendall(item)
                elif len(item) == 2:  # (a job has four)
                    socket.send_fds(conn, [kernel_writer.pack_socket(item[0])], [item[1]])
                else:
                    self._send_job(*item)
        except Exception:  # (an OSError, or a ValueError of a bad address)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _send_job(
        self,
        family: int,
        header: bytes,
        layout: tuple[bytes, bytes, bytes],
        job: WriterJob,
    ) -> None:
        """A job's header, then its routes packed, a chunk at a time (sliced from the op's
        keys as they are packed)."""
        self.conn.sendall(header)
        send, join = self.conn.sendall, b"".join
        keys, end = job.op.keys, job.first + job.size
        for at in range(job.first, end, MFC_RUN_CHUNK):
            try:
                structs = mfc_structs(family, keys[at : min(at + MFC_RUN_CHUNK, end)], layout)
            except Exception:  # (mfcd writes the rest itself, and says which route it is)
                self.unpackable = True
                raise
            send(join(structs))

    def collect(self) -> None:
        """Take the reports that have come, without waiting: `jobs` is left holding only
        the pieces not reported yet, and the reports never fill the socket (the writer
        would stop, blocked on one, until the next wait())."""
        conn, size = self.conn, kernel_writer.REPORT.size
        while self.jobs:
            try:
                if len(conn.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)) < size:
                    return  # (a report in part, or the end: wait() sees to it)
                data = conn.recv(size)
            except OSError:  # (none yet, or the writer is gone: wait() sees to that too)
                return
            self._take(data)

    def _take(self, data: bytes) -> None:
        """The report of the oldest piece not reported yet."""
        done, err, status = kernel_writer.parse_report(data)
        self.reports.append(WriterReport(self.jobs.popleft(), done, err, status))
        if status == kernel_writer.REFUSED:
            self.refused = True

    def wait(self) -> list[WriterReport]:
        """Wait for every piece's report; return the reports since the last wait(), in
        the order of the pieces. If the writer is gone, each piece it did not report comes
        as GONE (it went in up to some route, in order; later ones not at all)."""
        while self.jobs:
            data = b""
            with contextlib.suppress(OSError):
                data = self.conn.recv(kernel_writer.REPORT.size, socket.MSG_WAITALL)
            if len(data) < kernel_writer.REPORT.size:
                self.reports += [WriterReport(job, -1, 0, GONE) for job in self.jobs]
                self.jobs.clear()
                self.close()
                self.gone = True
                break
            self._take(data)
        if self.refused and not self.gone:
            self.queue.put(kernel_writer.pack_reset())
        reports, self.reports, self.refused = self.reports, [], False
        return reports

    def close(self) -> None:
        """End the writer: end of file, then wait for it (it is our own child, by PID)."""
        self.queue.put(None)
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        self.conn.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Kernel:
    """The real data plane (dataplane.Dataplane): one MrouteSocket per (family, table), and
    the interface events of a netlink.LinkMonitor.

    The default tables of `families` are opened at once; another table is opened (MRT_TABLE,
    then MRT_INIT) when an operation first names it, and closed by close_table. Operations
    for a family not in `families` are refused. `fds()` lists the descriptors to wait on:
    call events() when one is readable (they change when a table is opened or closed).
    """

    def __init__(
        self,
        families: Iterable[int],
        monitor: netlink.LinkMonitor | None = None,
        keeper: FdKeeper | None = None,
        passed: Sequence[tuple[int, str]] = (),
    ) -> None:
        self.families = tuple(families)
        self.monitor = monitor
        # Each table's socket is kept there once open (None: nowhere, as without systemd);
        # `passed` are the (fd, name) a previous mfcd kept, adopted first (see _adopt).
        self.keeper = keeper
        self.sockets: dict[tuple[int, int], MrouteSocket] = {}
        self.adopted: list[tuple[int, int]] = []  # the tables taken over, in order
        # The (family, table)s whose MRT_INIT another multicast router holds, with the
        # refusal of their last try (EADDRINUSE): see owned_tables.
        self._owned: dict[tuple[int, int], KernelError] = {}
        # apply_later hands a run of this many routes or more to the writer processes (None:
        # never); `writers` are those once started (the crew, `crew` of them: two when two
        # CPUs can run them, whose calls the kernel takes side by side), `later` the ops
        # since the last settle.
        self.writer_min: int | None = WRITER_MIN
        self.crew = max(1, min(CREW, len(os.sched_getaffinity(0))))
        self.writers: list[Writer] = []
        self._writer_failed = False
        self._crew_short = False  # (said once: fewer writers could start than `crew`)
        self._later = 0
        try:
            self._adopt_all(passed)
            for family in self.families:
                self.open_table(family, DEFAULT_TABLE[family])
        except BaseException:
            self.release()  # a start that fails forwards nothing, adopted tables included
            raise

    def open_table(self, family: int, table: int) -> MrouteSocket:
        sock = self.sockets.get((family, table))
        if sock is None:
            if family not in self.families:
                raise _disabled(family)
            try:
                sock = MrouteSocket(family, table)
            except KernelError as e:
                e.table = (family, table)  # (see dataplane.table_owned)
                if e.errno == errno.EADDRINUSE:
                    self._owned[(family, table)] = e
                raise
            self._owned.pop((family, table), None)  # (the other router is gone)
            self.sockets[(family, table)] = sock
            # Stored right after MRT_INIT, before any VIF: a crash, a watchdog kill or the
            # OOM killer then leaves the table to the next mfcd as a stop does.
            if self.keeper is not None:
                sock.stored = self.keeper.keep(fdname(family, table), sock.fileno())
        return sock

    def close_table(self, family: int, table: int) -> None:
        """MRT_DONE: the kernel removes the table's VIFs and entries; the fd store lets its
        copy go (it would keep a socket that owns nothing)."""
        sock = self.sockets.pop((family, table), None)
        if sock is not None:
            sock.close()
            if sock.stored and self.keeper is not None:
                self.keeper.drop(fdname(family, table))

    def _adopt_all(self, passed: Sequence[tuple[int, str]]) -> None:
        """Take over the table sockets a previous mfcd kept; release the others. A name whose
        copies the store was told to drop (a stale or unfit one) is kept again for the
        socket adopted under it, if any."""
        dropped: set[str] = set()
        for fd, name in passed:
            if not self._adopt(fd, name):
                dropped.add(name)
        for key in self.adopted:
            name = fdname(*key)
            if name in dropped and self.keeper is not None:
                self.sockets[key].stored = self.keeper.keep(name, self.sockets[key].fileno())

    def _adopt(self, fd: int, name: str) -> bool:
        """Adopt the socket `fd` as the table its name says, with the VIFs it holds kept for
        the restore to claim (MrouteSocket.add_vif). One that is not such a socket, or not
        wanted (its family disabled, a second one for a table), is released: MRT_DONE if
        it owns a table, closed, dropped from the store (False). Never raises."""
        key = parse_fdname(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:  # not a socket at all
            log.warning("passed fd %d (%s) is not a socket (%s): closed", fd, name, e)
            with contextlib.suppress(OSError):
                os.close(fd)
            self._drop(name)
            return False
        why = None
        if key is None:
            why = "not a name mfcd stores its tables under (mrt4-TABLE, mrt6-TABLE)"
        elif key[0] not in self.families:
            why = f"{family_text(key[0])} is disabled in the configuration"
        elif key in self.sockets:
            why = "a second socket for that table"
        else:
            try:
                why = unfit(sock, *key)
            except OSError as e:
                why = str(e)
        adopted = None
        if key is not None and why is None:
            try:
                adopted = MrouteSocket(key[0], key[1], adopted=sock)
                adopted.kept = self._kept_vifs(*key)
            except Exception as e:  # (OSError, KernelError: anything leaves it unadopted)
                adopted = None  # (set up, but what it holds is unknown: _kept_vifs failed)
                why = f"it cannot be set up: {e}"
        if adopted is None or key is None:
            log.warning("passed socket %s (fd %d) not adopted: %s; released", name, fd, why)
            if key is not None and key not in self.sockets:  # (not the socket adopted)
                _done(sock, _KINDS[key[0]][2])  # the table is flushed and free for MRT_INIT
            sock.close()
            self._drop(name)
            return False
        self.sockets[key] = adopted
        self.adopted.append(key)
        log.info(
            "adopted the %s table %d from the previous mfcd (%d VIFs, forwarding on)",
            family_text(key[0]),
            key[1],
            len(adopted.kept),
        )
        return True

    def _drop(self, name: str) -> None:
        if self.keeper is not None:
            self.keeper.drop(name)

    def _kept_vifs(self, family: int, table: int) -> dict[int, int | None]:
        """The VIFs an adopted table holds: vifi -> ifindex (None: the kernel does not name
        its device, as for IPv6 tables other than the default)."""
        kept: dict[int, int | None] = {}
        for vifi, vif in self._observe_vifs(family, table).items():
            ifindex = vif.ifindex
            if ifindex is None and vif.device is not None:
                with contextlib.suppress(OSError):
                    ifindex = socket.if_nametoindex(vif.device)
            kept[vifi] = ifindex
        return kept

    def owned_tables(self) -> Mapping[tuple[int, int], KernelError]:
        """The tables another multicast router owns (dataplane.Dataplane.owned_tables)."""
        return dict(self._owned)

    def fds(self) -> list[int]:
        fds = [sock.fileno() for sock in self.sockets.values()]
        return fds + ([self.monitor.fileno()] if self.monitor is not None else [])

    def apply(self, ops: Sequence[KernelOp]) -> None:
        """Apply in order; on a failure raise KernelError with `applied` (no undo here)."""
        done = 0
        family = table = -1
        sock: MrouteSocket
        try:
            for op in ops:
                if op.table != table or op.family != family:  # one socket per chunk, usually
                    # (a table open already, as it is for every route but a table's first)
                    sock = self.sockets.get((op.family, op.table)) or self.open_table(
                        op.family, op.table
                    )
                    family, table = op.family, op.table
                if type(op) is AddMfc:  # by far the most common: tested first, and cheaply
                    sock.add_mfc(op.source, op.group, op.parent, op.oifs)
                else:
                    match op:
                        case AddMfcRun(_, _, parent, oifs, keys):
                            sock.mfc_run(MRT_ADD_MFC, keys, parent, oifs)
                        case DelMfcRun(_, _, keys):
                            sock.mfc_run(MRT_DEL_MFC, keys, 0, ())
                        case AddVif():
                            sock.add_vif(op.vifi, op.ifindex, op.threshold)
                        case DelVif():
                            sock.del_vif(op.vifi)
                        case DelMfc():
                            sock.del_mfc(op.source, op.group)
                done += 1
        except KernelError as e:
            e.applied = done
            raise
        except Exception as e:  # a value the kernel structures cannot hold, say
            error = KernelError(f"cannot apply {ops[done]}: {e}", "encode", 0)
            error.applied = done
            raise error from e

    def apply_later(self, ops: Sequence[KernelOp], every_run: bool = False) -> None:
        """apply(), except that a long AddMfcRun (with `every_run`, any: a long batch's
        chunks) goes to the writer process and is waited for by settle() (or the next op
        that is not such a run), while the caller goes on.

        A KernelError's `applied` counts every op passed since the last settle(), from this
        call or earlier ones (what went in before the failure, in order); after it, nothing
        is pending. Without a writer (it cannot start, or died) ops are applied here."""
        base = self._later
        self._later = base + len(ops)
        minimum = self.writer_min  # (None: never)
        for i, op in enumerate(ops):
            if type(op) is AddMfcRun and minimum is not None and self._for_writer(op, every_run):
                writers = self.writers or self._start_crew()
                if writers:
                    try:
                        sock = self.sockets.get((op.family, op.table)) or self.open_table(
                            op.family, op.table
                        )
                    except KernelError as e:
                        self._settle_jobs()
                        self._later = 0
                        e.applied = base + i
                        raise
                    self._hand_out(writers, base + i, sock, op)
                    continue
            self._settle_jobs()  # in order: what the writers have goes in first
            try:
                self.apply((op,))
            except KernelError as e:
                self._later = 0
                e.applied = base + i
                raise

    def _for_writer(self, op: AddMfcRun, every_run: bool) -> bool:
        """Whether apply_later hands `op` to the writers: a long run; with `every_run`, a
        chunk's run of WRITER_CHUNK_MIN routes, or a shorter one while the writers have runs
        they have not reported (written here, it would first wait for all of them: they
        would run dry at every short run of a long batch, where a chunk cuts one)."""
        n = len(op.keys)
        if not every_run:
            return self.writer_min is not None and n >= self.writer_min
        return n >= WRITER_CHUNK_MIN or self.pending()

    def _hand_out(self, writers: list[Writer], at: int, sock: MrouteSocket, op: AddMfcRun) -> None:
        """The run in pieces of WRITER_PIECE routes, each to the writer with the fewest
        routes in hand: the pieces of one writer go in in order, those of two side by side.
        Once a writer has reported a refusal, nothing more is handed out: the settle raises
        it now (the other writer would write routes only to have them taken out again)."""
        n = len(op.keys)
        step = n if len(writers) == 1 else WRITER_PIECE
        if not n:
            return
        for first in range(0, n, step):
            loads = _room(writers)
            if any(writer.refused for writer in writers):
                self._settle_jobs()  # (raises: a refusal is among the reports)
            writer = writers[loads.index(min(loads))]
            writer.submit(WriterJob(at, first, min(step, n - first), sock, op))

    def pending(self) -> bool:
        """Whether the writers have runs apply_later handed to them not reported yet (or a
        refusal reported: settle() raises it)."""
        for writer in self.writers:
            writer.collect()
            if writer.jobs or writer.refused:
                return True
        return False

    def settle(self) -> None:
        """Wait for what apply_later handed to the writers; raise as apply_later would."""
        self._settle_jobs()
        self._later = 0

    def _settle_jobs(self) -> None:
        """Wait for every writer's reports and conclude them in the order of the ops and of
        their routes: a piece a writer did not finish (it stopped) is finished here; at the
        first piece refused (by the kernel, or here), the routes the other writer wrote of
        later pieces are taken out again, so what went in is what KernelError says (its
        `applied`, its `partial`), as if one writer had written them all in order."""
        busy = [writer for writer in self.writers if writer.jobs or writer.reports]
        if not busy:
            return
        reports: list[WriterReport] = []
        written: list[tuple[int, int]] = []  # (pid, routes) of each writer that went on
        for writer in busy:
            got = writer.wait()
            reports += got
            if not writer.gone:
                done = sum(r.job.size for r in got if r.status == kernel_writer.DONE)
                written.append((writer.proc.pid, done))
        self._drop_gone()
        reports.sort(key=_PLACE)
        failure: KernelError | None = None
        for report in reports:
            if failure is None:
                failure = _conclude(report)
            else:
                failure.undo_failures += _take_out(self, report)
        if failure is not None:
            self._later = 0  # (raised: nothing is pending after it)
            raise failure
        for pid, done in written:
            log.debug("kernel writer (pid %d): %d routes written", pid, done)

    def _drop_gone(self) -> None:
        """The writers that stopped leave the crew; one that stopped by itself (not at a
        route its feeder could not pack: mfcd names that route, the writer was fine) ends
        the others too, and long runs are written here from then on."""
        gone = [writer for writer in self.writers if writer.gone]
        if not gone:
            return
        self.writers = [writer for writer in self.writers if not writer.gone]
        if not all(writer.unpackable for writer in gone):
            for writer in self.writers:
                writer.close()
            self.writers = []
            self._writer_gone("it stopped")

    def release_writer(self) -> None:
        """Settle, then end the writer processes until apply_later needs them again."""
        try:
            self.settle()
        finally:
            for writer in self.writers:
                writer.close()
            self.writers = []

    def _start_crew(self) -> list[Writer]:
        """Start the writers (as many as `crew`, or as many as start); none after a failure.
        One that cannot start is said once; with none, long runs are written here."""
        if self._writer_failed:
            return []
        for _ in range(self.crew):
            try:
                self.writers.append(Writer())
            except Exception as e:  # (OSError mostly; whatever it is, mfcd writes itself)
                if not self.writers:
                    self._writer_gone(f"it cannot start: {e}")
                elif not self._crew_short:
                    self._crew_short = True
                    log.warning(
                        "only %d of %d kernel writer processes could start (%s): long runs"
                        " of routes take longer",
                        len(self.writers),
                        self.crew,
                        e,
                    )
                break
        return self.writers

    def _writer_gone(self, why: str) -> None:
        """Long runs are written here from now on; said once."""
        if not self._writer_failed:
            log.warning(
                "the kernel writer process is not available (%s): mfcd writes long runs of"
                " routes itself, which takes longer",
                why,
            )
        self._writer_failed = True

    def observe(self, family: int, table: int, entries: bool = True) -> Observation:
        """The table's VIFs (32 at most) and with `entries` its MFC (a netlink dump filtered
        by table). Only /proc and netlink sockets of its own: safe to run in a thread."""
        if family not in self.families:
            raise _disabled(family)
        try:
            vifs = self._observe_vifs(family, table)
            mfc = None
            if entries:
                mfc = {
                    (e.source, e.group): ObservedEntry(
                        e.iif, e.oifs, SgCounters(e.packets, e.bytes, e.wrong_if), e.static
                    )
                    for e in netlink.dump_mfc(family, table)
                    if e.resolved
                }
        except OSError as e:
            raise KernelError(
                f"cannot read the {family_text(family)} table {table}: {e}", "observe", e.errno or 0
            ) from None
        return Observation(family, table, vifs, mfc)

    def _observe_vifs(self, family: int, table: int) -> dict[int, ObservedVif]:
        """/proc for the default tables (it shows only those); the netlink VIF dump for other
        IPv4 tables. IPv6 has no such dump (RTM_GETLINK of RTNL_FAMILY_IP6MR is an ordinary
        link dump): another IPv6 table's MIFs are probed one index at a time."""
        if table == DEFAULT_TABLE[family]:
            name = "ip_mr_vif" if family == 4 else "ip6_mr_vif"
            with open(f"/proc/net/{name}", encoding="ascii") as f:
                return parse_proc_vifs(family, f.read())
        if family == 6:
            # A socket of its own (no MRT_INIT), set to the table: the table's own socket
            # may close meanwhile, as observe runs in a thread. (MRT6_TABLE creates a table
            # that does not exist, empty; the tables observed are those mfcd uses.)
            with socket.socket(_AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
                sock.setsockopt(socket.IPPROTO_IPV6, MRT_TABLE, struct.pack("=I", table))
                return probe_mifs(sock)
        vifs = {}
        for v in netlink.dump_vifs(table):
            try:
                device = socket.if_indextoname(v.ifindex)
            except OSError:  # deleted since the dump
                continue
            counters = VifCounters(v.packets_in, v.packets_out, v.bytes_in, v.bytes_out)
            vifs[v.vifi] = ObservedVif(device, v.ifindex, counters)
        return vifs

    def counters(
        self,
        family: int,
        table: int,
        entries: Iterable[tuple[str, str]] = (),
        vifs: Iterable[int] = (),
    ) -> Counters:
        """SIOCGETSGCNT per (S,G) and SIOCGETVIFCNT per VIF, through the table's socket; a
        table not open holds nothing of mfcd's: all None."""
        if family not in self.families:
            raise _disabled(family)
        sock = self.sockets.get((family, table))
        if sock is None:
            return Counters([None for _ in entries], [None for _ in vifs])
        probe = sock.sg_counters
        return Counters([probe(s, g) for s, g in entries], [sock.vif_counters(v) for v in vifs])

    def events(self) -> Events:
        """Interface events (all queued), then up to 256 datagrams of each table's socket
        (each may be learned from: a few ms of work, then the loop serves others).

        A failure to read interface events raises netlink.NetlinkError (an OSError) before
        any upcall is read: those stay queued for the next call.
        """
        links: list[LinkChange] = []
        lost = False
        if self.monitor is not None:
            for event in self.monitor.read_events():
                link = event.link
                links.append(LinkChange(event.kind, link.name, link.ifindex, link.up))
            lost = self.monitor.overrun
        upcalls: list[Upcall] = []
        for sock in self.sockets.values():
            upcalls += sock.read_upcalls()
        return Events(upcalls, links, lost)

    def close(self) -> None:
        """Close every table's socket: MRT_DONE on those not stored, which flushes them; a
        stored one's table lives on in the store for the next mfcd (a stop of the unit
        closes the store, and that last close flushes it)."""
        for writer in self.writers:  # first: they hold the sockets too (never MRT_DONE)
            writer.close()
        self.writers = []
        for sock in self.sockets.values():
            sock.close(release=not sock.stored)
        self.sockets.clear()

    def forget_kept(self) -> None:
        """The VIFs the adopted tables held are claimed or removed by now (the full drift
        check after start-up): add_vif no longer looks for them (the kernel may have
        removed one since, with its device)."""
        for sock in self.sockets.values():
            sock.kept.clear()

    def release(self) -> None:
        """Close every table's socket with MRT_DONE and take it out of the store: what a
        start that fails does, so that a crash loop (a bad state file, say) forwards no
        stale routes while systemd restarts mfcd again and again."""
        for key, sock in self.sockets.items():
            sock.stored = False
            self._drop(fdname(*key))
        self.close()


def _holds(sock: MrouteSocket, key: RouteKey) -> bool:
    """Whether the table holds the key's entry; not one the structure cannot hold (a bad
    address in a state file, say: it was never written, and nothing after it was)."""
    try:  # (sg_counters turns the kernel's errors into None or a KernelError: these are
        # the packing's, inet_pton's OSError or ValueError)
        return sock.sg_counters(key[1], key[2]) is not None
    except (OSError, ValueError, struct.error):
        return False


def _written(sock: MrouteSocket, keys: Sequence[RouteKey]) -> int:
    """How many of a run's new routes the table holds: they went in in order, so the ones
    in it are the first ones (a binary search, one O(1) counters probe a step)."""
    lo, hi = 0, len(keys)
    while lo < hi:
        mid = (lo + hi) // 2
        if _holds(sock, keys[mid]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _room(writers: list[Writer]) -> list[int]:
    """The writers' loads, once one has fewer than WRITER_AHEAD routes in hand (waiting for
    their reports) or has refused; at once if a writer is gone (settle finds that out)."""
    while True:
        loads = [writer.load() for writer in writers]
        if min(loads) < WRITER_AHEAD or any(writer.refused for writer in writers):
            return loads
        poll = select.poll()  # (not select(): a descriptor may be past 1024, see membership)
        for writer in writers:
            poll.register(writer.conn, select.POLLIN)
        ready = poll.poll(1000)
        if ready and [writer.load() for writer in writers] == loads:
            return loads  # (readable with no report: the end of a writer, or a part of one)


_PLACE = attrgetter("job.at", "job.first")  # a report's piece's place among the ops' routes


def _conclude(report: WriterReport) -> KernelError | None:
    """None if the piece's routes all went in (finishing here what a writer that stopped
    left), else the KernelError of the one refused, placed among the ops (`applied`) and in
    its run (`partial`)."""
    job, done, err, status = report
    if status == kernel_writer.DONE:
        return None
    keys = job.keys()
    if status == kernel_writer.REFUSED:
        error = job.sock._run_error(
            MRT_ADD_MFC, keys[done], job.first + done, OSError(err, os.strerror(err))
        )
        error.applied = job.at
        return error
    # GONE; or SKIPPED, which follows its writer's refusal and so is never concluded: if it
    # were, none of its routes went in.
    done = _written(job.sock, keys) if status == GONE else 0
    rest = keys[done:]
    try:
        if rest:
            job.sock.mfc_run(MRT_ADD_MFC, rest, job.op.parent, job.op.oifs)
    except KernelError as e:
        e.partial += job.first + done
        e.applied = job.at
        return e
    return None


def _take_out(kernel: Kernel, report: WriterReport) -> list[KernelError]:
    """Delete the routes of a piece after the refused one that went in all the same (another
    writer wrote them), as dataplane.undo does; the deletes refused (the model does not hold
    those routes: the drift check finds them)."""
    job, done, _, status = report
    keys = job.keys()
    if status == kernel_writer.DONE:
        done = len(keys)
    elif status == GONE:
        done = _written(job.sock, keys)
    elif status == kernel_writer.SKIPPED:
        done = 0
    if not done:
        return []
    return undo(kernel, [DelMfcRun(job.op.family, job.op.table, keys[:done])])
