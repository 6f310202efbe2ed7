"""Shared plumbing for the kernel experiments: private namespaces, veth links, uapi structs."""

# Every experiment imports this module from its own directory (run them as
# `python3 dev/kernel_experiments/<name>.py`, as root).  Namespaces are named
# kx<random>-<role>; they and every child process are removed on exit, on an
# exception and on SIGTERM/SIGINT.  Nothing outside those namespaces is changed.

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

# --- uapi constants (linux/mroute.h, linux/mroute6.h, linux/in.h, linux/in6.h) ------------------

MRT_INIT, MRT_DONE, MRT_ADD_VIF, MRT_DEL_VIF, MRT_ADD_MFC, MRT_DEL_MFC = range(200, 206)
MRT_ASSERT, MRT_PIM, MRT_TABLE = 207, 208, 209
SIOCGETVIFCNT, SIOCGETSGCNT = 0x89E0, 0x89E1
VIFF_USE_IFINDEX = 0x8
IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF = 1, 2
MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP, MCAST_JOIN_SOURCE_GROUP = 42, 45, 46
IP_ADD_MEMBERSHIP = 35
IPV6_JOIN_GROUP = 20
SO_ATTACH_FILTER = 26

# struct vifctl, by ifindex: vifi, flags, threshold, rate_limit, lcl_ifindex, rmt_addr
VIFCTL = struct.Struct("=HBBIi4s")
# struct mfcctl: origin, mcastgrp, parent, ttls[32], pad, pkt_cnt, byte_cnt, wrong_if, expire
MFCCTL = struct.Struct("=4s4sH32s2xIIIi")
# struct sioc_sg_req: src, grp, then three unsigned long (8 bytes on x86_64)
SIOC_SG_REQ = struct.Struct("=4s4sQQQ")
# struct igmpmsg: unused1, unused2, im_msgtype, im_mbz, im_vif, im_vif_hi, im_src, im_dst
IGMPMSG = struct.Struct("=IIBBBB4s4s")
# struct sockaddr_in6: family, port (big endian), flowinfo, addr, scope_id
SOCKADDR_IN6 = struct.Struct("=H2sI16sI")
# struct mif6ctl: mifi, flags, threshold, pifi (ifindex), pad, rate_limit
MIF6CTL = struct.Struct("=HBBH2xI")
# struct mf6cctl: origin, mcastgrp, parent, pad, if_set (8 x u32)
MF6CCTL = struct.Struct("=28s28sH2x32s")
# struct sioc_sg_req6: src, grp, pktcnt, bytecnt, wrong_if
SIOC_SG_REQ6 = struct.Struct("=28s28sQQQ")
# struct mrt6msg: im6_mbz, im6_msgtype, im6_mif, im6_pad, im6_src, im6_dst
MRT6MSG = struct.Struct("=BBHI16s16s")
# struct group_req: u32 gr_interface, 4 bytes of padding (sockaddr_storage is 8-aligned), group
GROUP_REQ = struct.Struct("=I4x128s")
# struct group_source_req: u32 interface, pad, group, source
GROUP_SOURCE_REQ = struct.Struct("=I4x128s128s")
# struct ip_mreqn: multiaddr, address, ifindex
IP_MREQN = struct.Struct("=4s4si")
# struct ipv6_mreq: multiaddr, ifindex
IPV6_MREQ = struct.Struct("=16si")

for _s, _size in (
    (VIFCTL, 16),
    (MFCCTL, 60),
    (SIOC_SG_REQ, 32),
    (IGMPMSG, 20),
    (SOCKADDR_IN6, 28),
    (MIF6CTL, 12),
    (MF6CCTL, 92),
    (SIOC_SG_REQ6, 80),
    (MRT6MSG, 40),
    (GROUP_REQ, 136),
    (GROUP_SOURCE_REQ, 264),
    (IP_MREQN, 12),
    (IPV6_MREQ, 20),
):
    assert _s.size == _size, (_s.format, _s.size, _size)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def say(key: str, value: object) -> None:
    """Print one observation as `key: value` (the docs quote these lines)."""
    print(f"{key}: {value}", flush=True)


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def try_call(fn: object, *args: object) -> str:
    """Call fn(*args) and return "OK" or the errno name it raised."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return errname(exc)
    return "OK"


def run(*cmd: str, check: bool = True) -> str:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def sockaddr_in(addr: str) -> bytes:
    """A struct sockaddr_in padded to sockaddr_storage (128 bytes)."""
    return struct.pack("=H2s4s", socket.AF_INET, b"\0\0", socket.inet_aton(addr)).ljust(128, b"\0")


def sockaddr_in6(addr: str) -> bytes:
    return SOCKADDR_IN6.pack(
        socket.AF_INET6, b"\0\0", 0, socket.inet_pton(socket.AF_INET6, addr), 0
    )


def group_req(ifindex: int, group: str) -> bytes:
    if ":" in group:
        return GROUP_REQ.pack(ifindex, sockaddr_in6(group).ljust(128, b"\0"))
    return GROUP_REQ.pack(ifindex, sockaddr_in(group))


def group_source_req(ifindex: int, group: str, source: str) -> bytes:
    if ":" in group:
        g, s = sockaddr_in6(group).ljust(128, b"\0"), sockaddr_in6(source).ljust(128, b"\0")
    else:
        g, s = sockaddr_in(group), sockaddr_in(source)
    return GROUP_SOURCE_REQ.pack(ifindex, g, s)


class Lab:
    """Namespaces created on demand; all removed by close() (also on signals)."""

    def __init__(self) -> None:
        self.prefix = f"kx{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        _setns(self._home)
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    # --- namespaces and links -------------------------------------------------------------------

    def netns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        # Per-namespace sysctls: addresses usable at once, no DAD delay.
        self.sh(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
        self.sh(name, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        return name

    def sh(self, ns: str, *cmd: str, check: bool = True) -> str:
        return run("ip", "netns", "exec", ns, *cmd, check=check)

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        return run("ip", "-n", ns, *args, check=check)

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        tmp = f"{self.prefix}{secrets.token_hex(2)}"
        run(
            "ip",
            "link",
            "add",
            tmp,
            "netns",
            ns_a,
            "type",
            "veth",
            "peer",
            "name",
            if_b,
            "netns",
            ns_b,
        )
        self.ip(ns_a, "link", "set", tmp, "name", if_a)
        self.ip(ns_a, "link", "set", if_a, "up")
        self.ip(ns_b, "link", "set", if_b, "up")

    def addr(self, ns: str, ifname: str, *cidrs: str) -> None:
        for cidr in cidrs:
            extra = ["nodad"] if ":" in cidr else []
            self.ip(ns, "addr", "add", cidr, "dev", ifname, *extra)

    def ifindex(self, ns: str, ifname: str) -> int:
        with self.inside(ns):
            return socket.if_nametoindex(ifname)

    def read(self, ns: str, path: str) -> str:
        return self.sh(ns, "cat", path)

    @contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run the block with this thread in namespace ns (sockets keep their namespace)."""
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(fd)
            yield
        finally:
            os.close(fd)
            _setns(self._home)

    def sock(self, ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        with self.inside(ns):
            return socket.socket(family, kind, proto)

    def spawn(self, ns: str, code: str) -> subprocess.Popen[bytes]:
        """Run a Python snippet in ns as a separate process (killed on close)."""
        child = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code], stdout=subprocess.PIPE
        )
        self.children.append(child)
        return child

    def pair(self, subnet: int, host_addrs: bool = True) -> tuple[str, str]:
        """host(j0) -- (p0)peer on 198.18.<subnet>.0/24 and 2001:db8:<subnet hex>::/64.

        The peer is .2/::2 and sends multicast out of p0; the host is .1/::1 unless
        host_addrs is False (then j0 has no IPv4 address and only its IPv6 link-local).
        """
        host, peer = self.netns("host"), self.netns("peer")
        self.veth(host, "j0", peer, "p0")
        if host_addrs:
            self.addr(host, "j0", f"198.18.{subnet}.1/24", f"2001:db8:{subnet:x}::1/64")
        self.addr(peer, "p0", f"198.18.{subnet}.2/24", f"2001:db8:{subnet:x}::2/64")
        self.ip(peer, "route", "add", "224.0.0.0/4", "dev", "p0")
        return host, peer

    # --- a router between a sender and receivers ------------------------------------------------

    def router_lab(self, receivers: int = 1, tag: str = "") -> tuple[str, str, list[str]]:
        """snd(s0) -- (r0)rtr(r1..rN) -- (x0)rxK; link k is 198.18.k.0/24, 2001:db8:k::/64."""
        snd, rtr = self.netns(f"snd{tag}"), self.netns(f"rtr{tag}")
        self.veth(snd, "s0", rtr, "r0")
        self.addr(snd, "s0", "198.18.0.2/24", "2001:db8:0::2/64")
        self.addr(rtr, "r0", "198.18.0.1/24", "2001:db8:0::1/64")
        self.ip(snd, "route", "add", "224.0.0.0/4", "dev", "s0")
        rxs = []
        for k in range(1, receivers + 1):
            rx = self.netns(f"rx{k}{tag}")
            self.veth(rtr, f"r{k}", rx, "x0")
            self.addr(rtr, f"r{k}", f"198.18.{k}.1/24", f"2001:db8:{k}::1/64")
            self.addr(rx, "x0", f"198.18.{k}.2/24", f"2001:db8:{k}::2/64")
            rxs.append(rx)
        return snd, rtr, rxs

    # --- traffic ----------------------------------------------------------------------------------

    def sender(self, ns: str, family: int, ifname: str = "s0") -> socket.socket:
        s = self.sock(ns, family, socket.SOCK_DGRAM)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 8)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex(ns, ifname))
        return s

    def receiver(self, ns: str, group: str, port: int, ifname: str = "x0") -> socket.socket:
        family = socket.AF_INET6 if ":" in group else socket.AF_INET
        s = self.sock(ns, family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((group, port))
        idx = self.ifindex(ns, ifname)
        if family == socket.AF_INET:
            mreq = IP_MREQN.pack(socket.inet_aton(group), b"\0" * 4, idx)
            s.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreq)
        else:
            mreq6 = IPV6_MREQ.pack(socket.inet_pton(socket.AF_INET6, group), idx)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_JOIN_GROUP, mreq6)
        s.setblocking(False)
        return s


def send(
    s: socket.socket, group: str, port: int, n: int, *, gap: float = 0.0, tag: int = 0
) -> None:
    """Send n datagrams numbered tag*1e6+i (4-byte payload)."""
    for i in range(n):
        s.sendto(struct.pack("!I", tag * 1_000_000 + i), (group, port))
        if gap:
            time.sleep(gap)


def drain(s: socket.socket, wait: float = 0.5) -> list[int]:
    """Read what s has queued (waiting up to `wait` s for late packets); payload numbers."""
    got: list[int] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        got.append(struct.unpack("!I", data[:4])[0] if len(data) >= 4 else -1)
        deadline = time.monotonic() + wait / 5
    return got


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --- multicast routing sockets --------------------------------------------------------------------


def mroute4(lab: Lab, ns: str, table: int | None = None, init: bool = True) -> socket.socket:
    s = lab.sock(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    if table is not None:
        s.setsockopt(socket.IPPROTO_IP, MRT_TABLE, struct.pack("=I", table))
    if init:
        s.setsockopt(socket.IPPROTO_IP, MRT_INIT, struct.pack("=i", 1))
    return s


def mroute6(lab: Lab, ns: str, table: int | None = None, init: bool = True) -> socket.socket:
    s = lab.sock(ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    if table is not None:
        s.setsockopt(socket.IPPROTO_IPV6, MRT_TABLE, struct.pack("=I", table))
    if init:
        s.setsockopt(socket.IPPROTO_IPV6, MRT_INIT, struct.pack("=i", 1))
    return s


def add_vif(s: socket.socket, vifi: int, ifindex: int, threshold: int = 1) -> None:
    if s.family == socket.AF_INET:
        opt = VIFCTL.pack(vifi, VIFF_USE_IFINDEX, threshold, 0, ifindex, b"\0" * 4)
        s.setsockopt(socket.IPPROTO_IP, MRT_ADD_VIF, opt)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, MRT_ADD_VIF, MIF6CTL.pack(vifi, 0, threshold, ifindex, 0))


def mfc(src: str, grp: str, parent: int, oifs: list[int]) -> bytes:
    """The MRT_ADD_MFC / MRT6_ADD_MFC argument for (src, grp) with these oif vifs."""
    if ":" in grp:
        bits = 0
        for v in oifs:
            bits |= 1 << v
        ifset = struct.pack("=8I", *((bits >> (32 * k)) & 0xFFFFFFFF for k in range(8)))
        return MF6CCTL.pack(sockaddr_in6(src), sockaddr_in6(grp), parent, ifset)
    ttls = bytes(1 if v in oifs else 0 for v in range(32))
    return MFCCTL.pack(socket.inet_aton(src), socket.inet_aton(grp), parent, ttls, 0, 0, 0, 0)


def add_mfc(s: socket.socket, src: str, grp: str, parent: int, oifs: list[int]) -> None:
    level = socket.IPPROTO_IP if s.family == socket.AF_INET else socket.IPPROTO_IPV6
    s.setsockopt(level, MRT_ADD_MFC, mfc(src, grp, parent, oifs))


def sg_count(s: socket.socket, src: str, grp: str) -> tuple[int, int, int]:
    """SIOCGETSGCNT(_IN6): (packets, bytes, wrong_if); raises OSError if absent."""
    import fcntl  # noqa: PLC0415 - only the counters need it

    if s.family == socket.AF_INET:
        buf = bytearray(SIOC_SG_REQ.pack(socket.inet_aton(src), socket.inet_aton(grp), 0, 0, 0))
        fcntl.ioctl(s.fileno(), SIOCGETSGCNT, buf, True)
        return SIOC_SG_REQ.unpack(buf)[2:]
    buf = bytearray(SIOC_SG_REQ6.pack(sockaddr_in6(src), sockaddr_in6(grp), 0, 0, 0))
    fcntl.ioctl(s.fileno(), SIOCGETSGCNT, buf, True)
    return SIOC_SG_REQ6.unpack(buf)[2:]


def upcalls(s: socket.socket, wait: float = 0.3) -> list[tuple[int, int, str, str, int]]:
    """Drain s and decode kernel upcalls: (msgtype, vif, src, dst, recv length)."""
    out = []
    s.setblocking(False)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if s.family == socket.AF_INET:
            if len(data) < IGMPMSG.size or data[9] != 0:  # im_mbz != 0: a real IGMP packet
                continue
            _, _, kind, _, vif, vif_hi, src, dst = IGMPMSG.unpack_from(data)
            out.append(
                (kind, vif | vif_hi << 8, socket.inet_ntoa(src), socket.inet_ntoa(dst), len(data))
            )
        else:
            if len(data) < MRT6MSG.size or data[0] != 0:  # im6_mbz != 0: real ICMPv6
                continue
            _, kind, mif, _, src6, dst6 = MRT6MSG.unpack_from(data)
            a = socket.inet_ntop(socket.AF_INET6, src6)
            b = socket.inet_ntop(socket.AF_INET6, dst6)
            out.append((kind, mif, a, b, len(data)))
    return out


# --- IGMP / MLD reports seen on the wire ---------------------------------------------------------

ETH_P_ALL = 0x0003


def capture_socket(lab: Lab, ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on ns/ifname; read it later with reports()."""
    s = lab.sock(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with lab.inside(ns):
        s.bind((ifname, ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    return s


Record = tuple[int, str, list[str]]  # (record type, group, sources)


def reports(s: socket.socket) -> list[tuple[str, str, list[Record]]]:
    """Decode the IGMP and MLD reports queued on a capture socket: (src, kind, records)."""
    out: list[tuple[str, str, list[Record]]] = []
    while True:
        try:
            frame, addr = s.recvfrom(65536)
        except BlockingIOError:
            return out
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        kind = struct.unpack_from("!H", frame, 12)[0]
        if kind == 0x0800 and frame[14 + 9] == 2:
            ihl = (frame[14] & 15) * 4
            src = socket.inet_ntoa(frame[26:30])
            out.append((src, *_igmp(frame[14 + ihl :])))
        elif kind == 0x86DD and frame[14 + 6] == 0:  # hop-by-hop first: MLD
            hbh = 54 + (frame[54 + 1] + 1) * 8
            if frame[54] == 58:
                src = socket.inet_ntop(socket.AF_INET6, frame[22:38])
                out.append((src, *_mld(frame[hbh:])))


def _igmp(msg: bytes) -> tuple[str, list[Record]]:
    if msg[0] != 0x22:
        names = {0x11: "query", 0x16: "v2-report", 0x17: "v2-leave"}
        return names.get(msg[0], hex(msg[0])), [(0, socket.inet_ntoa(msg[4:8]), [])]
    recs: list[Record] = []
    pos, count = 8, struct.unpack_from("!H", msg, 6)[0]
    for _ in range(count):
        rtype, aux, nsrc = struct.unpack_from("!BBH", msg, pos)
        grp = socket.inet_ntoa(msg[pos + 4 : pos + 8])
        srcs = [socket.inet_ntoa(msg[pos + 8 + 4 * k : pos + 12 + 4 * k]) for k in range(nsrc)]
        recs.append((rtype, grp, srcs))
        pos += 8 + 4 * nsrc + 4 * aux
    return "igmpv3-report", recs


def _mld(msg: bytes) -> tuple[str, list[Record]]:
    if msg[0] != 143:
        return {130: "mld-query", 131: "mldv1-report", 132: "mldv1-done"}.get(
            msg[0], str(msg[0])
        ), []
    recs: list[Record] = []
    pos, count = 8, struct.unpack_from("!H", msg, 6)[0]
    ntop = socket.inet_ntop
    for _ in range(count):
        rtype, aux, nsrc = struct.unpack_from("!BBH", msg, pos)
        grp = ntop(socket.AF_INET6, msg[pos + 4 : pos + 20])
        srcs = [
            ntop(socket.AF_INET6, msg[pos + 20 + 16 * k : pos + 36 + 16 * k]) for k in range(nsrc)
        ]
        recs.append((rtype, grp, srcs))
        pos += 20 + 16 * nsrc + 4 * aux
    return "mldv2-report", recs
