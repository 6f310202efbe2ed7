"""Multicast test traffic inside a namespace: `recv GROUP PORT IF`, `send GROUP PORT IF SRC COUNT`.

recv joins GROUP on IFNAME, prints "ready", counts datagrams to PORT until SIGTERM,
then prints {"received": N}.  send sends COUNT datagrams from SOURCE with TTL/hop
limit 8 (routers forward only packets whose TTL is above their threshold).
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


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
