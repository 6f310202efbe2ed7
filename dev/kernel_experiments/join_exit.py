"""Issue 14: are group memberships left behind when the joining process is killed with SIGKILL?"""

from __future__ import annotations

import os
import signal
import time

from kxlab import Lab, capture_socket, reports, say

CHILD = """
import socket, struct, sys, time
idx = socket.if_nametoindex("j0")
def req(fam, grp):
    if fam == socket.AF_INET:
        sa = struct.pack("=H2s4s", fam, b"", socket.inet_aton(grp))
    else:
        sa = struct.pack("=H2sI16sI", fam, b"", 0, socket.inet_pton(fam, grp), 0)
    return struct.pack("=I4x128s", idx, sa.ljust(128, b"\\0"))
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for g in ("239.11.0.1", "239.11.0.2"):
    s4.setsockopt(socket.IPPROTO_IP, 42, req(socket.AF_INET, g))
for g in ("ff3e::b:1", "ff3e::b:2"):
    s6.setsockopt(socket.IPPROTO_IPV6, 42, req(socket.AF_INET6, g))
print("ready", flush=True)
time.sleep(600)
"""


def memberships(lab: Lab, ns: str) -> list[str]:
    v4 = [
        ln.split()[0]
        for ln in lab.read(ns, "/proc/net/igmp").splitlines()
        if ln.strip().split()[0].endswith("0BEF")
    ]
    v6 = [ln.split()[2] for ln in lab.read(ns, "/proc/net/igmp6").splitlines() if "000b000" in ln]
    return v4 + v6


def main() -> None:
    with Lab() as lab:
        host, peer = lab.pair(11)
        child = lab.spawn(host, CHILD)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(2)  # let the unsolicited join reports finish
        say("memberships while the process runs", memberships(lab, host))
        cap = capture_socket(lab, peer, "p0")
        os.kill(child.pid, signal.SIGKILL)  # `ip netns exec` execs python: this is python's pid
        child.wait()
        t0 = time.monotonic()
        while memberships(lab, host) and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        say(
            "memberships after SIGKILL (s until gone)",
            f"{memberships(lab, host)} ({time.monotonic() - t0:.2f})",
        )
        time.sleep(3)
        for src, kind, recs in reports(cap):
            say("report seen by peer after SIGKILL", f"from {src} {kind} {recs}")


if __name__ == "__main__":
    main()
