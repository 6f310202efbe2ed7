"""End to end: the periodic drift check (drift_check_interval) repairs an MFC entry another
program deleted without any interface event, and /metrics and the status line say so."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args
from tests.netns.kernel_tables import mfc
from tests.netns.test_metrics import PORT, fetch

INTERVAL = 10  # drift_check_interval's least value other than 0
SOURCES = {4: "198.18.0.2", 6: "2001:db8::2"}
GROUPS = {4: "239.1.9.1", 6: "ff3e::9:1"}
DEFAULT = {4: 253, 6: 254}

# Another privileged program deletes mfcd's entry, or the VIF of its oif, through a raw
# socket of its own (the kernel lets any CAP_NET_ADMIN socket, without MRT_INIT): no
# interface changes, so no event tells mfcd.
DELETE = """
import socket, struct
family, table, source, group, vifi = {family}, {table}, {source!r}, {group!r}, {vifi}
entry_only = vifi < 0
vifi = max(vifi, 0)
if family == 4:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    level = socket.IPPROTO_IP
    vif = struct.pack("=HBBIi4s", vifi, 0, 0, 0, 0, bytes(4))
    entry = struct.pack("=4s4sH32s2xIIIi", socket.inet_aton(source),
                        socket.inet_aton(group), 0, bytes(32), 0, 0, 0, 0)
else:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    level = socket.IPPROTO_IPV6
    vif = struct.pack("=HBBH2xI", vifi, 0, 0, 0, 0)
    def sin6(address):
        raw = socket.inet_pton(socket.AF_INET6, address)
        return struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, raw, 0)
    entry = struct.pack("=28s28sH2x32s", sin6(source), sin6(group), 0, bytes(32))
s.setsockopt(level, 209, struct.pack("=I", table))  # MRT_TABLE
if entry_only:
    s.setsockopt(level, 205, entry)  # MRT_DEL_MFC
else:
    s.setsockopt(level, 203, vif)  # MRT_DEL_VIF
"""


def repairs(lab: Lab) -> dict[str, str]:
    """The drift families of /metrics: sample name (with labels) -> value."""
    body = fetch(lab, f"http://127.0.0.1:{PORT}/metrics")["body"]
    return dict(re.findall(r"^(mfcd_drift_\w+(?:\{[^}]*\})?) (\S+)$", body, re.M))


@pytest.mark.lab(receivers=1)
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("deleted", ["entry", "vif"])
def test_what_another_program_deleted_is_back_within_the_interval(
    lab: Lab, tmp_path: Path, family: int, deleted: str
) -> None:
    config = f'metrics_listen = "127.0.0.1:{PORT}"\ndrift_check_interval = {INTERVAL}\n'
    mfcd = Mfcd(lab, tmp_path, config=config)
    mfcd.start()
    try:
        source, group = SOURCES[family], GROUPS[family]
        mfcd.ok(*route_args(source, group, "r0", "r1"))
        assert lab.probe(group)[lab.rx[0]] == 5
        entry = mfc(lab, family)[(source, group)]  # (iif, oifs) as mfcd wrote it
        oif = next(v["vif"] for v in mfcd.show()["vifs"] if v["interface"] == "r1")
        before = repairs(lab)
        assert before['mfcd_drift_repairs_total{action="reissue_mfc"}'] == "0"
        assert before['mfcd_drift_repairs_total{action="readd_vif"}'] == "0"

        vifi = oif if deleted == "vif" else -1
        code = DELETE.format(
            family=family, table=DEFAULT[family], source=source, group=group, vifi=vifi
        )
        done = lab.exec(lab.router, sys.executable, "-c", code)
        assert done.returncode == 0, done.stderr
        gone = time.time()
        assert mfc(lab, family).get((source, group)) != entry
        # Forwarding is broken, and nothing else knows (a deleted entry leaves, once packets
        # come, an unresolved one, iif -1, in the kernel's table until it expires).
        assert lab.probe(group)[lab.rx[0]] == 0
        assert mfcd.show()["routes"][0]["state"] == "installed"

        # One interval at most (the check's tick may have come just before the delete),
        # and a little for the check itself on a busy machine.
        deadline = time.monotonic() + INTERVAL + 5
        while mfc(lab, family).get((source, group)) != entry:
            assert time.monotonic() < deadline, "the periodic drift check did not repair it"
            time.sleep(0.2)
        assert lab.probe(group)[lab.rx[0]] == 5
        after = repairs(lab)
        assert after['mfcd_drift_repairs_total{action="reissue_mfc"}'] == "1"
        counted = after['mfcd_drift_repairs_total{action="readd_vif"}']
        assert counted == ("1" if deleted == "vif" else "0")
        assert float(after["mfcd_drift_check_last_timestamp_seconds"]) >= gone
        assert mfcd.proc is not None
        mfcd.proc.send_signal(signal.SIGUSR1)  # the status line, as STATUS= says it
        time.sleep(0.3)
    finally:
        _, log = mfcd.stop()
    n, what = (2, "readd_vif 1, reissue_mfc 1") if deleted == "vif" else (1, "reissue_mfc 1")
    assert f"WARNING: full drift check: {n} repairs, 1 routes checked" in log, log
    assert re.search(
        rf"status: 1 of 1 routes installed, 0 pending; drift repaired at .* UTC \({what}\)", log
    ), log
