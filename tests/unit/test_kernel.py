"""Tests for mfcd.kernel's pure packing and parsing, and for the Dataplane implementations."""

from __future__ import annotations

import errno
import fcntl
import inspect
import socket
import struct

import pytest

from mfcd import kernel, uapi
from mfcd.dataplane import Dataplane, ObservedVif, SgCounters, Upcall, VifCounters
from mfcd.errors import KernelError
from mfcd.kernel import Kernel
from tests.unit.conftest import FakeKernel


def test_fdnames_say_family_and_table_and_nothing_else_parses() -> None:
    for family, table in ((4, 253), (6, 254), (4, 100), (6, 0xFFFFFFFF)):
        assert kernel.parse_fdname(kernel.fdname(family, table)) == (family, table)
    assert kernel.fdname(4, 253) == "mrt4-253"
    for name in (
        "unknown",
        "stored",
        "mrt4",
        "mrt4-",
        "mrt5-253",
        "mrt4-x",
        "mrt4--1",
        "mrt4-0253",
        "mrt4-4294967296",
        "mrt4-\uff12\uff15\uff13",  # (full-width digits: isdigit() is true)
        "MRT4-253",
        "mrt4-253-1",
    ):
        assert kernel.parse_fdname(name) is None, name


def test_a_socket_that_is_not_a_raw_mroute_one_is_unfit() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert kernel.unfit(udp, 4, 253) == "not a raw IPv4 socket"
        assert kernel.unfit(udp, 6, 254) == "not a raw IPv6 socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        assert kernel.unfit(unix, 4, 253) == "not a raw IPv4 socket"


def test_vifctl_names_the_device_by_ifindex() -> None:
    data = kernel.pack_vifctl(3, 42, 5)
    assert uapi.VIFCTL.unpack(data) == (3, kernel.VIFF_USE_IFINDEX, 5, 0, 42, b"\0" * 4)


def test_mif6ctl_round_trip_and_its_16_bit_ifindex() -> None:
    assert uapi.MIF6CTL.unpack(kernel.pack_mif6ctl(7, 65535, 1)) == (7, 0, 1, 65535, 0)
    with pytest.raises(KernelError, match="65535"):
        kernel.pack_mif6ctl(7, 65536, 1)


def test_mfcctl_puts_each_threshold_at_its_vif_index() -> None:
    ttls = kernel.pack_ttls(((1, 5), (31, 1)))
    data = kernel.pack_mfcctl("198.18.0.1", "239.1.2.3", 0, ttls)
    origin, group, parent, packed, *counters = uapi.MFCCTL.unpack(data)
    assert socket.inet_ntop(socket.AF_INET, origin) == "198.18.0.1"
    assert socket.inet_ntop(socket.AF_INET, group) == "239.1.2.3"
    assert (parent, counters) == (0, [0, 0, 0, 0])
    assert packed == bytes([0, 5] + [0] * 29 + [1])


def test_mf6cctl_sets_one_bit_per_oif() -> None:
    data = kernel.pack_mf6cctl("2001:db8::2", "ff3e::1", 2, ((0, 1), (5, 1), (31, 1)))
    origin, group, parent, ifset = uapi.MF6CCTL.unpack(data)
    family, _port, _flow, address, _scope = uapi.SOCKADDR_IN6.unpack(origin)
    assert (family, socket.inet_ntop(socket.AF_INET6, address)) == (socket.AF_INET6, "2001:db8::2")
    assert socket.inet_ntop(socket.AF_INET6, uapi.SOCKADDR_IN6.unpack(group)[3]) == "ff3e::1"
    assert parent == 2
    assert uapi.IF_SET.unpack(ifset) == (1 | 1 << 5 | 1 << 31, 0, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(("family", "source"), [(4, "198.18.0.2"), (6, "2001:db8::2")])
def test_sg_request_round_trip(family: int, source: str) -> None:
    group = "239.1.1.1" if family == 4 else "ff3e::1"
    request = kernel.pack_sg_req(family, source, group)
    assert kernel.parse_sg_req(family, request) == SgCounters(0, 0, 0)
    layout = uapi.SIOC_SG_REQ if family == 4 else uapi.SIOC_SG_REQ6
    src, grp, *_ = layout.unpack(request)
    answered = layout.pack(src, grp, 10, 1500, 2)  # what the kernel writes back
    assert kernel.parse_sg_req(family, answered) == SgCounters(10, 1500, 2)


def test_vif_request_round_trip() -> None:
    assert uapi.SIOC_VIF_REQ.unpack(kernel.pack_vif_req(4)) == (4, 0, 0, 0, 0)
    answered = uapi.SIOC_VIF_REQ.pack(4, 9, 8, 900, 800)
    assert kernel.parse_vif_req(answered) == VifCounters(9, 8, 900, 800)


def igmpmsg(msgtype: int, vif: int, source: str, group: str, mbz: int = 0) -> bytes:
    """An IPv4 upcall as recv() returns it: igmpmsg over the IP header, then 8 more bytes."""
    src, dst = socket.inet_pton(socket.AF_INET, source), socket.inet_pton(socket.AF_INET, group)
    header = b"\x45\x00\x00\x1c" + b"\0" * 4 + bytes([msgtype, mbz, vif & 255, vif >> 8])
    return header + src + dst + b"\0" * 8


def test_ipv4_upcalls_are_parsed_by_kind() -> None:
    data = igmpmsg(1, 0, "198.18.0.2", "239.3.0.1")
    assert len(data) == 28  # as observed (docs/kernel.md B)
    assert kernel.parse_upcall(4, 253, data) == Upcall(
        "nocache", 4, 253, "198.18.0.2", "239.3.0.1", 0
    )
    kinds = [
        kernel.parse_upcall(4, 100, igmpmsg(t, 300, "1.2.3.4", "239.0.0.1")) for t in (2, 3, 4)
    ]
    assert [(u.kind, u.vif, u.table) for u in kinds if u] == [
        ("wrongvif", 300, 100),
        ("wholepkt", 300, 100),
        ("wrongvif", 300, 100),  # IGMPMSG_WRVIFWHOLE
    ]


def test_ipv4_igmp_packets_and_short_or_unknown_messages_are_not_upcalls() -> None:
    # A real IGMP packet: byte 9 is the IP header's protocol (2), where an upcall has im_mbz 0.
    assert kernel.parse_upcall(4, 253, igmpmsg(1, 0, "198.18.0.2", "224.0.0.1", mbz=2)) is None
    assert kernel.parse_upcall(4, 253, igmpmsg(9, 0, "198.18.0.2", "239.0.0.1")) is None
    assert kernel.parse_upcall(4, 253, igmpmsg(1, 0, "198.18.0.2", "239.0.0.1")[:19]) is None


def mrt6msg(msgtype: int, mif: int, source: str, group: str) -> bytes:
    src = socket.inet_pton(socket.AF_INET6, source)
    dst = socket.inet_pton(socket.AF_INET6, group)
    return bytes([0, msgtype]) + struct.pack("=HI", mif, 0) + src + dst


def test_ipv6_upcalls_read_only_the_first_40_bytes() -> None:
    # The kernel sends 80 bytes; 40..79 are uninitialised memory (docs/kernel.md B).
    garbage = b"password=hunter2 and other stale text!!!"
    data = mrt6msg(1, 2, "2001:db8::2", "ff3e::3:1") + garbage
    assert len(data) == 80
    upcall = kernel.parse_upcall(6, 254, data)
    assert upcall == Upcall("nocache", 6, 254, "2001:db8::2", "ff3e::3:1", 2)
    assert "hunter2" not in repr(upcall)
    assert kernel.parse_upcall(6, 254, mrt6msg(2, 1, "::1", "ff3e::1")).kind == "wrongvif"  # type: ignore[union-attr]
    assert kernel.parse_upcall(6, 254, mrt6msg(3, 1, "::1", "ff3e::1")).kind == "wholepkt"  # type: ignore[union-attr]
    assert kernel.parse_upcall(6, 254, mrt6msg(4, 1, "::1", "ff3e::1")) is None
    assert kernel.parse_upcall(6, 254, data[:39]) is None
    assert kernel.parse_upcall(6, 254, b"\x01" + data[1:]) is None  # im6_mbz must be 0


def test_mifs_are_probed_index_by_index_until_einval(monkeypatch: pytest.MonkeyPatch) -> None:
    # As Linux answers SIOCGETMIFCNT_IN6: MIFs 0 and 2, a gap at 1, nothing from 3 on.
    asked: list[int] = []

    def ioctl(fd: int, request: int, buf: bytearray, mutate: bool) -> int:
        vifi = uapi.SIOC_VIF_REQ.unpack(buf)[0]
        asked.append(vifi)
        assert request == kernel.SIOCGETVIFCNT and mutate
        if vifi >= 3:
            raise OSError(errno.EINVAL, "past the highest")
        if vifi == 1:
            raise OSError(errno.EADDRNOTAVAIL, "no such MIF")
        buf[:] = uapi.SIOC_VIF_REQ.pack(vifi, 1, 2, 3, 4 + vifi)
        return 0

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        vifs = kernel.probe_mifs(sock)
        assert vifs == {
            0: ObservedVif(None, None, VifCounters(1, 2, 3, 4)),
            2: ObservedVif(None, None, VifCounters(1, 2, 3, 6)),
        }
        assert asked == [0, 1, 2, 3]

        def refused(fd: int, request: int, buf: bytearray, mutate: bool) -> int:
            raise OSError(errno.EPERM, "not permitted")

        monkeypatch.setattr(fcntl, "ioctl", refused)
        with pytest.raises(PermissionError):
            kernel.probe_mifs(sock)


def test_proc_vifs_are_parsed_with_counters_and_the_ipv4_ifindex() -> None:
    v4 = (
        "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote\n"
        " 0 r1              190       5       380      10 00008 00000002 00000000\n"
        " 3 eth0              0       0         0       0 00000 0100A8C0 00000000\n"
    )
    vifs = kernel.parse_proc_vifs(4, v4)
    assert vifs[0] == ObservedVif("r1", 2, VifCounters(5, 10, 190, 380))
    assert vifs[3].device == "eth0" and vifs[3].ifindex is None  # by address, not ifindex
    v6 = "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags\n 3 r1   7 1 0 0 00000\n"
    assert kernel.parse_proc_vifs(6, v6) == {3: ObservedVif("r1", None, VifCounters(1, 0, 7, 0))}
    assert kernel.parse_proc_vifs(4, v4.splitlines()[0]) == {}


def _plane(plane: Dataplane) -> Dataplane:
    return plane


def test_the_fake_and_the_real_kernel_both_implement_the_dataplane_protocol() -> None:
    fake: Dataplane = FakeKernel()  # checked by mypy
    assert isinstance(_plane(fake), Dataplane)
    real: type[Dataplane] = Kernel  # checked by mypy, without opening sockets
    assert FakeKernel not in Kernel.__mro__ and Kernel not in FakeKernel.__mro__
    for name in ("apply", "observe", "counters", "events"):
        wanted = inspect.signature(getattr(Dataplane, name))
        for implementation in (FakeKernel, real):
            got = inspect.signature(getattr(implementation, name))
            assert list(got.parameters) == list(wanted.parameters), (implementation, name)


class RecordingKeeper:
    """kernel.FdKeeper that records what the store is told."""

    def __init__(self) -> None:
        self.kept: list[str] = []
        self.dropped: list[str] = []

    def keep(self, name: str, fd: int) -> bool:
        self.kept.append(name)
        return True

    def drop(self, name: str) -> None:
        self.dropped.append(name)


def test_passed_fds_released_are_closed_and_taken_out_of_the_store() -> None:
    # (socketpair ends stand in for the table sockets: MRT_DONE is refused on them, harmlessly)
    ends = [socket.socketpair() for _ in range(2)]
    passed = [
        (ours.detach(), name) for (ours, _), name in zip(ends, ["mrt4-253", "junk"], strict=True)
    ]
    keeper = RecordingKeeper()
    kernel.release_passed(passed, keeper)
    assert keeper.dropped == ["mrt4-253", "junk"]
    for _, peer in ends:
        with peer:
            assert peer.recv(1) == b""  # our end is closed
    for fd, _ in passed:
        with pytest.raises(OSError):
            fcntl.fcntl(fd, fcntl.F_GETFD)


class FakeRawSocket:
    """Records setsockopt; MRT_DEL_VIF answers `del_errno` (0: done)."""

    def __init__(self, del_errno: int) -> None:
        self.del_errno = del_errno
        self.calls: list[int] = []

    def setsockopt(self, level: int, optname: int, value: bytes) -> None:
        self.calls.append(optname)
        if optname == kernel.MRT_DEL_VIF and self.del_errno:
            raise OSError(self.del_errno, "refused")


def adopted_socket(raw: FakeRawSocket, kept: dict[int, int | None]) -> kernel.MrouteSocket:
    sock = kernel.MrouteSocket.__new__(kernel.MrouteSocket)
    sock.family, sock.table, sock.level = 4, 253, socket.IPPROTO_IP
    sock.sock = raw  # type: ignore[assignment]
    sock.kept = kept
    return sock


def test_a_kept_vif_the_kernel_removed_with_its_device_is_simply_added() -> None:
    # VIF 2 was on device 7, deleted since: the kernel dropped the VIF with it.
    raw = FakeRawSocket(errno.EADDRNOTAVAIL)
    adopted_socket(raw, {2: 7}).add_vif(2, 9, 1)
    assert raw.calls == [kernel.MRT_DEL_VIF, kernel.MRT_ADD_VIF]
    # Another refusal still fails the change.
    with pytest.raises(KernelError):
        adopted_socket(FakeRawSocket(errno.EPERM), {2: 7}).add_vif(2, 9, 1)


def test_kept_vifs_are_forgotten_after_the_first_full_check() -> None:
    k = Kernel.__new__(Kernel)
    k.sockets = {(4, 253): adopted_socket(FakeRawSocket(0), {2: 7})}
    k.forget_kept()
    assert k.sockets[(4, 253)].kept == {}


def test_a_socket_whose_vifs_cannot_be_read_is_released_not_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(self: Kernel, family: int, table: int) -> dict[int, int | None]:
        raise KernelError("SIOCGETVIFCNT refused", "SIOCGETVIFCNT", errno.EPERM)

    k = Kernel.__new__(Kernel)
    k.families, k.sockets, k.adopted, k.keeper = (4,), {}, [], RecordingKeeper()
    monkeypatch.setattr(kernel, "unfit", lambda sock, family, table: None)
    monkeypatch.setattr(kernel, "MrouteSocket", lambda family, table, adopted: object())
    monkeypatch.setattr(Kernel, "_kept_vifs", unreadable)
    ours, peer = socket.socketpair()
    assert not k._adopt(ours.detach(), "mrt4-253")
    assert (k.sockets, k.adopted, k.keeper.dropped) == ({}, [], ["mrt4-253"])
    with peer:
        assert peer.recv(1) == b""
