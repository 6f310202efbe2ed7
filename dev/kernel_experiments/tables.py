"""Issue 12: several multicast routing tables (MRT_TABLE/MRT6_TABLE, ip mrule, /proc, ip mroute)."""

from __future__ import annotations

import gzip
import socket
import struct
import time

from kxlab import (
    MRT_INIT,
    MRT_TABLE,
    Lab,
    add_mfc,
    add_vif,
    drain,
    mroute4,
    mroute6,
    say,
    send,
    sg_count,
    try_call,
    upcalls,
)

PORT = 5000


def init_conflicts(lab: Lab, rtr: str, v6: bool) -> None:
    """Which further MRT_INIT sockets are refused while the default and 100 are held."""
    tag = "v6" if v6 else "v4"
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    default_id = 254 if v6 else 253
    mk = mroute6 if v6 else mroute4
    dup = mk(lab, rtr, table=100, init=False)
    r = try_call(dup.setsockopt, level, MRT_INIT, b"\1\0\0\0")
    say(f"{tag} second MRT_INIT on table 100", r)
    dup.close()
    explicit = mk(lab, rtr, table=default_id, init=False)
    r = try_call(explicit.setsockopt, level, MRT_INIT, b"\1\0\0\0")
    say(f"{tag} MRT_INIT with explicit table {default_id} while the default-table socket exists", r)
    explicit.close()
    other = 253 if v6 else 254
    t_other = mk(lab, rtr, table=other, init=False)
    r = try_call(t_other.setsockopt, level, MRT_INIT, b"\1\0\0\0")
    say(f"{tag} MRT_INIT with table {other} while the default-table socket exists", r)
    t_other.close()


def family_run(lab: Lab, v6: bool) -> None:
    tag = "v6" if v6 else "v4"
    snd, rtr, (rx1, rx2) = lab.router_lab(receivers=2, tag=tag)
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src = "2001:db8::2" if v6 else "198.18.0.2"
    grp, grp_unres = ("ff3e::1:1", "ff3e::1:2") if v6 else ("239.1.1.1", "239.1.1.2")
    mk = mroute6 if v6 else mroute4

    # One process, two MRT_INIT sockets: the default table and table 100.
    sdef = mk(lab, rtr)
    s100 = mk(lab, rtr, table=100)
    say(f"{tag} one process holds INIT sockets for default table and table 100", "OK")
    init_conflicts(lab, rtr, v6)

    idx = [lab.ifindex(rtr, f"r{k}") for k in range(3)]
    for s in (sdef, s100):
        for vifi, ifindex in enumerate(idx):
            add_vif(s, vifi, ifindex)
    say(f"{tag} same netdevs r0,r1,r2 are VIFs 0,1,2 in both tables", "OK")
    # Default table forwards to rx2 only, table 100 to rx1 only.
    add_mfc(sdef, src, grp, 0, [2])
    add_mfc(s100, src, grp, 0, [1])

    out = lab.sender(snd, fam)
    rcv1, rcv2 = lab.receiver(rx1, grp, PORT), lab.receiver(rx2, grp, PORT)
    time.sleep(0.2)
    send(out, grp, PORT, 5)
    a, b = len(drain(rcv1)), len(drain(rcv2))
    say(f"{tag} without mrule: rx1(table 100) / rx2(default)", f"{a}/{b}")

    ipf = ["-6"] if v6 else []
    lab.ip(rtr, *ipf, "mrule", "add", "iif", "r0", "lookup", "100", "pref", "100")
    say(f"{tag} mrule list", " | ".join(lab.ip(rtr, *ipf, "mrule", "show").strip().splitlines()))
    send(out, grp, PORT, 5)
    a, b = len(drain(rcv1)), len(drain(rcv2))
    say(f"{tag} with 'mrule iif r0 lookup 100': rx1(table 100) / rx2(default)", f"{a}/{b}")
    say(f"{tag} SIOCGETSGCNT via table-100 socket", sg_count(s100, src, grp))
    say(f"{tag} SIOCGETSGCNT via default socket", sg_count(sdef, src, grp))

    # Which socket hears the NOCACHE upcall for a group without an entry?
    upcalls(sdef, 0.05)
    upcalls(s100, 0.05)
    send(out, grp_unres, PORT, 1)
    u100, udef = upcalls(s100), upcalls(sdef)
    say(
        f"{tag} NOCACHE upcalls with mrule to 100: table-100 socket / default socket",
        f"{len(u100)}/{len(udef)}",
    )

    show_tables(lab, rtr, v6, sdef)
    s100.close()


def show_tables(lab: Lab, rtr: str, v6: bool, sdef: socket.socket) -> None:
    """What /proc and `ip mroute show table N` list; closes the default-table socket."""
    tag = "v6" if v6 else "v4"
    ipf = ["-6"] if v6 else []
    cache = "ip6_mr_cache" if v6 else "ip_mr_cache"
    vif = "ip6_mr_vif" if v6 else "ip_mr_vif"
    say(f"{tag} /proc/net/{cache}", " | ".join(lab.read(rtr, f"/proc/net/{cache}").splitlines()))
    say(f"{tag} /proc/net/{vif}", " | ".join(lab.read(rtr, f"/proc/net/{vif}").splitlines()))
    for t in ("100", "default", "main", "all"):
        shown = lab.ip(rtr, *ipf, "mroute", "show", "table", t, check=False).strip()
        text = " | ".join(shown.splitlines()) or "(empty)"
        say(f"{tag} (both sockets open) ip mroute show table {t}", text)
    # Close the default-table socket: does /proc then show table 100? (no: it shows table default)
    sdef.close()
    time.sleep(0.1)
    lines = lab.read(rtr, f"/proc/net/{cache}").splitlines()
    say(f"{tag} /proc/net/{cache} after closing the default socket (lines)", len(lines))
    shown = lab.ip(rtr, *ipf, "mroute", "show", "table", "all").strip()
    say(f"{tag} (default closed) ip mroute show table all", " | ".join(shown.splitlines()))


def table_opt_exists(lab: Lab) -> None:
    ns = lab.netns("opt")
    for fam, proto, level, tag in (
        (socket.AF_INET, socket.IPPROTO_IGMP, socket.IPPROTO_IP, "MRT_TABLE"),
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, socket.IPPROTO_IPV6, "MRT6_TABLE"),
    ):
        s = lab.sock(ns, fam, socket.SOCK_RAW, proto)
        r = try_call(s.setsockopt, level, MRT_TABLE, struct.pack("=I", 100))
        say(f"{tag} 100 setsockopt", r)
        s.close()
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            opts = [ln.strip() for ln in f if "MROUTE" in ln and not ln.startswith("#")]
        say("kernel config", " ".join(opts))
    except OSError as exc:
        say("kernel config", f"/proc/config.gz not readable: {exc}")


def main() -> None:
    with Lab() as lab:
        say("kernel", lab.sh(lab.netns("k"), "uname", "-r").strip())
        table_opt_exists(lab)
        family_run(lab, v6=False)
        family_run(lab, v6=True)


if __name__ == "__main__":
    main()
