"""The kernel's multicast routing API (linux/mroute.h, linux/mroute6.h); the only code using it.

Per address family one raw socket (IGMP for IPv4, ICMPv6 for IPv6) does MRT_INIT and
then owns the table: VIFs and MFC entries added through it live exactly as long as
the socket, so a crash or exit never leaves stale routes behind.  The daemon
re-applies its saved state at start.  The kernel queues upcalls and IGMP/MLD
packets on the socket; `drain()` must be called whenever it is readable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from mfcd.errors import KernelError
from mfcd.model import AddMfc, AddVif, DelMfc, DelVif, KernelOp, Oifs, Step

# Socket option numbers, shared by IPv4 (level IPPROTO_IP) and IPv6 (level IPPROTO_IPV6).
MRT_INIT = 200
MRT_DONE = 201
MRT_ADD_VIF = 202
MRT_DEL_VIF = 203
MRT_ADD_MFC = 204
MRT_DEL_MFC = 205
MRT_VERSION = 206
MRT_TABLE = 209

VIFF_USE_IFINDEX = 0x8  # vifctl: lcl_ifindex holds an ifindex, not an address
ICMP6_FILTER = 1  # level IPPROTO_ICMPV6
SIOCGETVIFCNT = 0x89E0  # also SIOCGETMIFCNT_IN6
SIOCGETSGCNT = 0x89E1  # also SIOCGETSGCNT_IN6

# struct vifctl { vifi_t vifc_vifi; u8 flags; u8 threshold; u32 rate_limit;
#                 union { in_addr lcl_addr; int lcl_ifindex; }; in_addr rmt_addr; }
VIFCTL = struct.Struct("=HBBIi4s")
# struct mfcctl { in_addr origin, mcastgrp; vifi_t parent; u8 ttls[MAXVIFS];
#                 u32 pkt_cnt, byte_cnt, wrong_if; int expire; }
MFCCTL = struct.Struct("=4s4sH32s2xIIIi")
# struct sioc_sg_req { in_addr src, grp; unsigned long pktcnt, bytecnt, wrong_if; }
SIOC_SG_REQ = struct.Struct("@4s4sLLL")
# struct sioc_vif_req { vifi_t vifi; unsigned long icount, ocount, ibytes, obytes; }
SIOC_VIF_REQ = struct.Struct("@HLLLL")
# struct sockaddr_in6 { u16 family; be16 port; u32 flowinfo; in6_addr addr; u32 scope_id; }
SOCKADDR_IN6 = struct.Struct("=HHI16sI")
# struct mif6ctl { mifi_t mif6c_mifi; u8 mif6c_flags; u8 vifc_threshold; u16 mif6c_pifi;
#                  u32 vifc_rate_limit; }
MIF6CTL = struct.Struct("=HBBH2xI")
# struct mf6cctl { sockaddr_in6 origin, mcastgrp; mifi_t parent; struct if_set ifset; }
MF6CCTL = struct.Struct("=28s28sH2x32s")
IF_SET = struct.Struct("=8I")  # 256 bits; bit n = MIF n
# struct sioc_sg_req6 { sockaddr_in6 src, grp; unsigned long pktcnt, bytecnt, wrong_if; }
SIOC_SG_REQ6 = struct.Struct("@28s28sLLL")
# struct sioc_mif_req6 { mifi_t mifi; unsigned long icount, ocount, ibytes, obytes; }
SIOC_MIF_REQ6 = struct.Struct("@HLLLL")

_LONG = struct.calcsize("@L")
_AF_INET = socket.AF_INET
_pton = socket.inet_pton
assert VIFCTL.size == 16
assert MFCCTL.size == 60
assert SIOC_SG_REQ.size == 8 + 3 * _LONG
assert SIOC_VIF_REQ.size == 4 * _LONG + _LONG  # vifi padded to the alignment of long
assert SOCKADDR_IN6.size == 28
assert MIF6CTL.size == 12
assert MF6CCTL.size == 92
assert SIOC_SG_REQ6.size == 56 + 3 * _LONG
assert SIOC_MIF_REQ6.size == SIOC_VIF_REQ.size

_OPNAMES = {
    MRT_INIT: "MRT_INIT",
    MRT_DONE: "MRT_DONE",
    MRT_ADD_VIF: "MRT_ADD_VIF",
    MRT_DEL_VIF: "MRT_DEL_VIF",
    MRT_ADD_MFC: "MRT_ADD_MFC",
    MRT_DEL_MFC: "MRT_DEL_MFC",
    MRT_TABLE: "MRT_TABLE",
}


def family_name(family: int) -> str:
    return "IPv4" if family == 4 else "IPv6"


def _explain(family: int, optname: int, err: int) -> str:
    """A one-line message for a refused socket option, with what to do about it."""
    fam = family_name(family)
    op = _OPNAMES.get(optname, str(optname))
    if optname == MRT_INIT and err == errno.EADDRINUSE:
        return (
            f"another multicast router already owns the {fam} multicast routing table"
            " (smcroute, pimd, FRR pimd, igmpproxy, mrouted or a second mfcd): stop it first"
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


@dataclass(frozen=True, slots=True)
class SgCounters:
    packets: int
    bytes: int
    wrong_if: int


@dataclass(frozen=True, slots=True)
class VifCounters:
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int


class MrouteSocket:
    """One family's MRT_INIT socket."""

    def __init__(self, family: int, table: int | None = None) -> None:
        self.family = family
        try:
            if family == 4:
                self.level = socket.IPPROTO_IP
                self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
            else:
                self.level = socket.IPPROTO_IPV6
                self.sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        except OSError as e:  # no CAP_NET_RAW, or the family is off (ipv6.disable=1)
            raise KernelError(_explain(family, 0, e.errno or 0), "socket", e.errno or 0) from None
            # Block every ICMPv6 type: MLD and other ICMPv6 stop queueing up on the socket;
            # upcalls still arrive.
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
        self.sock.setblocking(False)
        self._ttls: dict[Oifs, bytes] = {}  # IPv4 oif set -> ttls
        try:
            if table is not None:
                self._setsockopt(MRT_TABLE, struct.pack("=I", table))
            self._setsockopt(MRT_INIT, struct.pack("=i", 1))
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _setsockopt(self, optname: int, value: bytes) -> None:
        try:
            self.sock.setsockopt(self.level, optname, value)
        except OSError as e:
            self._refused(optname, e)

    def _refused(self, optname: int, e: OSError) -> NoReturn:
        raise KernelError(
            _explain(self.family, optname, e.errno or 0),
            _OPNAMES.get(optname, "?"),
            e.errno or 0,
        ) from None

    def add_vif(self, vifi: int, ifindex: int, threshold: int) -> None:
        if self.family == 4:
            data = VIFCTL.pack(vifi, VIFF_USE_IFINDEX, threshold, 0, ifindex, b"\0" * 4)
        elif ifindex > 0xFFFF:
            raise KernelError(
                f"IPv6 cannot route through interface index {ifindex}: the kernel's mif6ctl"
                " holds at most 65535 (re-create the interface to get a lower index)",
                "MRT6_ADD_MIF",
                0,
            )
        else:
            data = MIF6CTL.pack(vifi, 0, threshold, ifindex, 0)
        self._setsockopt(MRT_ADD_VIF, data)

    def del_vif(self, vifi: int) -> None:
        if self.family == 4:
            data = VIFCTL.pack(vifi, 0, 0, 0, 0, b"\0" * 4)
        else:
            data = MIF6CTL.pack(vifi, 0, 0, 0, 0)
        self._setsockopt(MRT_DEL_VIF, data)

    def _mfc(
        self, source: str, group: str, parent: int, oifs: tuple[tuple[int, int], ...]
    ) -> bytes:
        if self.family == 4:
            src, grp = _pton(_AF_INET, source), _pton(_AF_INET, group)
            return MFCCTL.pack(src, grp, parent, self._ttls_of(oifs), 0, 0, 0, 0)
        words = [0] * 8
        for vifi, _ttl in oifs:  # IPv6 has no per-entry thresholds: a set bit means forward
            words[vifi >> 5] |= 1 << (vifi & 31)
        return MF6CCTL.pack(_sin6(source), _sin6(group), parent, IF_SET.pack(*words))

    def _ttls_of(self, oifs: Oifs) -> bytes:
        """mfcctl.mfcc_ttls: each oif's threshold at its VIF index; built once per oif set, as
        100,000 entries share a few sets."""
        ttls = self._ttls.get(oifs)
        if ttls is None:
            array = bytearray(32)
            for vifi, ttl in oifs:
                array[vifi] = ttl
            ttls = bytes(array)
            if len(self._ttls) < 4096:
                self._ttls[oifs] = ttls
        return ttls

    def add_mfc(self, source: str, group: str, parent: int, oifs: Oifs) -> None:
        data = self._mfc(source, group, parent, oifs)
        try:  # not _setsockopt: the one call made per route, so one Python call less
            self.sock.setsockopt(self.level, MRT_ADD_MFC, data)
        except OSError as e:
            self._refused(MRT_ADD_MFC, e)

    def del_mfc(self, source: str, group: str) -> None:
        self._setsockopt(MRT_DEL_MFC, self._mfc(source, group, 0, ()))

    def sg_counters(self, source: str, group: str) -> SgCounters | None:
        """The (S,G) entry's counters, or None when the kernel has no such entry."""
        if self.family == 4:
            src = socket.inet_pton(socket.AF_INET, source)
            grp = socket.inet_pton(socket.AF_INET, group)
            req, layout = SIOC_SG_REQ.pack(src, grp, 0, 0, 0), SIOC_SG_REQ
        else:
            req, layout = SIOC_SG_REQ6.pack(_sin6(source), _sin6(group), 0, 0, 0), SIOC_SG_REQ6
        buf = bytearray(req)
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, buf, True)
        except OSError:
            return None
        _, _, packets, nbytes, wrong_if = layout.unpack(buf)
        return SgCounters(packets, nbytes, wrong_if)

    def vif_counters(self, vifi: int) -> VifCounters | None:
        buf = bytearray(SIOC_VIF_REQ.pack(vifi, 0, 0, 0, 0))
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETVIFCNT, buf, True)
        except OSError:
            return None
        _, icount, ocount, ibytes, obytes = SIOC_VIF_REQ.unpack(buf)
        return VifCounters(icount, ocount, ibytes, obytes)

    def drain(self, limit: int = 1024) -> int:
        """Read and discard what is queued (upcalls, IGMP/MLD); return how many messages.

        At most `limit` per call, so a flood cannot starve the event loop; the socket stays
        readable and the loop calls again.
        """
        for count in range(limit):
            try:
                self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return count
        return limit

    def close(self) -> None:
        """MRT_DONE, then close: the kernel removes this socket's VIFs and MFC entries."""
        if self.sock.fileno() < 0:
            return
        # If MRT_DONE fails, closing the socket flushes the table all the same.
        with contextlib.suppress(OSError):
            self.sock.setsockopt(self.level, MRT_DONE, struct.pack("=i", 1))
        self.sock.close()


def _sin6(address: str) -> bytes:
    return SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, address), 0)


class Kernel:
    """Both families' sockets; applies model steps all-or-nothing."""

    def __init__(self, families: Iterable[int], table: int | None = None) -> None:
        self.sockets: dict[int, MrouteSocket] = {}
        try:
            for family in families:
                self.sockets[family] = MrouteSocket(family, table)
        except BaseException:
            self.close()
            raise

    def apply(self, op: KernelOp) -> None:
        sock = self.sockets.get(op.family)
        if sock is None:
            raise KernelError(
                f"{family_name(op.family)} is disabled in the configuration", "config", 0
            )
        if type(op) is AddMfc:  # by far the most common: tested first, and cheaply
            sock.add_mfc(op.source, op.group, op.parent, op.oifs)
            return
        match op:
            case AddVif():
                sock.add_vif(op.vifi, op.ifindex, op.threshold)
            case DelVif():
                sock.del_vif(op.vifi)
            case DelMfc():
                sock.del_mfc(op.source, op.group)

    def execute(self, steps: Sequence[Step]) -> None:
        """Apply every step; if one fails, undo the ones already applied and re-raise.

        Failures of the undo itself are attached to the error as `undo_failures`.
        """
        done = 0
        try:
            for step in steps:
                self.apply(step.op)
                done += 1
        except KernelError as e:
            e.undo_failures = self.undo([step.undo for step in steps[:done]])
            raise
        except Exception as e:  # a value the kernel structures cannot hold, say: undo all the same
            error = KernelError(f"cannot apply {steps[done].action}: {e}", "encode", 0)
            error.undo_failures = self.undo([step.undo for step in steps[:done]])
            raise error from e

    def undo(self, ops: Sequence[KernelOp | None]) -> list[KernelError]:
        """Apply the undo operations of applied steps, newest first (None: nothing to undo);
        go on past failures and return them."""
        failures = []
        for op in reversed(ops):
            if op is None:
                continue
            try:
                self.apply(op)
            except KernelError as e:
                failures.append(e)
        return failures

    def sg_counters(self, family: int, source: str, group: str) -> SgCounters | None:
        sock = self.sockets.get(family)
        return sock.sg_counters(source, group) if sock else None

    def vif_counters(self, family: int, vifi: int) -> VifCounters | None:
        sock = self.sockets.get(family)
        return sock.vif_counters(vifi) if sock else None

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
