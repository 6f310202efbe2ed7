"""End to end: a start while another multicast router owns one of the tables the config
files declare routes in. The other tables' routes forward at once; that table's routes and
template stay pending with the kernel's reason, and forward after `mfcctl sync` once the
other router is gone."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, running
from tests.netns.test_tables import send_and_count

# Another multicast router on table 100: MRT_TABLE 100, then MRT_INIT on a raw IGMP socket,
# held until it is ended (what `smcrouted -t 100` does first).
OWNER = """
import signal, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
s.setsockopt(socket.IPPROTO_IP, 209, struct.pack("=I", 100))
s.setsockopt(socket.IPPROTO_IP, 200, struct.pack("=i", 1))
print("ready", flush=True)
signal.pause()
"""
CONFIG = """
[[route]]
source = "198.18.0.2"
group = "239.1.7.1"
iif = "r0"
oifs = ["r2"]

[[route]]
table = 100
source = "198.18.1.2"
group = "239.1.7.1"
iif = "r1"
oifs = ["r3"]

[[route]]
table = 100
group = "239.1.8.0/24"
iif = "r1"
oifs = ["r3"]
"""
OWNED = "another multicast router already owns IPv4 multicast routing table 100"


def shown(mfcd: Mfcd, group: str, table: int) -> dict[str, object]:
    routes: list[dict[str, object]] = mfcd.show()["routes"]
    return next(r for r in routes if r["group"] == group and r["table"] == table)


@pytest.mark.lab(receivers=3)
@pytest.mark.parametrize("how", ["start", "reload"])
def test_a_table_another_router_owns_keeps_its_routes_pending_and_the_rest_forwards(
    lab: Lab, tmp_path: Path, how: str
) -> None:
    """`how`: the files declare the routes at start (a sync installs them once the other
    router is gone), or a reload adds them (another reload installs them then)."""
    lab.ip(lab.router, "-4", "mrule", "add", "iif", "r1", "lookup", "100")
    owner = lab.spawn(lab.router, sys.executable, "-c", OWNER)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "ready"
        daemon = Mfcd(lab, tmp_path, CONFIG if how == "start" else "")
        with running(daemon) as mfcd:
            if how == "reload":
                mfcd.config_file.write_text(mfcd.config_file.read_text() + CONFIG)
                reloaded = mfcd.ctl("reload")
                assert reloaded.returncode == 0 and "2 added" in reloaded.stdout
                pending = "1 route and 1 template of the config files are pending"
                assert pending in reloaded.stderr and OWNED in reloaded.stderr
            # The default table's route forwards at once (r0 -> r2), nothing reaches r3.
            assert send_and_count(lab, 4, 0) == [5, 0]
            for group in ("239.1.7.1", "239.1.8.0/24"):
                route = shown(mfcd, group, 100)
                assert route["state"] == "pending", route
                assert OWNED in str(route["reason"]) and "mfcctl sync" in str(route["reason"])
                assert route["origin"] == "config"
            assert shown(mfcd, "239.1.7.1", 253)["state"] == "installed"
            # The other router goes: a sync (or reload) installs them, and table 100
            # forwards (r1 -> r3).
            lab.stop(owner)
            mfcd.ok("sync" if how == "start" else "reload")
            assert shown(mfcd, "239.1.7.1", 100)["state"] == "installed"
            assert shown(mfcd, "239.1.8.0/24", 100)["state"] == "installed"
            assert send_and_count(lab, 4, 1) == [0, 5]
            time.sleep(0.2)
            assert send_and_count(lab, 4, 1, group="239.1.8.1")[1] > 0  # learned from it
        assert "1 route and 1 template there stay pending" in daemon.log
        if how == "start":  # (the status line counts routes)
            assert "1 of 2 routes installed, 1 pending" in daemon.log
    finally:
        lab.stop(owner)
        shutil.rmtree(tmp_path, ignore_errors=True)
