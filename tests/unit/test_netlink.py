"""Tests for mfcd.netlink's pure parsers and its dump/monitor loops over fake sockets (no root)."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mfcd import netlink
from mfcd.netlink import (
    Link,
    LinkEvent,
    LinkMonitor,
    MfcEntry,
    MRule,
    NetlinkError,
    dump_links,
    dump_mfc,
    error_of,
    iter_messages,
    mfc_request,
    parse_attrs,
    parse_link_event,
    parse_link_message,
    parse_mfc_message,
    parse_rule_message,
)

# Captured from kernel 6.18 in a namespace (tests/netns set-up): an MRT_INIT socket with
# VIF 0 = r0 (ifindex 2), VIF 1 = r1 (ifindex 3) and (198.18.1.2, 239.1.2.3) parent 0, ttl 2
# on VIF 1 in table 253, the same with parent 7 (no VIF) and no oifs for 239.1.2.9, and in
# table 100 with ttl 1. IPv6 likewise with 2001:db8:1::2 and ff3e::1:2:3 in table 254.
MFC4_RESOLVED = bytes.fromhex(
    "7000000018000200070000009119000080202000fd1100050000000008000f00fd00000008000200c6120102"
    "08000100ef01020308000300020000000c00090008000002030000001c001100000000000000000000000000"
    "0000000000000000000000000c0017000800000000000000"
)
MFC4_NO_IIF = bytes.fromhex(
    "6000000018000200070000009119000080202000fd1100050000000008000f00fd00000008000200c6120102"
    "08000100ef010209040009001c0011000000000000000000000000000000000000000000000000000c001700"
    "0800000000000000"
)
MFC4_TABLE_100 = bytes.fromhex(
    "7000000018000200070000009119000080202000641100050000000008000f006400000008000200c6120102"
    "08000100ef01020308000300020000000c00090008000001030000001c001100000000000000000000000000"
    "0000000000000000000000000c0017000800000000000000"
)
MFC6_RESOLVED = bytes.fromhex(
    "8800000018000200070000009119000081808000fe1100050000000008000f00fe0000001400020020010db8"
    "00010000000000000000000214000100ff3e000000000000000000010002000308000300020000000c000900"
    "08000001030000001c0011000000000000000000000000000000000000000000000000000c00170005000000"
    "00000000"
)
# RTM_NEWLINK for r0 (ifindex 2, IFF_UP|IFF_BROADCAST|IFF_MULTICAST) from a link dump.
LINK_R0 = bytes.fromhex(
    "dc05000010000200070000009119000000000100020000000310000000000000070003007230000008000d00"
    "e803000005001000020000000500110000000000050043000000000008000400dc0500000800320044000000"
    "08003300ffff000008001b000000000008001e000000000008003d000400000008001f000200000008002800"
    "ffff0000080029000000010008003a000000010008003f0000000100080040000000010008003b00f8ff0700"
    "08003c00ffff0000080042000000000008002000020000000500210000000000080023000100000008002f00"
    "0000000008003000010000000600440000000000060045000000000005002700000000000a0001005a71f8de"
    "015600000a000200ffffffffffff0000cc001700000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "6400070000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000c002b0005000200000000001000120009000100766574680000000008002500"
    "0000000008000500020000000c0006006e6f71756575650030031a008c000200880001000000000002000000"
    "0000000001000000010000000100000001000000000000000100000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000010270000e80300000000000000000000000000000000000001000000a0020a0008000100"
    "0000000014000500ffff0000c2c00000cc750000e8030000f40002000000000040000000dc05000001000000"
    "010000000100000001000000ffffffffa00f0000e803000000000000803a0900805101000300000058020000"
    "100000000000000001000000010000000100000060ea00000000000000000000000000000000000002000000"
    "0000000001000000000000000000000010270000e80300000100000000000000000000000100000000000000"
    "00000000010000000000000000000000000000000000000080ee360000000000000000000100000000000000"
    "000000000000000000000000000000000004000000000000ffff0000ffffffff010000000000000000000000"
    "0000000034010300260000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000003c000600070000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000140007000000000000000000000000000000000005000800"
    "0000000024000e00000000000000000000000000000000000000000000000000000000000000000004003e80"
    "04004180"
)


# --- builders for constructed messages -------------------------------------------------------


def rtattr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes as the kernel does."""
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def nlmsg(kind: int, payload: bytes, flags: int = 0, seq: int = 0, pad: bool = True) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload
    return raw + bytes(-len(raw) % 4) if pad else raw


def link_msg(
    ifindex: int, name: bytes, flags: int, kind: int = 16, family: int = 0, **nlargs: Any
) -> bytes:
    ifinfo = struct.pack("=BxHiII", family, 1, ifindex, flags, 0)
    # An odd-length attribute (IFLA_OPERSTATE, u8) before the name exercises the alignment.
    attrs = rtattr(16, b"\x06") + rtattr(3, name + b"\0") + rtattr(4, struct.pack("=I", 1500))
    return nlmsg(kind, ifinfo + attrs, **nlargs)


def mfc_msg(
    rtm_family: int = 128,
    rtm_table: int = 253,
    attrs: bytes = b"",
    kind: int = 24,
) -> bytes:
    rtm = struct.pack("=BBBBBBBBI", rtm_family, 32, 32, 0, rtm_table, 17, 0, 5, 0)
    return nlmsg(kind, rtm + attrs)


def nexthop(ifindex: int, hops: int) -> bytes:
    return struct.pack("=HBBi", 8, 0, hops, ifindex)


SRC4 = rtattr(2, socket.inet_aton("198.18.0.1"))
DST4 = rtattr(1, socket.inet_aton("239.0.0.1"))


def err_msg(code: int, request: bytes = b"", flags: int = 0, tlvs: bytes = b"") -> bytes:
    echoed = request if request else nlmsg(26, b"\0" * 12)
    return nlmsg(2, struct.pack("=i", code) + echoed + tlvs, flags=flags)


# --- structure sizes and constants ----------------------------------------------------------


def test_struct_sizes_match_the_kernel_headers() -> None:
    sizes = {
        netlink.NLMSGHDR: 16,
        netlink.IFINFOMSG: 16,
        netlink.RTMSG: 12,
        netlink.RTATTR: 4,
        netlink.RTNEXTHOP: 8,
        netlink.RTA_MFC_STATS_STRUCT: 24,
    }
    assert {s.format: s.size for s in sizes} == {s.format: n for s, n in sizes.items()}


# --- iter_messages / parse_attrs -------------------------------------------------------------


def test_iter_messages_splits_a_datagram_on_aligned_boundaries() -> None:
    first = nlmsg(24, b"abcde", flags=2, seq=7)  # 21 bytes, padded to 24
    second = nlmsg(3, struct.pack("=i", 0), flags=2, seq=7, pad=False)
    got = [(k, f, s, bytes(m)) for k, f, s, m in iter_messages(first + second)]
    assert got == [(24, 2, 7, first[:21]), (3, 2, 7, second)]


@pytest.mark.parametrize("length", [0, 15, 100])
def test_iter_messages_rejects_bad_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="nlmsg_len"):
        list(iter_messages(struct.pack("=IHHII", length, 24, 0, 0, 0) + bytes(8)))


def test_parse_attrs_masks_flag_bits_and_keeps_the_last_duplicate() -> None:
    nested = struct.pack("=HH", 8, 0x8000 | 9) + b"abcd"
    attrs = parse_attrs(rtattr(3, b"x") + nested + rtattr(3, b"yz"))
    assert {k: bytes(v) for k, v in attrs.items()} == {3: b"yz", 9: b"abcd"}


def test_parse_attrs_rejects_an_attribute_past_the_end() -> None:
    with pytest.raises(ValueError, match="rta_len"):
        parse_attrs(struct.pack("=HH", 12, 3) + b"ab")


# --- links -----------------------------------------------------------------------------------


def test_parse_link_message_captured_from_the_kernel() -> None:
    assert parse_link_message(LINK_R0) == Link(ifindex=2, name="r0", up=True)


@pytest.mark.parametrize(("flags", "up"), [(0x1003, True), (0x1002, False), (0x10040, False)])
def test_parse_link_message_reads_iff_up(flags: int, up: bool) -> None:
    assert parse_link_message(link_msg(5, b"eth7", flags)) == Link(5, "eth7", up)


def test_parse_link_message_ignores_other_messages_and_families() -> None:
    assert parse_link_message(mfc_msg(attrs=SRC4 + DST4)) is None
    # AF_BRIDGE: a port leaving its bridge, not the interface going away.
    assert parse_link_message(link_msg(5, b"p0", 1, kind=17, family=7)) is None


def test_parse_link_message_decodes_non_utf8_names_like_the_stdlib() -> None:
    link = parse_link_message(link_msg(9, b"caf\xe9", 1))
    assert link is not None
    assert link.name == "caf\udce9"
    assert link.name.encode(errors="surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize(
    "data",
    [
        nlmsg(16, bytes(8)),  # shorter than ifinfomsg
        nlmsg(16, struct.pack("=BxHiII", 0, 1, 5, 1, 0)),  # no IFLA_IFNAME
        link_msg(5, b"eth7", 1)[:20],  # cut inside the message
    ],
)
def test_parse_link_message_rejects_malformed_messages(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_link_message(data)


def test_parse_link_event_maps_the_message_type_to_its_kind() -> None:
    link = Link(4, "veth0", False)
    assert parse_link_event(link_msg(4, b"veth0", 0, kind=16)) == LinkEvent("new", link)
    assert parse_link_event(link_msg(4, b"veth0", 0, kind=17)) == LinkEvent("del", link)
    assert parse_link_event(nlmsg(3, bytes(4))) is None


# --- MFC -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (MFC4_RESOLVED, MfcEntry(4, 253, "198.18.1.2", "239.1.2.3", 2, {3: 2}, 0, 0, 0)),
        # Parent 7 is no VIF: no RTA_IIF, and an empty RTA_MULTIPATH.
        (MFC4_NO_IIF, MfcEntry(4, 253, "198.18.1.2", "239.1.2.9", None, {}, 0, 0, 0)),
        (MFC4_TABLE_100, MfcEntry(4, 100, "198.18.1.2", "239.1.2.3", 2, {3: 1}, 0, 0, 0)),
        (MFC6_RESOLVED, MfcEntry(6, 254, "2001:db8:1::2", "ff3e::1:2:3", 2, {3: 1}, 0, 0, 0)),
    ],
)
def test_parse_mfc_message_captured_from_the_kernel(data: bytes, expected: MfcEntry) -> None:
    assert parse_mfc_message(data) == expected


def test_parse_mfc_message_reads_stats_multipath_and_wide_table_ids() -> None:
    attrs = (
        SRC4
        + DST4
        + rtattr(15, struct.pack("=I", 70000))  # RTA_TABLE beats rtm_table 252 (RT_TABLE_COMPAT)
        + rtattr(3, struct.pack("=I", 4))
        + rtattr(9, nexthop(5, 1) + nexthop(6, 9) + nexthop(6, 3))
        + rtattr(17, struct.pack("=QQQ", 10, 2**40, 3))
    )
    entry = parse_mfc_message(mfc_msg(rtm_table=252, attrs=attrs))
    assert entry == MfcEntry(4, 70000, "198.18.0.1", "239.0.0.1", 4, {5: 1, 6: 3}, 10, 2**40, 3)


def test_parse_mfc_message_accepts_delroute_and_ignores_unicast_routes() -> None:
    entry = parse_mfc_message(mfc_msg(kind=25, attrs=SRC4 + DST4))
    assert entry is not None
    assert (entry.source, entry.iif, entry.packets) == ("198.18.0.1", None, 0)
    assert parse_mfc_message(mfc_msg(rtm_family=socket.AF_INET, attrs=SRC4 + DST4)) is None
    assert parse_mfc_message(link_msg(1, b"lo", 1)) is None


@pytest.mark.parametrize(
    "attrs",
    [
        DST4,  # no RTA_SRC
        SRC4 + rtattr(1, socket.inet_pton(socket.AF_INET6, "ff3e::1")),  # wrong address size
        SRC4 + DST4 + rtattr(3, b"\1"),  # short RTA_IIF
        SRC4 + DST4 + rtattr(9, struct.pack("=HBBi", 4, 0, 1, 1)),  # rtnh_len too small
        SRC4 + DST4 + rtattr(17, bytes(16)),  # short RTA_MFC_STATS
    ],
)
def test_parse_mfc_message_rejects_malformed_attributes(attrs: bytes) -> None:
    with pytest.raises(ValueError):
        parse_mfc_message(mfc_msg(attrs=attrs))


@given(st.binary(max_size=200))
def test_parsers_raise_only_value_error_on_garbage(data: bytes) -> None:
    for parse in (parse_link_message, parse_link_event, parse_mfc_message):
        with contextlib.suppress(ValueError):
            parse(data)


@given(st.binary(max_size=120))
def test_parsers_raise_only_value_error_on_garbage_after_a_valid_header(tail: bytes) -> None:
    for kind, head in ((16, struct.pack("=BxHiII", 0, 1, 3, 1, 0)), (24, bytes([128]) + bytes(11))):
        with contextlib.suppress(ValueError):
            parse_link_message(nlmsg(kind, head + tail))
        with contextlib.suppress(ValueError):
            parse_mfc_message(nlmsg(kind, head + tail))


@given(
    family=st.sampled_from([4, 6]),
    table=st.integers(1, 2**32 - 1),
    source=st.binary(min_size=16, max_size=16),
    group=st.binary(min_size=16, max_size=16),
    iif=st.none() | st.integers(1, 2**31 - 1),
    oifs=st.dictionaries(st.integers(1, 2**31 - 1), st.integers(0, 255), max_size=32),
    stats=st.tuples(*[st.integers(0, 2**64 - 1)] * 3),
)
def test_parse_mfc_message_round_trips_constructed_entries(
    *,
    family: int,
    table: int,
    source: bytes,
    group: bytes,
    iif: int | None,
    oifs: dict[int, int],
    stats: tuple[int, int, int],
) -> None:
    af, size = (socket.AF_INET, 4) if family == 4 else (socket.AF_INET6, 16)
    attrs = (
        rtattr(2, source[:size]) + rtattr(1, group[:size]) + rtattr(15, struct.pack("=I", table))
    )
    if iif is not None:
        attrs += rtattr(3, struct.pack("=I", iif))
    attrs += rtattr(9, b"".join(nexthop(i, t) for i, t in oifs.items()))
    attrs += rtattr(17, struct.pack("=QQQ", *stats))
    entry = parse_mfc_message(mfc_msg({4: 128, 6: 129}[family], table & 0xFF, attrs))
    expected = MfcEntry(
        family,
        table,
        socket.inet_ntop(af, source[:size]),
        socket.inet_ntop(af, group[:size]),
        iif,
        oifs,
        *stats,
    )
    assert entry == expected


# --- errors ----------------------------------------------------------------------------------


def test_error_of_reads_errno_and_the_kernel_extack_message() -> None:
    request = nlmsg(26, mfc_request(4, 7))
    tlvs = rtattr(1, b"ipv4: MR table does not exist\0")
    capped = err_msg(-errno.ENOENT, request[:16], flags=0x300, tlvs=tlvs)
    uncapped = err_msg(-errno.ENOENT, request, flags=0x200, tlvs=tlvs)
    for message in (capped, uncapped):
        assert error_of(memoryview(message)) == (errno.ENOENT, "ipv4: MR table does not exist")
    assert error_of(memoryview(err_msg(-errno.EPERM))) == (errno.EPERM, "")
    assert error_of(memoryview(err_msg(0))) == (0, "")


def test_error_of_reads_nlmsg_done_status() -> None:
    done = nlmsg(3, struct.pack("=i", -errno.ENOENT) + rtattr(1, b"gone\0"), flags=0x202)
    assert error_of(memoryview(done)) == (errno.ENOENT, "gone")
    assert error_of(memoryview(nlmsg(3, b""))) == (0, "")


def test_netlink_error_is_an_oserror_with_errno_and_kind() -> None:
    exc = NetlinkError(errno.ENOENT, "dump mfc", "no table")
    assert isinstance(exc, OSError)
    assert (exc.errno, exc.kind) == (errno.ENOENT, "dump mfc")
    assert str(exc) == "[Errno 2] dump mfc: No such file or directory (no table)"


# --- requests --------------------------------------------------------------------------------


def test_mfc_request_payloads() -> None:
    assert mfc_request(4) == bytes([128]) + bytes(11)
    assert mfc_request(6, 100) == bytes([129]) + bytes(11) + struct.pack("=HHI", 8, 15, 100)


@pytest.mark.parametrize(("family", "table"), [(2, None), (10, None), (4, 0), (6, 2**32)])
def test_mfc_request_rejects_bad_arguments(family: int, table: int | None) -> None:
    with pytest.raises(ValueError):
        mfc_request(family, table)


# --- dump loop over a fake kernel ------------------------------------------------------------


class FakeKernel:
    """Stands in for a netlink socket: answers each request with scripted datagrams.

    A reply script is a list of datagrams, each a list of (type, flags, payload); the
    request's sequence number is stamped on every message unless it is given as a 4th item.
    A datagram may also be an exception to raise, or a (bytes, sender port id) pair.
    """

    def __init__(self, *replies: list[Any]) -> None:
        self.replies = list(replies)
        self.sent: list[bytes] = []
        self.queue: list[Any] = []
        self.closed = False

    def __enter__(self) -> FakeKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("=IHHII", data)[3]
        self.queue = [self.datagram(d, seq) for d in self.replies.pop(0)]
        return len(data)

    @staticmethod
    def datagram(spec: Any, seq: int) -> Any:
        if isinstance(spec, BaseException | tuple):
            return spec
        return b"".join(nlmsg(m[0], m[2], m[1], m[3] if len(m) > 3 else seq) for m in spec)

    def recvfrom_into(self, buf: bytearray, nbytes: int, flags: int) -> tuple[int, Any]:
        item = self.queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        data, pid = item if isinstance(item, tuple) else (item, 0)
        buf[: len(data)] = data
        return len(data), (pid, 0)

    # LinkMonitor's set-up calls.
    def setsockopt(self, *args: Any) -> None:
        pass

    def bind(self, address: Any) -> None:
        pass

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 99

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FakeKernel]]:
    """Fake sockets handed out in order by netlink._open_socket."""
    fakes: list[FakeKernel] = []
    monkeypatch.setattr(netlink, "_open_socket", lambda kind: fakes.pop(0))
    yield fakes
    assert fakes == [], "not every scripted socket was used"


DONE = (3, 2, struct.pack("=i", 0))
MULTI = 2


def test_dump_collects_a_multipart_reply_across_datagrams(kernel: list[FakeKernel]) -> None:
    fake = FakeKernel(
        [
            [(24, MULTI, MFC4_RESOLVED[16:]), (24, MULTI, MFC4_NO_IIF[16:])],
            # A stale reply from another request and a foreign sender are both skipped.
            [(24, MULTI, MFC4_TABLE_100[16:], 12345)],
            (nlmsg(24, MFC4_TABLE_100[16:], MULTI, 1), 4242),
            [(24, MULTI, MFC4_TABLE_100[16:]), DONE],
        ]
    )
    kernel.append(fake)
    entries = dump_mfc(4)
    assert [(e.group, e.table) for e in entries] == [
        ("239.1.2.3", 253),
        ("239.1.2.9", 253),
        ("239.1.2.3", 100),
    ]
    [request] = fake.sent
    length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, request[16:]) == (28, 26, 0x301, mfc_request(4))
    assert fake.closed


def test_dump_mfc_filters_tables_even_if_the_kernel_does_not(kernel: list[FakeKernel]) -> None:
    reply = [(24, MULTI, MFC4_RESOLVED[16:]), (24, MULTI, MFC4_TABLE_100[16:]), DONE]
    kernel.append(FakeKernel([reply]))
    assert [e.table for e in dump_mfc(4, 100)] == [100]


def test_dump_mfc_treats_a_missing_table_as_empty(kernel: list[FakeKernel]) -> None:
    kernel.append(FakeKernel([[(3, 2, struct.pack("=i", -errno.ENOENT))]]))
    assert dump_mfc(6, 4242) == []


def test_dump_raises_netlink_error_with_kind_and_reason(kernel: list[FakeKernel]) -> None:
    tlvs = rtattr(1, b"denied\0")
    error = err_msg(-errno.EPERM, nlmsg(18, bytes(16))[:16], flags=0x300, tlvs=tlvs)
    kernel.append(FakeKernel([[(2, 0x300, error[16:])]]))
    with pytest.raises(NetlinkError) as info:
        dump_links()
    assert info.value.errno == errno.EPERM
    assert str(info.value) == "[Errno 1] dump links: Operation not permitted (denied)"


def test_dump_mfc_without_table_does_not_hide_enoent(kernel: list[FakeKernel]) -> None:
    kernel.append(FakeKernel([[(3, 2, struct.pack("=i", -errno.ENOENT))]]))
    with pytest.raises(NetlinkError, match="dump mfc"):
        dump_mfc(4)


def test_dump_wraps_socket_errors(kernel: list[FakeKernel]) -> None:
    kernel.append(FakeKernel([OSError(errno.EMSGSIZE, "cut")]))
    with pytest.raises(NetlinkError, match="dump links") as info:
        dump_links()
    assert info.value.errno == errno.EMSGSIZE


def test_interrupted_link_dump_is_retried(kernel: list[FakeKernel]) -> None:
    lo = link_msg(1, b"lo", 1)[16:]
    interrupted = FakeKernel([[(16, MULTI | 0x10, lo), DONE]])
    clean = FakeKernel([[(16, MULTI, lo), (16, MULTI, link_msg(2, b"eth0", 0)[16:]), DONE]])
    kernel.extend([interrupted, clean])
    assert dump_links() == [Link(1, "lo", True), Link(2, "eth0", False)]


def test_dump_gives_up_when_always_interrupted(kernel: list[FakeKernel]) -> None:
    lo = link_msg(1, b"lo", 1)[16:]
    kernel.extend(FakeKernel([[(16, MULTI | 0x10, lo), DONE]]) for _ in range(5))
    with pytest.raises(NetlinkError) as info:
        dump_links()
    assert info.value.errno == errno.EAGAIN


def test_dump_links_of_this_namespace_includes_lo() -> None:
    # Dumping needs no privilege, so this runs against the real kernel.
    links = {link.name: link for link in dump_links()}
    assert links["lo"].ifindex == socket.if_nametoindex("lo")


# --- link monitor over a fake kernel ---------------------------------------------------------


def monitor_with(monkeypatch: pytest.MonkeyPatch, *datagrams: Any) -> LinkMonitor:
    fake = FakeKernel()
    fake.queue = [FakeKernel.datagram(d, 0) for d in datagrams] + [BlockingIOError()]
    monkeypatch.setattr(netlink, "_open_socket", lambda kind: fake)
    return LinkMonitor()


def test_link_monitor_drains_events_until_eagain(monkeypatch: pytest.MonkeyPatch) -> None:
    new = (16, 0, link_msg(3, b"v0", 1)[16:])
    bridge_port = (17, 0, link_msg(3, b"v0", 1, family=7)[16:])
    gone = (17, 0, link_msg(3, b"v0", 0)[16:])
    with monitor_with(monkeypatch, [new], [bridge_port, gone]) as monitor:
        assert monitor.fileno() == 99
        assert monitor.read_events() == [
            LinkEvent("new", Link(3, "v0", True)),
            LinkEvent("del", Link(3, "v0", False)),
        ]
        assert monitor.overrun is False


@pytest.mark.parametrize("lost", [errno.ENOBUFS, errno.EMSGSIZE])
def test_link_monitor_reports_overrun_and_keeps_draining(
    monkeypatch: pytest.MonkeyPatch, lost: int
) -> None:
    before = (16, 0, link_msg(3, b"v0", 1)[16:])
    after = (16, 0, link_msg(4, b"v1", 1)[16:])
    monitor = monitor_with(monkeypatch, [before], OSError(lost, "lost"), [after])
    assert [e.link.name for e in monitor.read_events()] == ["v0", "v1"]
    assert monitor.overrun is True
    monitor._sock.queue = [BlockingIOError()]  # type: ignore[attr-defined]
    assert monitor.read_events() == []
    assert monitor.overrun is False
    monitor.close()


def test_link_monitor_raises_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = monitor_with(monkeypatch, OSError(errno.EBADF, "bad"))
    with pytest.raises(NetlinkError, match="link monitor"):
        monitor.read_events()


def test_route_get_request_asks_for_one_address() -> None:
    request = netlink.route_get_request(4, "198.18.0.2")
    family, dst_len = request[0], request[1]
    assert (family, dst_len) == (socket.AF_INET, 32)
    attrs = netlink.parse_attrs(request, netlink.RTMSG.size)
    assert bytes(attrs[netlink.RTA_DST]) == socket.inet_aton("198.18.0.2")
    request6 = netlink.route_get_request(6, "2001:db8::2")
    assert (request6[0], request6[1]) == (socket.AF_INET6, 128)


def test_parse_route_oif_reads_the_answers_interface() -> None:
    payload = netlink.RTMSG.pack(socket.AF_INET, 32, 0, 0, 254, 0, 0, 1, 0)
    payload += netlink.RTATTR.pack(8, netlink.RTA_OIF) + struct.pack("=I", 7)
    message = netlink.NLMSGHDR.pack(16 + len(payload), netlink.RTM_NEWROUTE, 0, 1, 0) + payload
    assert netlink.parse_route_oif(message) == 7
    without = netlink.NLMSGHDR.pack(16 + 12, netlink.RTM_NEWROUTE, 0, 1, 0) + payload[:12]
    assert netlink.parse_route_oif(without) is None


# --- multicast routing rules (ip mrule) -------------------------------------------------------

# Captured from kernel 6.18 in a namespace with veth r0 and `ip mrule add iif r0 lookup 100
# pref 100`, `ip mrule add iif r9 lookup 100 pref 101` (r9 does not exist: detached),
# `ip -6 mrule add not iif r0 fwmark 5 goto 32767 pref 7`, `ip -6 mrule add iif r0
# unreachable pref 8`, and each family's default rule.
RULE4_R0 = bytes.fromhex(
    "440000002000020007000000f80d000080000000640000010000000008000f006400000008000e00ffffffff"
    "050015000000000007000300723000000800060064000000"
)
RULE4_DETACHED = bytes.fromhex(
    "440000002000020007000000f80d000080000000640000010800000008000f006400000008000e00ffffffff"
    "050015000000000007000300723900000800060065000000"
)
RULE4_DEFAULT = bytes.fromhex(
    "3c0000002000020007000000f80d000080000000fd0000010000000008000f00fd00000008000e00ffffffff"
    "050015000200000008000600ff7f0000"
)
RULE6_GOTO = bytes.fromhex(
    "5c0000002000020007000000f80d000081000000000000020200000008000f000000000008000e00ffffffff"
    "05001500000000000700030072300000080006000700000008000a000500000008001000ffffffff08000400"
    "ff7f0000"
)
RULE6_UNREACHABLE = bytes.fromhex(
    "440000002000020007000000f80d000081000000000000070000000008000f000000000008000e00ffffffff"
    "050015000000000007000300723000000800060008000000"
)
RULE6_DEFAULT = bytes.fromhex(
    "3c0000002000020007000000f80d000081000000fe0000010000000008000f00fe00000008000e00ffffffff"
    "050015000200000008000600ff7f0000"
)
# Captured the same way: `ip mrule add pref 41 iif r0 fwmark 1 lookup 77`, `pref 42 iif r0
# fwmark 0/0xff lookup 100`, `pref 43 l3mdev`, `pref 44 iif r0 oif r1 lookup 77`, `pref 45
# iif r0 uidrange 1000-2000 lookup 77`, `pref 46 iif r0 ipproto tcp dport 9 lookup 77` and
# `ip -6 mrule add pref 41 not iif r0 fwmark 0x10/0xf0 prohibit`.
RULE4_FWMARK = bytes.fromhex(
    "5400000020000200010000009d0c0000800000004d0000010000000008000f004d00000008000e00ffffffff"
    "05001500000000000700030072300000080006002900000008000a000100000008001000ffffffff"
)
RULE4_FWMASK = bytes.fromhex(
    "4c00000020000200010000009d0c000080000000640000010000000008000f006400000008000e00ffffffff"
    "05001500000000000700030072300000080006002a00000008001000ff000000"
)
RULE4_L3MDEV = bytes.fromhex(
    "4400000020000200010000009d0c000080000000000000010000000008000f000000000008000e00ffffffff"
    "0500150000000000080006002b0000000500130001000000"
)
RULE4_OIF = bytes.fromhex(
    "4c00000020000200010000009d0c0000800000004d0000010000000008000f004d00000008000e00ffffffff"
    "050015000000000007000300723000000700110072310000080006002c000000"
)
RULE4_UIDS = bytes.fromhex(
    "5000000020000200010000009d0c0000800000004d0000010000000008000f004d00000008000e00ffffffff"
    "05001500000000000700030072300000080006002d0000000c001400e8030000d0070000"
)
RULE4_PORTS = bytes.fromhex(
    "5c00000020000200010000009d0c0000800000004d0000010000000008000f004d00000008000e00ffffffff"
    "05001500000000000700030072300000080006002e000000080018000900090006001d00ffff000005001600"
    "06000000"
)
RULE6_NOT_FWMASK = bytes.fromhex(
    "540000002000020001000000c60c000081000000000000080200000008000f000000000008000e00ffffffff"
    "05001500000000000700030072300000080006002900000008000a001000000008001000f0000000"
)


@pytest.mark.parametrize(
    ("family", "data", "expected"),
    [
        (4, RULE4_R0, MRule(100, "lookup", 100, iif="r0")),
        (4, RULE4_DETACHED, MRule(101, "lookup", 100, iif="r9", unmatched=True)),
        (4, RULE4_DEFAULT, MRule(32767, "lookup", 253)),
        (6, RULE6_GOTO, MRule(7, "goto", 0, 32767, "r0", invert=True, fwmark=(5, 0xFFFFFFFF))),
        (6, RULE6_UNREACHABLE, MRule(8, "unreachable", 0, iif="r0")),
        (6, RULE6_DEFAULT, MRule(32767, "lookup", 254)),
        (4, RULE4_FWMARK, MRule(41, "lookup", 77, iif="r0", fwmark=(1, 0xFFFFFFFF))),
        (4, RULE4_FWMASK, MRule(42, "lookup", 100, iif="r0", fwmark=(0, 0xFF))),
        (4, RULE4_L3MDEV, MRule(43, "lookup", 0, l3mdev=True)),
        # Matches no arriving packet: it has no oif, and its uid is 0.
        (4, RULE4_OIF, MRule(44, "lookup", 77, iif="r0", unmatched=True)),
        (4, RULE4_UIDS, MRule(45, "lookup", 77, iif="r0", unmatched=True)),
        # The multicast rules ignore ipproto and ports: it matches what arrives on r0.
        (4, RULE4_PORTS, MRule(46, "lookup", 77, iif="r0")),
        (6, RULE6_NOT_FWMASK, MRule(41, "prohibit", 0, iif="r0", invert=True, fwmark=(16, 0xF0))),
    ],
)
def test_parse_rule_message_captured_from_the_kernel(
    family: int, data: bytes, expected: MRule
) -> None:
    assert parse_rule_message(data, family) == expected


def test_parse_rule_message_ignores_the_other_family_and_other_messages() -> None:
    assert parse_rule_message(RULE4_DEFAULT, 6) is None
    assert parse_rule_message(RULE6_DEFAULT, 4) is None
    assert parse_rule_message(MFC4_RESOLVED, 4) is None


def test_rule_request_asks_for_the_multicast_family() -> None:
    assert netlink.rule_request(4)[0] == netlink.RTNL_FAMILY_IPMR
    assert netlink.rule_request(6)[0] == netlink.RTNL_FAMILY_IP6MR
    with pytest.raises(ValueError):
        netlink.rule_request(5)


@given(st.binary(max_size=120))
def test_parse_rule_message_raises_only_value_error_on_garbage(tail: bytes) -> None:
    head = bytes([128]) + bytes(11)
    for data in (tail, nlmsg(netlink.RTM_NEWRULE, head + tail)):
        with contextlib.suppress(ValueError):
            parse_rule_message(data, 4)


def test_a_links_kind_and_master_are_read_and_vrf_members_found() -> None:
    """The kind from IFLA_LINKINFO (a veth's, captured from the kernel) and IFLA_MASTER; a
    VRF device and the interfaces enslaved to it are what an l3mdev rule matches."""
    assert netlink.parse_link_kind(LINK_R0) == (2, "r0", "veth", 0)

    def link(ifindex: int, name: bytes, kind: bytes, master: int = 0) -> bytes:
        ifinfo = struct.pack("=BxHiII", 0, 1, ifindex, 1, 0)
        attrs = rtattr(3, name + b"\0") + rtattr(18, rtattr(1, kind + b"\0"))
        if master:
            attrs += rtattr(10, struct.pack("=I", master))
        return nlmsg(16, ifinfo + attrs)

    found = [
        netlink.parse_link_kind(m)
        for m in (
            link(5, b"blue", b"vrf"),
            link(6, b"r1", b"veth", master=5),
            link(7, b"br0", b"bridge"),
            link(8, b"r2", b"veth", master=7),  # a bridge port: in no VRF
            link(9, b"r3", b""),
        )
    ]
    assert found[0] == (5, "blue", "vrf", 0) and found[1] == (6, "r1", "veth", 5)
    assert netlink.vrf_members(f for f in found if f is not None) == {"blue", "r1"}
    assert netlink.parse_link_kind(nlmsg(24, b"\0" * 12)) is None  # not a link message
