"""End to end: another multicast router owns one of the tables the config files declare
routes in, at mfcd's start or reload. The other tables' routes forward at once; that
table's route and template stay pending with the kernel's reason, and forward after
`mfcctl sync` (or another reload) once the other router is gone."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, running
from tests.netns.test_tables import SOURCES, send_and_count

# Another multicast router on table 100: MRT_TABLE 100, then MRT_INIT on a raw IGMP (or
# ICMPv6) socket, held until it is ended (what `smcrouted -t 100` does first).
OWNER = """
import signal, socket, struct, sys
if sys.argv[1] == "4":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    level = socket.IPPROTO_IP
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    level = socket.IPPROTO_IPV6
s.setsockopt(level, 209, struct.pack("=I", 100))
s.setsockopt(level, 200, struct.pack("=i", 1))
print("ready", flush=True)
signal.pause()
"""
# Per family: the (S,G) group, the template's group prefix, a group it covers.
GROUPS = {
    4: ("239.1.7.1", "239.1.8.0/24", "239.1.8.1"),
    6: ("ff3e::7:1", "ff3e::8:0/112", "ff3e::8:1"),
}
DEFAULT_TABLE = {4: 253, 6: 254}


def config(family: int) -> str:
    """A route r0 -> r2 in the default table; in table 100 a route and a template r1 -> r3."""
    first, second = SOURCES[family]
    group, prefix, _ = GROUPS[family]
    return (
        f'[[route]]\nsource = "{first}"\ngroup = "{group}"\niif = "r0"\noifs = ["r2"]\n'
        f'[[route]]\ntable = 100\nsource = "{second}"\ngroup = "{group}"\niif = "r1"\n'
        'oifs = ["r3"]\n'
        f'[[route]]\ntable = 100\ngroup = "{prefix}"\niif = "r1"\noifs = ["r3"]\n'
    )


def shown(mfcd: Mfcd, group: str, table: int) -> dict[str, object]:
    routes: list[dict[str, object]] = mfcd.show()["routes"]
    return next(r for r in routes if r["group"] == group and r["table"] == table)


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize(("how", "family"), [("start", 4), ("reload", 4), ("start", 6)])
def test_a_table_another_router_owns_keeps_its_routes_pending_and_the_rest_forwards(
    lab: Lab, tmp_path: Path, how: str, family: int
) -> None:
    """`how`: the files declare the routes at start (a sync installs them once the other
    router is gone), or a reload adds them (another reload installs them then)."""
    owned = f"another multicast router already owns IPv{family} multicast routing table 100"
    group, prefix, covered = GROUPS[family]
    lab.ip(lab.router, f"-{family}", "mrule", "add", "iif", "r1", "lookup", "100")
    owner = lab.spawn(lab.router, sys.executable, "-c", OWNER, str(family))
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        daemon = Mfcd(lab, tmp_path, config(family) if how == "start" else "")
        with running(daemon) as mfcd:
            if how == "reload":
                mfcd.config_file.write_text(mfcd.config_file.read_text() + config(family))
                reloaded = mfcd.ctl("reload")
                assert reloaded.returncode == 0 and "2 added" in reloaded.stdout
                pending = "1 route and 1 template of the config files are pending"
                assert pending in reloaded.stderr and owned in reloaded.stderr
            # The default table's route forwards at once (r0 -> r2), nothing reaches r3.
            assert send_and_count(lab, family, 0) == [5, 0]
            for shown_group in (group, prefix):
                route = shown(mfcd, shown_group, 100)
                assert route["state"] == "pending", route
                assert owned in str(route["reason"]) and "mfcctl sync" in str(route["reason"])
                assert route["origin"] == "config"
            assert shown(mfcd, group, DEFAULT_TABLE[family])["state"] == "installed"
            if how == "start":  # diagnose finds the route and says what to do
                args = ("--group", group, "--source", SOURCES[family][1], "--table", "100")
                diagnosed = mfcd.ctl("diagnose", *args, "--seconds", "0.5")
                assert diagnosed.returncode == 8, diagnosed.stderr
                assert owned in diagnosed.stdout
                assert "stop the multicast router that owns the table" in diagnosed.stdout
            # The other router goes: a sync (or reload) installs them, and table 100
            # forwards (r1 -> r3).
            lab.stop(owner)
            mfcd.ok("sync" if how == "start" else "reload")
            assert shown(mfcd, group, 100)["state"] == "installed"
            assert shown(mfcd, prefix, 100)["state"] == "installed"
            assert send_and_count(lab, family, 1) == [0, 5]
            time.sleep(0.2)
            assert send_and_count(lab, family, 1, group=covered)[1] > 0  # learned from it
        assert "1 route and 1 template there stay pending" in daemon.log
        if how == "start":  # (the status line counts routes)
            assert "1 of 2 routes installed, 1 pending" in daemon.log
    finally:
        lab.stop(owner)
        shutil.rmtree(tmp_path, ignore_errors=True)
