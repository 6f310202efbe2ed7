"""End to end: single `mfc add`s answered by the one-route lane write the kernel entries the
general path would, after the model's kept cache of a combination's VIFs and entry must
have been dropped: a threshold changed, the oif's interface deleted and created again."""

from __future__ import annotations

import json
import time
from typing import Any

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args
from tests.netns.kernel_tables import mfc, vifs

SOURCE = "198.18.0.2"


def oifs_with_ttls(lab: Lab, group: str) -> list[str]:
    """The oif fields (`vif:ttl`) of the IPv4 entry for (SOURCE, group) in /proc."""
    text = lab.exec(lab.router, "cat", "/proc/net/ip_mr_cache").stdout
    for line in text.splitlines()[1:]:
        fields = line.split()
        if fields[:2] == [_hex(group), _hex(SOURCE)]:
            return fields[6:]
    raise AssertionError(f"no entry for {group}: {text}")


def _hex(address: str) -> str:
    # As /proc prints it: the big-endian address read as a little-endian 32-bit number.
    return "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))


def wait_for_r1(mfcd: Mfcd, present: bool) -> None:
    """Until the daemon's VIF of r1 is (or is not) on a present interface."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = json.loads(mfcd.ok("--output", "json", "vif", "show"))
        if any(v["interface"] == "r1" and v["present"] == present for v in shown["vifs"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"r1 never {'came back' if present else 'went'}")


def add(mfcd: Mfcd, group: str) -> dict[str, Any]:
    answer = mfcd.ok("--output", "json", *route_args(SOURCE, group, "r0", "r1"))
    result: dict[str, Any] = json.loads(answer)
    return result


def test_single_adds_write_the_entries_of_the_general_path(lab: Lab, mfcd: Mfcd) -> None:
    assert [s["action"] for s in add(mfcd, "239.1.9.1")["plan"]] == [
        "add_vif",
        "add_vif",
        "add_mfc",
    ]
    second = add(mfcd, "239.1.9.2")  # the combination's VIFs and entry kept by the model
    assert second["state"] == "installed" and second["kernel_operations"] == {"add_mfc": 1}
    assert oifs_with_ttls(lab, "239.1.9.2") == ["1:1"]

    mfcd.ok("vif", "set", "r1", "--threshold", "8")
    assert add(mfcd, "239.1.9.3")["state"] == "installed"
    assert oifs_with_ttls(lab, "239.1.9.3") == ["1:8"]  # not the entry kept before
    assert oifs_with_ttls(lab, "239.1.9.1") == ["1:8"]  # (re-issued by the vif set)

    lab.del_router_link("r1")
    wait_for_r1(mfcd, present=False)
    assert add(mfcd, "239.1.9.4")["state"] == "degraded"  # (its entry waits for r1's VIF)
    lab.add_receiver_link(1)  # r1 again, with another ifindex
    wait_for_r1(mfcd, present=True)
    assert vifs(lab, 4)[1] == "r1"
    fifth = add(mfcd, "239.1.9.5")
    assert fifth["state"] == "installed" and fifth["kernel_operations"] == {"add_mfc": 1}
    assert oifs_with_ttls(lab, "239.1.9.5") == ["1:8"]
    assert mfc(lab, 4)[(SOURCE, "239.1.9.5")] == (0, frozenset({1}))
    assert oifs_with_ttls(lab, "239.1.9.4") == ["1:8"]  # (installed once r1 was back)
