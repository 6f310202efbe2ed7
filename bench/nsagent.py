"""The benchmark's helper inside one network namespace: raw kernel loop, polling, dumps, RSS.

bench/run.py starts one agent per namespace (`ip netns exec NS python nsagent.py`) and
talks to it with one JSON object per line on stdin/stdout.  The agent exists so that
everything measured inside a namespace (the raw setsockopt loop, "is the last route in
the kernel yet?") runs without a process start in the timed path.

Route i is always the same (source, group) pair, here and in run.py (`route_addr`), so a
route the orchestrator asked a daemon to add can be looked up in the kernel by index.
It is IPv4 only: the scenarios are IPv4, as in the issue and in smcroute's numbers.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import time
from typing import Any

MRT_INIT = 200
MRT_DONE = 201
MRT_ADD_VIF = 202
MRT_ADD_MFC = 204
MRT_DEL_MFC = 205
VIFF_USE_IFINDEX = 0x8
SIOCGETSGCNT = 0x89E1
VIFCTL = struct.Struct("=HBBIi4s")  # linux/mroute.h struct vifctl
MFCCTL = struct.Struct("=4s4sH32s2xIIIi")  # linux/mroute.h struct mfcctl
SIOC_SG_REQ = struct.Struct("@4s4sLLL")  # linux/mroute.h struct sioc_sg_req
IIF, OIF = "r0", "r1"  # the two interfaces of every benchmark namespace: VIF 0 and VIF 1
OIF2 = "r2"  # a second oif, for batch lines with several oifs (mfcd only)
POLL_INTERVAL = 0.0005  # seconds between two looks at the kernel; well below what we measure


def route_addr(i: int) -> tuple[str, str]:
    """(source, group) of route i: distinct groups in 232/8, sources spread over 10.1/16."""
    source = f"10.1.{(i // 250) % 250}.{i % 250 + 1}"
    group = f"232.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return source, group


def _packed(i: int) -> tuple[bytes, bytes]:
    source, group = route_addr(i)
    return socket.inet_aton(source), socket.inet_aton(group)


class Agent:
    def __init__(self) -> None:
        self.mroute: socket.socket | None = None  # the raw loop's MRT_INIT socket
        self.probe = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)

    # --- the raw loop: what the kernel can do from Python with no bookkeeping ---------------------

    def raw_init(self) -> dict[str, Any]:
        self.raw_done()
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        sock.setsockopt(socket.IPPROTO_IP, MRT_INIT, struct.pack("=i", 1))
        for vifi, name in enumerate((IIF, OIF)):
            vif = VIFCTL.pack(vifi, VIFF_USE_IFINDEX, 1, 0, socket.if_nametoindex(name), bytes(4))
            sock.setsockopt(socket.IPPROTO_IP, MRT_ADD_VIF, vif)
        self.mroute = sock
        return {}

    def raw_done(self) -> dict[str, Any]:
        """MRT_DONE and close: the kernel flushes the raw loop's entries."""
        if self.mroute is not None:
            self.mroute.setsockopt(socket.IPPROTO_IP, MRT_DONE, struct.pack("=i", 1))
            self.mroute.close()
            self.mroute = None
        return {}

    def raw_add(self, start: int, n: int) -> dict[str, Any]:
        """The issue's reference loop: struct.pack + setsockopt(MRT_ADD_MFC) per route."""
        assert self.mroute is not None
        addrs = [_packed(i) for i in range(start, start + n)]
        ttls = bytes([0, 1]) + bytes(30)  # oif VIF 1, TTL threshold 1
        setsockopt, pack, level = self.mroute.setsockopt, MFCCTL.pack, socket.IPPROTO_IP
        started = time.perf_counter()
        for src, grp in addrs:
            setsockopt(level, MRT_ADD_MFC, pack(src, grp, 0, ttls, 0, 0, 0, 0))
        return {"seconds": time.perf_counter() - started}

    def raw_one(self, start: int, n: int) -> dict[str, Any]:
        """Latency of single adds (each one timed) of routes start..start+n-1."""
        assert self.mroute is not None
        ttls = bytes([0, 1]) + bytes(30)
        samples = []
        for i in range(start, start + n):
            src, grp = _packed(i)
            t = time.perf_counter()
            self.mroute.setsockopt(
                socket.IPPROTO_IP, MRT_ADD_MFC, MFCCTL.pack(src, grp, 0, ttls, 0, 0, 0, 0)
            )
            samples.append(time.perf_counter() - t)
        return {"samples": samples}

    # --- observing the kernel --------------------------------------------------------------------

    def present(self, i: int) -> bool:
        """Is route i in the kernel?  SIOCGETSGCNT is O(1), unlike a dump."""
        src, grp = _packed(i)
        buf = bytearray(SIOC_SG_REQ.pack(src, grp, 0, 0, 0))
        try:
            fcntl.ioctl(self.probe.fileno(), SIOCGETSGCNT, buf, True)
        except OSError:
            return False
        return True

    def wait(self, index: int, timeout: float) -> dict[str, Any]:
        """Poll until route `index` is in the kernel; return the CLOCK_MONOTONIC time seen."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.present(index):
                return {"seen": now}
            if now > deadline:
                return {"seen": None}
            time.sleep(POLL_INTERVAL)

    def count(self) -> dict[str, Any]:
        """Entries in the kernel's IPv4 MFC, and how long reading /proc took (the kernel's dump).

        The dump is super-linear in the kernel (0.65 s at 100,000 entries, 9.6 s at 200,000):
        run.py only asks for it up to Settings.proc_max and uses `sample` above that.
        """
        started = time.perf_counter()
        with open("/proc/net/ip_mr_cache", "rb") as f:
            lines = f.read().count(b"\n") - 1
        return {"count": lines, "seconds": time.perf_counter() - started}

    def sample(self, start: int, n: int, probes: int, present: bool = True) -> dict[str, Any]:
        """Probe routes start..start+n-1 (the first, the last and `probes` spread evenly) with
        SIOCGETSGCNT; return how many are not as expected (present, or absent)."""
        if n <= 0:
            return {"wrong": 0, "probed": 0}
        step = max(1, n // max(1, probes))
        indexes = {start, start + n - 1, *range(start, start + n, step)}
        wrong = sum(1 for i in indexes if self.present(i) != present)
        return {"wrong": wrong, "probed": len(indexes)}

    def wait_count(self, n: int, timeout: float) -> dict[str, Any]:
        """Poll the entry count until it reaches n (fallback when routes land out of order)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.count()["count"]
            if got >= n or time.monotonic() > deadline:
                return {"count": got, "seen": time.monotonic()}
            time.sleep(0.05)

    def rss(self) -> dict[str, Any]:
        return {"kib": status_kib(os.getpid(), "VmRSS"), "hwm": status_kib(os.getpid(), "VmHWM")}


def status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmRSS: resident now; VmHWM: its peak) in KiB,
    0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    agent = Agent()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        try:
            reply = getattr(agent, cmd)(**request)
        except Exception as e:  # reported to the orchestrator, which stops the run
            reply = {"error": f"{cmd}: {type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)
    agent.raw_done()


if __name__ == "__main__":
    main()
