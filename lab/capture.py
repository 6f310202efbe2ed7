"""Capture IGMP and MLD messages arriving on an interface (run inside a namespace, as root).

    python3 lab/capture.py IFNAME SECONDS

Prints `ready` once the socket is open, then one JSON object per IGMP (IPv4) or MLD
(IPv6) message that arrives on IFNAME within SECONDS: the time since `ready`, source
and destination addresses, TTL (hop limit), whether an IPv4 Router Alert option is
present, the message type and, for IGMPv3/MLDv2 reports, the group records as
[record type, group, [sources]].  An AF_PACKET socket sees what is on the wire, so
tests can check the reports and advertisements the router sends.  Standard library only.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time
from typing import Any

ETH_P_ALL = 0x0003


def igmp(packet: bytes) -> dict[str, Any] | None:
    """An IPv4 packet carrying IGMP, decoded; None for anything else."""
    if packet[9] != 2:
        return None
    ihl = (packet[0] & 15) * 4
    options = packet[20:ihl]
    msg = packet[ihl:]
    out: dict[str, Any] = {
        "family": 4,
        "src": socket.inet_ntoa(packet[12:16]),
        "dst": socket.inet_ntoa(packet[16:20]),
        "ttl": packet[8],
        "router_alert": options[:2] == b"\x94\x04",
        "type": msg[0],
        "code": msg[1],
        "bytes": msg.hex(),
    }
    if msg[0] == 0x22:  # IGMPv3 report
        records = []
        pos, count = 8, struct.unpack_from("!H", msg, 6)[0]
        for _ in range(count):
            kind, aux, nsrc = struct.unpack_from("!BBH", msg, pos)
            group = socket.inet_ntoa(msg[pos + 4 : pos + 8])
            sources = [
                socket.inet_ntoa(msg[pos + 8 + 4 * k : pos + 12 + 4 * k]) for k in range(nsrc)
            ]
            records.append([kind, group, sources])
            pos += 8 + 4 * nsrc + 4 * aux
        out["records"] = records
    return out


def mld(packet: bytes) -> dict[str, Any] | None:
    """An IPv6 packet carrying MLD (after a hop-by-hop header), decoded; None otherwise."""
    if packet[6] != 0:  # MLD comes after a hop-by-hop options header (router alert)
        return None
    hbh = 40 + (packet[41] + 1) * 8
    if packet[40] != 58:
        return None
    msg = packet[hbh:]
    out: dict[str, Any] = {
        "family": 6,
        "src": socket.inet_ntop(socket.AF_INET6, packet[8:24]),
        "dst": socket.inet_ntop(socket.AF_INET6, packet[24:40]),
        "ttl": packet[7],
        "type": msg[0],
    }
    if msg[0] == 143:  # MLDv2 report
        records = []
        pos, count = 8, struct.unpack_from("!H", msg, 6)[0]
        for _ in range(count):
            kind, aux, nsrc = struct.unpack_from("!BBH", msg, pos)
            group = socket.inet_ntop(socket.AF_INET6, msg[pos + 4 : pos + 20])
            sources = [
                socket.inet_ntop(socket.AF_INET6, msg[pos + 20 + 16 * k : pos + 36 + 16 * k])
                for k in range(nsrc)
            ]
            records.append([kind, group, sources])
            pos += 20 + 16 * nsrc + 4 * aux
        out["records"] = records
    return out


def main() -> None:
    ifname, seconds = sys.argv[1], float(sys.argv[2])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, ETH_P_ALL))
    print("ready", flush=True)
    start = time.monotonic()
    while (left := start + seconds - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        frame, addr = sock.recvfrom(65536)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        packet = frame[14:]
        decoded = (
            igmp(packet) if ethertype == 0x0800 else mld(packet) if ethertype == 0x86DD else None
        )
        if decoded is not None:
            decoded["t"] = round(time.monotonic() - start, 3)
            print(json.dumps(decoded), flush=True)


if __name__ == "__main__":
    main()
