"""The kernel's upcalls reach mfcd, which reads and counts them (ping's `upcalls`)."""

from __future__ import annotations

import json
import time

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args

# A routed flow (it makes r0 a VIF) and a group on the same iif with no route.
FLOWS = {
    4: ("198.18.0.2", "239.1.1.1", "239.1.1.2"),
    6: ("2001:db8::2", "ff3e::1:1", "ff3e::1:2"),
}


def upcalls(mfcd: Mfcd) -> dict[str, int]:
    counts: dict[str, int] = json.loads(mfcd.ok("ping", "--output", "json"))["upcalls"]
    return counts


@pytest.mark.parametrize("family", [4, 6])
def test_a_packet_without_a_route_on_a_vif_gives_a_counted_nocache_upcall(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    source, routed, unrouted = FLOWS[family]
    mfcd.ok(*route_args(source, routed, "r0", "r1"))
    assert upcalls(mfcd) == {"nocache": 0, "wrongvif": 0, "wholepkt": 0}
    assert lab.probe(routed)[lab.rx[0]] == 5  # a routed group: no upcall
    assert upcalls(mfcd)["nocache"] == 0
    # No route for this group: the kernel queues the packets on one unresolved entry and
    # sends one NOCACHE upcall (the other packets join the same entry).
    lab.probe(unrouted)
    deadline = time.monotonic() + 5
    while upcalls(mfcd)["nocache"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upcalls(mfcd) == {"nocache": 1, "wrongvif": 0, "wholepkt": 0}
