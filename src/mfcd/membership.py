"""Group memberships in the kernel: RFC 3678 MCAST_JOIN_(SOURCE_)GROUP by interface index.

The kernel's IGMP and MLD code does the protocol work (reports, answers to queries,
leaves); mfcd only holds the memberships, on sockets of its own.  A socket holds a
limited number: `net.ipv4.igmp_max_memberships` IPv4 groups (20 by default), IPv6 groups
up to what `net.core.optmem_max` allows (about 2,300), and 10 (IPv4) or 64 (IPv6)
sources per group.  The 21st join answers ENOBUFS (IPv6: ENOMEM); mfcd then opens
another socket rather than asking anyone to change a sysctl, so 10,000 joins take 500
IPv4 sockets.  The sockets are unbound UDP sockets with a drop-all BPF filter: they
pull the group's traffic toward the host without ever queueing a datagram of it.
Memberships end with the process, even after SIGKILL (docs/kernel.md, C.5).

The structures (laid out in uapi.py) are packed by pure functions, unit-tested.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import socket
from collections.abc import Container, Iterable, Sequence
from typing import Any

from mfcd.errors import KernelError
from mfcd.groups import ANY_SOURCE, JoinKey, MembershipOp, describe_key, family_of
from mfcd.uapi import (
    GROUP_REQ,
    GROUP_SOURCE_REQ,
    IFF_RUNNING,
    IFF_UP,
    IFREQ_FLAGS,
    SIOCGIFFLAGS,
    SO_ATTACH_FILTER,
    SOCK_FILTER,
    SOCK_FPROG,
    SOCKADDR_IN,
    SOCKADDR_IN6,
    SOCKADDR_STORAGE,
)

# linux/in.h (IPPROTO_IP) and linux/in6.h (IPPROTO_IPV6) use the same numbers.
MCAST_JOIN_GROUP = 42
MCAST_BLOCK_SOURCE = 43
MCAST_UNBLOCK_SOURCE = 44
MCAST_LEAVE_GROUP = 45
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47
# A socket is full when the kernel answers one of these to a join: IPv4 groups and the
# sources of a group (both families) give ENOBUFS, IPv6 groups ENOMEM.
FULL = (errno.ENOBUFS, errno.ENOMEM)
_LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def sockaddr(family: int, address: str) -> bytes:
    """A sockaddr_in or sockaddr_in6 (port 0) in a zeroed sockaddr_storage."""
    packed = socket.inet_pton(_AF[family], address)
    if family == 4:
        raw = SOCKADDR_IN.pack(socket.AF_INET, 0, packed)
    else:
        raw = SOCKADDR_IN6.pack(socket.AF_INET6, 0, 0, packed, 0)
    return raw.ljust(SOCKADDR_STORAGE, b"\0")


def group_req(ifindex: int, family: int, group: str) -> bytes:
    return GROUP_REQ.pack(ifindex, sockaddr(family, group))


def group_source_req(ifindex: int, family: int, group: str, source: str) -> bytes:
    return GROUP_SOURCE_REQ.pack(ifindex, sockaddr(family, group), sockaddr(family, source))


def request(op: MembershipOp) -> tuple[int, int, bytes]:
    """The (level, option, value) of the setsockopt that carries out `op`."""
    _, group, source = op.key
    family = 6 if ":" in group else 4
    if source == ANY_SOURCE:
        option = MCAST_JOIN_GROUP if op.join else MCAST_LEAVE_GROUP
        return _LEVEL[family], option, group_req(op.ifindex, family, group)
    option = MCAST_JOIN_SOURCE_GROUP if op.join else MCAST_LEAVE_SOURCE_GROUP
    return _LEVEL[family], option, group_source_req(op.ifindex, family, group, source)


def drop_all_program() -> ctypes.Array[ctypes.c_char]:
    """The classic BPF program `ret #0` (accept no byte of any packet)."""
    return ctypes.create_string_buffer(SOCK_FILTER.pack(0x06, 0, 0, 0))  # BPF_RET|BPF_K


_DROP_ALL = drop_all_program()  # kept alive: the kernel copies it at attach time anyway


class Memberships:
    """The join sockets of both families and which socket holds each membership."""

    def __init__(self) -> None:
        self.sockets: dict[int, list[socket.socket]] = {4: [], 6: []}
        self.room: dict[int, list[socket.socket]] = {4: [], 6: []}  # not known to be full
        self.held: dict[JoinKey, socket.socket] = {}
        self.count: dict[int, int] = {}  # fileno -> memberships held
        # fileno -> (group, ifindex) -> [any source?, memberships]: a socket never holds one
        # group on one interface both for any source and for some sources (the kernel
        # would refuse the one, or worse, take an SSM leave for a leave of the ASM join).
        self.groups: dict[int, dict[tuple[str, int], list[Any]]] = {}

    def apply(self, ops: Sequence[MembershipOp]) -> None:
        """Carry out `ops` in order, all or nothing: if the kernel refuses one, those before
        it are undone and KernelError says which one and why."""
        for done, op in enumerate(ops):
            try:
                self.one(op)
            except KernelError as e:
                for earlier in reversed(ops[:done]):
                    try:
                        self.one(earlier.inverse)
                    except KernelError as failure:
                        e.undo_failures.append(failure)
                e.applied = done
                raise

    def one(self, op: MembershipOp) -> None:
        if op.join:
            self._join(op)
        else:
            self._leave(op)

    def _join(self, op: MembershipOp) -> None:
        family = 6 if ":" in op.key[1] else 4
        level, option, value = request(op)
        room = self.room[family]
        group, asm = (op.key[1], op.ifindex), op.key[2] == ANY_SOURCE
        while True:
            sock = self._fitting(room, group, asm) or self._open(family)
            try:
                sock.setsockopt(level, option, value)
            except OSError as e:
                if e.errno in FULL and self.count.get(sock.fileno(), 0):
                    room.remove(sock)  # full: try the next one (or a new one)
                    continue
                raise _error(op, e) from None
            fd = sock.fileno()
            self.held[op.key] = sock
            self.count[fd] = self.count.get(fd, 0) + 1
            self.groups.setdefault(fd, {}).setdefault(group, [asm, 0])[1] += 1
            return

    def _fitting(
        self, room: list[socket.socket], group: tuple[str, int], asm: bool
    ) -> socket.socket | None:
        """The newest socket with room that may take a join of `group` (None: open one)."""
        for sock in reversed(room):
            held = self.groups.get(sock.fileno(), {}).get(group)
            if held is None or not (asm or held[0]):  # sources join sources of a group
                return sock
        return None

    def _leave(self, op: MembershipOp) -> None:
        sock = self.held.pop(op.key, None)
        if sock is None:
            return  # never held (a join the kernel refused earlier): nothing to do
        level, option, value = request(op)
        try:
            sock.setsockopt(level, option, value)
        except OSError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.EINVAL):
                self.held[op.key] = sock
                raise _error(op, e) from None
            # The device is gone and took the membership with it. A source leave cannot
            # name a device that no longer exists; a group leave still clears the
            # socket's record of it, which would otherwise count toward its limit.
            if op.key[2] != ANY_SOURCE:
                group_leave = (op.key[0], op.key[1], ANY_SOURCE)
                level, _, value = request(MembershipOp(False, group_leave, op.ifindex))
                with contextlib.suppress(OSError):
                    sock.setsockopt(level, MCAST_LEAVE_GROUP, value)
        self._release(sock, op, 6 if ":" in op.key[1] else 4)

    def _release(self, sock: socket.socket, op: MembershipOp, family: int) -> None:
        fd = sock.fileno()
        groups = self.groups[fd]
        held = groups[(op.key[1], op.ifindex)]
        held[1] -= 1
        if not held[1]:
            del groups[(op.key[1], op.ifindex)]
        self.count[fd] -= 1
        if self.count[fd] == 0:
            del self.count[fd], self.groups[fd]
            self.sockets[family].remove(sock)
            if sock in self.room[family]:
                self.room[family].remove(sock)
            sock.close()
        elif sock not in self.room[family]:
            self.room[family].insert(0, sock)  # room again, tried after the newest

    def _open(self, family: int) -> socket.socket:
        try:
            try:
                sock = socket.socket(_AF[family], socket.SOCK_DGRAM)
            except OSError as e:
                if e.errno != errno.EMFILE or not _more_files():
                    raise
                sock = socket.socket(_AF[family], socket.SOCK_DGRAM)
        except OSError as e:
            raise KernelError(
                f"cannot open a socket for group joins: {e.strerror}", "join", e.errno or 0
            ) from None
        # Unbound, it receives nothing already; the filter makes sure it never queues the
        # joined traffic even if something binds it later.
        fprog = SOCK_FPROG.pack(1, ctypes.addressof(_DROP_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self.sockets[family].append(sock)
        self.room[family].append(sock)
        return sock

    def socket_count(self) -> int:
        return len(self.sockets[4]) + len(self.sockets[6])

    def close(self) -> None:
        """Leave every group (the kernel sends the leaves as the sockets close)."""
        for family in (4, 6):
            for sock in self.sockets[family]:
                sock.close()
            self.sockets[family].clear()
            self.room[family].clear()
        self.held.clear()
        self.count.clear()
        self.groups.clear()


# --- what the kernel filters on: /proc/net/mcfilter and mcfilter6 ------------------------------

# A source the kernel filters on for an interface: (ifindex, group, source), the addresses
# packed (4 or 16 bytes): compared as bytes, not as text (an IPv4-mapped source has two
# spellings, say).
SourceFilter = tuple[int, bytes, bytes]
MCFILTER = {4: "/proc/net/mcfilter", 6: "/proc/net/mcfilter6"}


def parse_source_filters(family: int, text: str) -> set[SourceFilter]:
    """The sources included (INC > 0) in /proc/net/mcfilter (family 4: "IDX DEV 0xGROUP
    0xSOURCE INC EXC", addresses as host-order numbers) or mcfilter6 (32 hex digits each)."""
    found: set[SourceFilter] = set()
    packed = _ipv4 if family == 4 else bytes.fromhex
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) != 6 or not fields[4].isdigit() or fields[4] == "0":
            continue
        index, _, group, source = fields[:4]
        found.add((int(index), packed(group), packed(source)))
    return found


def _ipv4(text: str) -> bytes:
    return int(text, 16).to_bytes(4, "big")


def missing_sources(
    joined: Iterable[tuple[JoinKey, int]], held: Container[SourceFilter]
) -> list[JoinKey]:
    """The SSM joins (key, ifindex) whose source the kernel does not filter on."""
    missing = []
    for key, ifindex in joined:
        af = _AF[family_of(key)]
        if (ifindex, socket.inet_pton(af, key[1]), socket.inet_pton(af, key[2])) not in held:
            missing.append(key)
    return missing


def lost_sources(joined: Sequence[tuple[JoinKey, int]]) -> list[JoinKey]:
    """missing_sources against /proc/net/mcfilter and mcfilter6 now (both: a join is made
    whatever families mfcd routes; a missing file, IPv6 disabled on the host, holds none).
    Runs in a thread: with 20,000 joins the files are some 100 ms to read and parse."""
    held: set[SourceFilter] = set()
    for family in (4, 6):
        try:
            with open(MCFILTER[family], encoding="ascii") as f:
                held |= parse_source_filters(family, f.read())
        except FileNotFoundError:
            continue
    return missing_sources(joined, held)


def interface_flags(name: str) -> int | None:
    """SIOCGIFFLAGS of `name` in this network namespace; None if it does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            data = fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(os.fsencode(name), 0))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO, errno.EINVAL):
                return None
            raise
    flags: int = IFREQ_FLAGS.unpack(data)[1]
    return flags


def link_running(name: str) -> bool:
    """Whether the interface is up and has its carrier (SIOCGIFFLAGS): a join's sources come
    back only then; False if it is gone."""
    try:
        flags = interface_flags(name)
    except (OSError, UnicodeError):
        return False
    return flags is not None and flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING


def _more_files() -> bool:
    """Raise the soft limit of open files to the hard one (10,000 IPv4 joins take 500
    sockets; the usual soft limit is 1,024); False if it is there already."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= hard:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return True


def _error(op: MembershipOp, e: OSError) -> KernelError:
    what = "join" if op.join else "leave"
    why = e.strerror or os.strerror(e.errno or 0)
    hint = ""
    if e.errno == errno.ENODEV:
        hint = "; the interface is gone"
    elif e.errno in FULL:
        hint = "; the kernel's per-socket limit (net.ipv4.igmp_max_msf or mld_max_msf) is hit"
    return KernelError(
        f"the kernel refused to {what} {describe_key(op.key)}: {why}{hint}", what, e.errno or 0
    )
