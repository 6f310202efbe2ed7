"""An MRT_INIT socket handed to another process (SCM_RIGHTS): does forwarding outlive its owner?"""

# The question behind it: can a restart of mfcd keep forwarding if its MRT_INIT sockets
# are parked in systemd's file descriptor store (FDSTORE=1) and adopted by the next
# mfcd?  systemd holds a stored fd exactly like an fd in flight in an SCM_RIGHTS message,
# so this script lets a child process build a table (MRT_INIT, VIFs, one MFC entry),
# send its socket over a Unix socketpair and exit.  While the fd is in flight (nobody
# holds it open in a process), real traffic is sent; then this process takes the fd,
# reads the queued upcalls and changes the table through it.  For each family, the
# default table and table 100 (steered by an `ip mrule`).

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from kxlab import (
    IGMPMSG_NOCACHE,
    MRT_ADD_MFC,
    MRT_DEL_MFC,
    MRT_DEL_VIF,
    MRT_DONE,
    MRT_INIT,
    MRT_TABLE,
    Lab,
    add_mfc,
    add_vif,
    drain,
    mfc,
    mroute4,
    mroute6,
    say,
    send,
    sg_count,
    try_call,
    upcalls,
)

PORT = 5201
RATE = 200  # packets per second of the steady flow
SO_RCVBUFFORCE = 33
FLIGHT = 0.6  # seconds the fd spends in flight (the "restart" gap)

# The child: build the table through its own MRT_INIT socket, pass the socket on, exit.
CHILD = """
import os, socket, struct, sys
sys.path.insert(0, {libdir!r})
from kxlab import MRT_INIT, MRT_TABLE, MIF6CTL, VIFCTL, VIFF_USE_IFINDEX, mfc
v6, table, src, grp = {v6!r}, {table!r}, {src!r}, {grp!r}
fam = socket.AF_INET6 if v6 else socket.AF_INET
level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_IGMP)
if table is not None:
    s.setsockopt(level, MRT_TABLE, struct.pack("=I", table))
s.setsockopt(level, MRT_INIT, struct.pack("=i", 1))
for vifi, name in ((0, "r0"), (1, "r1")):
    idx = socket.if_nametoindex(name)
    if v6:
        s.setsockopt(level, 202, MIF6CTL.pack(vifi, 0, 1, idx, 0))
    else:
        s.setsockopt(level, 202, VIFCTL.pack(vifi, VIFF_USE_IFINDEX, 1, 0, idx, b"\\0" * 4))
s.setsockopt(level, 204, mfc(src, grp, 0, [1]))
link = socket.socket(fileno={link})
print("built", flush=True)
sys.stdin.readline()  # the parent says when
socket.send_fds(link, [b"mroute"], [s.fileno()])
{after}
"""
EXIT_CLEAN = "s.close(); link.close(); sys.exit(0)"
EXIT_KILLED = "os.kill(os.getpid(), 9)"


class Net:
    """sender -- router -- rx1, rx2 for one family and table; the mrule steers r0 to the table."""

    def __init__(self, lab: Lab, v6: bool, table: int | None, case: str = "") -> None:
        self.lab, self.v6, self.table = lab, v6, table
        self.fam = socket.AF_INET6 if v6 else socket.AF_INET
        self.level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
        self.tag = ("v6" if v6 else "v4") + ("" if table is None else f"t{table}") + case
        self.snd, self.rtr, self.rxs = lab.router_lab(receivers=2, tag=self.tag)
        self.src = "2001:db8::2" if v6 else "198.18.0.2"
        if table is not None:
            fam = ["-6"] if v6 else []
            lab.ip(self.rtr, *fam, "mrule", "add", "iif", "r0", "lookup", str(table), "pref", "100")
        self.out = lab.sender(self.snd, self.fam)

    def group(self, n: int) -> str:
        return f"ff3e::20:{n:x}" if self.v6 else f"239.20.0.{n}"

    def mc_forwarding(self) -> str:
        ver = "ipv6" if self.v6 else "ipv4"
        return self.lab.read(self.rtr, f"/proc/sys/net/{ver}/conf/all/mc_forwarding").strip()

    def shown(self) -> list[str]:
        """`ip mroute show table <t>` lines (resolved and unresolved entries)."""
        fam = ["-6"] if self.v6 else []
        tab = "default" if self.table is None and not self.v6 else str(self.table or "main")
        out = self.lab.ip(self.rtr, *fam, "mroute", "show", "table", tab)
        return [ln.strip() for ln in out.splitlines() if ln.strip()]

    def vif_flags(self) -> str:
        """Flags column of /proc/net/ip(6)_mr_vif (default table only; 8000 = static)."""
        if self.table is not None:
            return "n/a (table)"
        path = "/proc/net/ip6_mr_vif" if self.v6 else "/proc/net/ip_mr_vif"
        rows = self.lab.read(self.rtr, path).splitlines()[1:]
        return ",".join(f"{r.split()[0]}:{r.split()[6]}" for r in rows)

    def spawn_owner(self, grp: str, after: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """The child that builds the table; returns it and our end of the socketpair."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        libdir = os.path.dirname(os.path.abspath(__file__))
        code = CHILD.format(
            libdir=libdir,
            v6=self.v6,
            table=self.table,
            src=self.src,
            grp=grp,
            link=theirs.fileno(),
            after=after,
        )
        child = subprocess.Popen(
            ["ip", "netns", "exec", self.rtr, sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=[theirs.fileno()],
        )
        self.lab.children.append(child)
        theirs.close()
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"built"
        return child, ours


class Flow:
    """A steady flow at RATE packets/s in a thread; numbers received are counted later."""

    def __init__(self, net: Net, grp: str, port: int) -> None:
        self.net, self.grp, self.port = net, grp, port
        self.rcv = net.lab.receiver(net.rxs[0], grp, port)
        # Room for the whole flow: it is read only at the end (the default buffer holds 256).
        self.rcv.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.net.out.sendto(struct.pack("!I", self.sent), (self.grp, self.port))
            self.sent += 1
            time.sleep(max(0.0, t0 + self.sent / RATE - time.monotonic()))

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> str:
        self.stop.set()
        self.thread.join()
        got = drain(self.rcv, 0.5)
        missing = sorted(set(range(self.sent)) - set(got))
        gap = f"{missing[0]}..{missing[-1]}" if missing else "-"
        self.rcv.close()
        return f"sent {self.sent}, received {len(set(got))}, lost {len(missing)} (seq {gap})"


def owner_gone(
    net: Net, grp: str, after: str, port: int, lead: float
) -> tuple[subprocess.Popen[bytes], socket.socket, Flow]:
    """An owner of `grp`'s entry with a flow across it, told to send its fd and exit as
    `after` says, `lead` s into the flow: the owner (gone), the link the fd comes on, the flow."""
    child, link = net.spawn_owner(grp, after)
    flow = Flow(net, grp, port)
    time.sleep(0.3)
    flow.start()
    time.sleep(lead)
    assert child.stdin is not None
    child.stdin.write(b"go\n")
    child.stdin.flush()
    child.wait()
    return child, link, flow


def handover(lab: Lab, v6: bool, table: int | None) -> None:
    net = Net(lab, v6, table)
    t = net.tag
    g1, g2 = net.group(1), net.group(2)
    child, link, flow = owner_gone(net, g1, EXIT_CLEAN, PORT, 0.5)
    say(f"{t} owner exited after sending the fd (rc)", child.returncode)
    # Nobody holds the socket in a process now: only the in-flight SCM_RIGHTS message.
    say(f"{t} while in flight: mc_forwarding", net.mc_forwarding())
    say(f"{t} while in flight: entries", net.shown())
    rcv2 = lab.receiver(net.rxs[0], g2, PORT + 1)
    time.sleep(0.2)
    send(net.out, g2, PORT + 1, 3)  # no entry for g2: a NOCACHE upcall with nobody reading
    time.sleep(FLIGHT)
    _, fds, _, _ = socket.recv_fds(link, 64, 4)
    s = socket.socket(fileno=fds[0])
    say(f"{t} received fd: family / type / proto", (s.family.name, s.type.name, s.proto))
    ups = upcalls(s, 0.3)
    say(
        f"{t} upcalls read after the handover (type, vif, src, dst)",
        [u[:4] for u in ups if u[0] == IGMPMSG_NOCACHE],
    )
    # Answer the queued upcall: are the packets queued on the unresolved entry delivered?
    add_mfc(s, net.src, g2, 0, [1])
    say(f"{t} g2 delivered after MRT_ADD_MFC on the inherited socket", drain(rcv2, 0.5))
    rcv2.close()
    time.sleep(0.5)
    say(f"{t} steady flow at {RATE}/s across the handover ({FLIGHT}s in flight)", flow.finish())
    say(f"{t} SIOCGETSGCNT g1 through the inherited socket", sg_count(s, net.src, g1))
    changes(net, s, t)
    link.close()


def changes(net: Net, s: socket.socket, t: str) -> None:
    """What the inherited socket is and what it can change; then close it."""
    lab, v6, table = net.lab, net.v6, net.table
    g1, g3 = net.group(1), net.group(3)
    # What the inherited socket is, as far as the kernel's option checks tell.
    say(
        f"{t} MRT_INIT on the inherited socket",
        try_call(s.setsockopt, net.level, MRT_INIT, struct.pack("=i", 1)),
    )
    fresh = (mroute6 if v6 else mroute4)(lab, net.rtr, table, init=False)
    say(
        f"{t} MRT_INIT on a fresh socket for the same table",
        try_call(fresh.setsockopt, net.level, MRT_INIT, struct.pack("=i", 1)),
    )
    fresh.close()
    say(
        f"{t} getsockopt MRT_TABLE on the inherited socket",
        try_call(s.getsockopt, net.level, MRT_TABLE, 4),
    )
    same = struct.pack("=I", table if table is not None else (254 if v6 else 253))
    say(
        f"{t} setsockopt MRT_TABLE (same id) on the inherited socket",
        try_call(s.setsockopt, net.level, MRT_TABLE, same),
    )
    other = struct.pack("=I", 77)
    say(
        f"{t} setsockopt MRT_TABLE 77 (another id) on the inherited socket",
        try_call(s.setsockopt, net.level, MRT_TABLE, other),
    )
    plain = (mroute6 if v6 else mroute4)(lab, net.rtr, table, init=False)
    say(
        f"{t} setsockopt MRT_TABLE 77 on a socket without MRT_INIT",
        try_call(plain.setsockopt, net.level, MRT_TABLE, other),
    )
    plain.close()

    # Changes through the inherited socket.
    idx2 = lab.ifindex(net.rtr, "r2")
    say(f"{t} MRT_ADD_VIF 2 on the inherited socket", try_call(add_vif, s, 2, idx2))
    rcv3 = lab.receiver(net.rxs[1], g3, PORT + 2)
    say(
        f"{t} MRT_ADD_MFC g3 oifs 1,2",
        try_call(s.setsockopt, net.level, MRT_ADD_MFC, mfc(net.src, g3, 0, [1, 2])),
    )
    time.sleep(0.2)
    send(net.out, g3, PORT + 2, 5)
    say(f"{t} g3 delivered to rx2 (via VIF 2 added on the inherited socket)", drain(rcv3, 0.5))
    say(f"{t} VIF flags (8000 = static)", net.vif_flags())
    say(
        f"{t} MRT_DEL_MFC g1",
        try_call(s.setsockopt, net.level, MRT_DEL_MFC, mfc(net.src, g1, 0, [])),
    )
    vif2 = (
        struct.pack("=HBBIi4s", 2, 0, 0, 0, 0, b"\0" * 4)
        if not v6
        else struct.pack("=HBBH2xI", 2, 0, 0, 0, 0)
    )
    say(f"{t} MRT_DEL_VIF 2", try_call(s.setsockopt, net.level, MRT_DEL_VIF, vif2))
    say(f"{t} entries before closing", net.shown())
    # The VIFs/entries the child and we added are the socket's own: closing flushes them all.
    s.close()
    time.sleep(0.2)
    say(
        f"{t} after the last holder closed: mc_forwarding / entries",
        (net.mc_forwarding(), net.shown()),
    )
    rcv3.close()


def killed_owner(lab: Lab, v6: bool) -> None:
    """The owner sends the fd and dies by SIGKILL; then MRT_DONE through the inherited socket."""
    net = Net(lab, v6, None, "k")
    t = net.tag
    child, link, flow = owner_gone(net, net.group(1), EXIT_KILLED, PORT + 3, 0.3)
    time.sleep(FLIGHT)
    _, fds, _, _ = socket.recv_fds(link, 64, 4)
    s = socket.socket(fileno=fds[0])
    time.sleep(0.3)
    say(f"{t} owner killed (rc) / flow across", (child.returncode, flow.finish()))
    say(
        f"{t} MRT_DONE on the inherited socket",
        try_call(s.setsockopt, net.level, MRT_DONE, struct.pack("=i", 1)),
    )
    say(
        f"{t} after MRT_DONE (socket still open): mc_forwarding / entries",
        (net.mc_forwarding(), net.shown()),
    )
    s.close()
    link.close()


def plain_restart(lab: Lab, v6: bool) -> None:
    """Baseline: the owner closes its socket, a new one does MRT_INIT and re-adds FLIGHT s later."""
    net = Net(lab, v6, None, "p")
    t = net.tag
    _, link, flow = owner_gone(net, net.group(1), EXIT_CLEAN, PORT + 4, 0.3)
    _, fds, _, _ = socket.recv_fds(link, 64, 4)
    socket.socket(fileno=fds[0]).close()  # the old socket goes away: the kernel flushes
    time.sleep(FLIGHT)
    s = (mroute6 if v6 else mroute4)(lab, net.rtr)
    add_vif(s, 0, lab.ifindex(net.rtr, "r0"))
    add_vif(s, 1, lab.ifindex(net.rtr, "r1"))
    add_mfc(s, net.src, net.group(1), 0, [1])
    time.sleep(0.3)
    say(f"{t} plain restart ({FLIGHT}s without a socket) / flow across", flow.finish())
    s.close()
    link.close()


def main() -> None:
    assert errno.EADDRINUSE == 98
    with Lab() as lab:
        for v6 in (False, True):
            for table in (None, 100):
                handover(lab, v6, table)
            killed_owner(lab, v6)
            plain_restart(lab, v6)


if __name__ == "__main__":
    main()
