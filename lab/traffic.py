"""Multicast test traffic inside a namespace: `recv GROUP PORT IF`, `send GROUP PORT IF SRC COUNT`,
`flood GROUP PORT IF FIRST_SRC COUNT [INTERVAL]`.

recv joins GROUP on IFNAME, prints "ready", counts datagrams to PORT until SIGTERM,
then prints {"received": N}.  send sends COUNT datagrams from SOURCE with TTL/hop
limit 8 (routers forward only packets whose TTL is above their threshold).  flood sends
one datagram from each of COUNT distinct sources, FIRST_SRC and the addresses after it
(a raw socket writes the IP header: the sources need not be the sender's own), INTERVAL
seconds apart (default 0).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time


def _socket(group: str, port: int, ifname: str) -> socket.socket:
    ifindex = socket.if_nametoindex(ifname)
    if ":" in group:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port, 0, ifindex))
        mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        # struct ip_mreqn { in_addr multiaddr, address; int ifindex; }
        mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    return sock


def recv(group: str, port: int, ifname: str) -> None:
    received = 0
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        sock = _socket(group, port, ifname)
    except OSError:
        # No such interface (its link is deleted): nothing can arrive; report 0 like any receiver.
        print("ready", flush=True)
        while not stop:
            time.sleep(0.05)
        print(json.dumps({"received": 0, "interface": "absent"}), flush=True)
        return
    sock.settimeout(0.05)
    print("ready", flush=True)
    while not stop:
        try:
            sock.recv(2048)
            received += 1
        except TimeoutError:
            pass
    print(json.dumps({"received": received}), flush=True)


def send(group: str, port: int, ifname: str, source: str, count: int) -> None:
    ifindex = socket.if_nametoindex(ifname)
    if ":" in group:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 8)
        sock.bind((source, 0, 0, 0))
        dest: tuple[str, int] | tuple[str, int, int, int] = (group, port, 0, ifindex)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
        sock.bind((source, 0))
        dest = (group, port)
    for i in range(count):
        sock.sendto(b"mfcd-lab %d" % i, dest)
        time.sleep(0.01)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF or 0xFFFF


def _datagram(family: int, source: bytes, group: bytes, port: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 header and a UDP datagram with its checksum, hop limit 8."""
    length = 8 + len(payload)
    if family == 4:
        pseudo = source + group + struct.pack("!BBH", 0, 17, length)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 8, 17, 0, source, group)
    else:
        pseudo = source + group + struct.pack("!I3xB", length, 17)
        header = struct.pack("!IHBB16s16s", 6 << 28, length, 17, 8, source, group)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + payload
    checksum = _checksum(pseudo + udp)
    return header + udp[:6] + struct.pack("!H", checksum) + udp[8:]


def flood(
    group: str, port: int, ifname: str, first: str, count: int, *, interval: float = 0.0
) -> None:
    family = 6 if ":" in group else 4
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)  # we write the IP header
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    size = 16 if family == 6 else 4
    base = int.from_bytes(socket.inet_pton(af, first), "big")
    grp = socket.inet_pton(af, group)
    dest: tuple[str, int] | tuple[str, int, int, int] = (
        (group, 0, 0, socket.if_nametoindex(ifname)) if family == 6 else (group, 0)
    )
    for i in range(count):
        src = (base + i).to_bytes(size, "big")
        sock.sendto(_datagram(family, src, grp, port, b"mfcd-lab flood %d" % i), dest)
        if interval:
            time.sleep(interval)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1] == "flood":
        pause = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
        flood(
            sys.argv[2],
            int(sys.argv[3]),
            sys.argv[4],
            sys.argv[5],
            int(sys.argv[6]),
            interval=pause,
        )
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
