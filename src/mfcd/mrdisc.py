"""Multicast Router Discovery (RFC 4286, IPv4): advertisements so IGMP snooping switches find us.

A switch that snoops IGMP forwards multicast only to ports where it has seen a
member or a multicast router.  A static router such as mfcd sends no queries and no
routing protocol, so the switch may never learn its port.  With `vif set IF --mrdisc`,
mfcd sends Multicast Router Advertisements on IF: IGMP type 0x30, to the All-Snoopers
group 224.0.0.106, IP TTL 1 with the Router Alert option.  The advertisement carries the
advertisement interval in seconds; its Query Interval and Robustness Variable are 0
because mfcd does not run IGMP as a querier.  After an interface starts advertising,
the first MAX_INITIAL advertisements go out at random intervals of at most
MAX_INITIAL_INTERVAL seconds, then one every `mrdisc_interval` seconds less a random
jitter of up to 2.5%.  A Multicast Router Solicitation (type 0x31, to All-Routers
224.0.0.2) is answered with an advertisement at once, at most one a second per
interface.  When an interface stops advertising (`--no-mrdisc`, or mfcd stops), a
Termination (type 0x32) goes out.

The packets and the schedule are pure functions; `Advertiser` is the socket.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Iterable

from mfcd.membership import MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP, group_req
from mfcd.uapi import IN_PKTINFO, IP_MREQN

ADVERTISEMENT = 0x30
SOLICITATION = 0x31
TERMINATION = 0x32
ALL_SNOOPERS = "224.0.0.106"
ALL_ROUTERS = "224.0.0.2"
MAX_INITIAL = 3  # MAX_INITIAL_ADVERTISEMENTS
MAX_INITIAL_INTERVAL = 2.0  # MAX_INITIAL_ADVERTISEMENT_INTERVAL, seconds
JITTER = 0.025  # of the interval
ANSWER_GAP = 1.0  # seconds between answers to solicitations on one interface, at least
ROUTER_ALERT = b"\x94\x04\x00\x00"  # IP option 148, length 4 (RFC 2113)
IP_PKTINFO = 8


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def message(kind: int, interval: int = 0) -> bytes:
    """An 8-byte MRD message: type, advertisement interval (advertisements only), checksum,
    then Query Interval and Robustness Variable (advertisements) or reserved: all 0 here."""
    body = struct.pack("!BBH4x", kind, interval if kind == ADVERTISEMENT else 0, 0)
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def solicitation_in(packet: bytes) -> bool:
    """Whether an IPv4 packet as a raw IGMP socket reads it holds a solicitation."""
    if len(packet) < 20 or packet[9] != socket.IPPROTO_IGMP:
        return False
    ihl = (packet[0] & 15) * 4
    return len(packet) >= ihl + 4 and packet[ihl] == SOLICITATION


def initial_delays(rng: random.Random) -> list[float]:
    """When the first advertisements go out, in seconds after advertising starts."""
    at, delays = 0.0, [0.0]
    for _ in range(MAX_INITIAL - 1):
        at += rng.uniform(0.0, MAX_INITIAL_INTERVAL)
        delays.append(at)
    return delays


def next_delay(interval: int, rng: random.Random) -> float:
    """Seconds until the next regular advertisement."""
    return interval - rng.uniform(0.0, JITTER * interval)


class Advertiser:
    """The raw IGMP socket that sends MRD messages and reads solicitations."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ROUTER_ALERT)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.listening: dict[str, int] = {}  # interface -> ifindex joined to All-Routers on

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, ifindex: int, interval: int = 0) -> None:
        """Send one MRD message out of the interface `ifindex` (raises OSError)."""
        # The interface by index alone: no group, no address.
        mreqn = IP_MREQN.pack(bytes(4), bytes(4), ifindex)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        self.sock.sendto(message(kind, interval), (ALL_SNOOPERS, 0))

    def listen(self, interfaces: dict[str, int]) -> None:
        """Be a member of All-Routers on exactly `interfaces`, so solicitations arrive."""
        for name, ifindex in list(self.listening.items()):
            if interfaces.get(name) != ifindex:
                del self.listening[name]
                with contextlib.suppress(OSError):  # the device may be gone already
                    self.sock.setsockopt(socket.IPPROTO_IP, MCAST_LEAVE_GROUP, _req(ifindex))
        for name, ifindex in interfaces.items():
            if name not in self.listening:
                with contextlib.suppress(OSError):  # gone meanwhile: the next pass retries
                    self.sock.setsockopt(socket.IPPROTO_IP, MCAST_JOIN_GROUP, _req(ifindex))
                    self.listening[name] = ifindex

    def solicited(self) -> list[int]:
        """The interfaces (ifindexes) solicitations arrived on since the last call."""
        found: list[int] = []
        while True:
            try:
                packet, ancillary, _, _ = self.sock.recvmsg(2048, 64)
            except (BlockingIOError, InterruptedError):
                return found
            if not solicitation_in(packet):
                continue
            for level, kind, data in ancillary:
                if (
                    level == socket.IPPROTO_IP
                    and kind == IP_PKTINFO
                    and len(data) >= IN_PKTINFO.size
                ):
                    found.append(IN_PKTINFO.unpack_from(data)[0])  # ipi_ifindex

    def close(self, terminate: Iterable[int] = ()) -> None:
        """Send a Termination on each of `terminate` (ifindexes), then close."""
        for ifindex in terminate:
            with contextlib.suppress(OSError):
                self.send(TERMINATION, ifindex)
        self.sock.close()


def _req(ifindex: int) -> bytes:
    return group_req(ifindex, 4, ALL_ROUTERS)
