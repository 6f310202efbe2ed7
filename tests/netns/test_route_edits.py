"""End to end: changing some oifs of a route, warnings about missing interfaces, clearing a
threshold; checked in the kernel's tables and with real packets."""

from __future__ import annotations

import json

import pytest

from lab.netns import Lab
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd
from tests.netns.test_forwarding import FLOWS, add, received


def kernel_oifs(lab: Lab, family: int) -> tuple[str, set[str]]:
    """The kernel's entry for the family's flow: its iif and oifs, by interface name."""
    name = kernel_tables.vifs(lab, family)
    iif, oifs = kernel_tables.mfc(lab, family)[FLOWS[family]]
    return name[iif], {name[vif] for vif in oifs}


@pytest.mark.parametrize("family", [4, 6])
def test_oif_add_and_del_change_the_kernel_entry_and_survive_a_restart(
    lab: Lab, mfcd: Mfcd, family: int
) -> None:
    source, group = FLOWS[family]
    key = ["--source", source, "--group", group]
    add(mfcd, family, "r0", "r1")
    assert kernel_oifs(lab, family) == ("r0", {"r1"})

    assert mfcd.ok("mfc", "oif", "add", *key, "--oifs", "r2") == ""
    assert kernel_oifs(lab, family) == ("r0", {"r1", "r2"})
    assert received(lab, family) == [5, 5, 0]

    dry = mfcd.ok("mfc", "oif", "del", *key, "--oifs", "r1", "--dry-run")
    assert "replace mfc" in dry
    assert kernel_oifs(lab, family) == ("r0", {"r1", "r2"})

    assert mfcd.ok("mfc", "oif", "del", *key, "--oifs", "r1") == ""
    assert kernel_oifs(lab, family) == ("r0", {"r2"})
    assert received(lab, family) == [0, 5, 0]

    # The last oif stays: removing it would leave a route that forwards nowhere.
    last = mfcd.ctl("mfc", "oif", "del", *key, "--oifs", "r2")
    assert last.returncode == 1 and "mfc del" in last.stderr
    missing = mfcd.ctl("mfc", "oif", "add", "--source", source, "--group", group[:-1] + "9")
    assert missing.returncode == 2  # (no --oifs: a usage error)
    unknown = mfcd.ctl(
        "mfc", "oif", "add", "--source", source, "--group", group[:-1] + "9", "--oifs", "r1"
    )
    assert unknown.returncode == 5 and "no route" in unknown.stderr

    # A batch line builds on the lines before it; the whole route is journaled.
    batch = f"mfc oif add {' '.join(key)} --oifs r3\nmfc oif del {' '.join(key)} --oifs r2\n"
    assert mfcd.ok("batch", "-", stdin=batch) == "0 added, 0 deleted, 2 updated\n"
    assert kernel_oifs(lab, family) == ("r0", {"r3"})
    mfcd.stop()
    mfcd.start()
    assert kernel_oifs(lab, family) == ("r0", {"r3"})
    assert received(lab, family) == [0, 0, 5]


def test_a_missing_interface_is_a_warning_and_a_batch_says_what_it_did(
    lab: Lab, mfcd: Mfcd
) -> None:
    source, group = FLOWS[4]
    route = ["--source", source, "--group", group, "--iif", "r0"]
    typo = mfcd.ctl("mfc", "add", *route, "--oifs", "r1,rr2")
    assert typo.returncode == 0
    assert typo.stderr == (
        "mfcctl: warning: interface rr2 does not exist (yet); the route is degraded until it"
        " appears\n"
    )
    assert mfcd.wait_state(group, "degraded")["missing"] == ["rr2"]
    assert kernel_tables.mfc(lab, 4) == {(source, group): (0, frozenset({1}))}  # to r1

    # Fixed with oif changes; then a batch with two routes waiting for interfaces.
    mfcd.ok("mfc", "oif", "del", "--source", source, "--group", group, "--oifs", "rr2")
    assert mfcd.wait_state(group, "installed")["oifs"] == ["r1"]
    batch = "\n".join(
        [
            f"mfc add --source {source} --group 239.1.1.2 --iif r0 --oifs r1,x9",
            f"mfc add --source {source} --group 239.1.1.3 --iif x8 --oifs r1",
            f"mfc add --source {source} --group 239.1.1.4 --iif r0 --oifs r2",
            f"mfc del --source {source} --group {group}",
        ]
    )
    done = mfcd.ctl("batch", "-", stdin=batch)
    assert (done.returncode, done.stdout) == (0, "3 added, 1 deleted\n")
    assert done.stderr == (
        "mfcctl: warning: 1 route is pending and 1 degraded: interfaces x8, x9 do not exist"
        " (yet); each is complete when they appear\n"
    )
    assert set(kernel_tables.mfc(lab, 4)) == {(source, "239.1.1.2"), (source, "239.1.1.4")}


def test_vif_set_threshold_default_clears_the_setting(lab: Lab, mfcd: Mfcd) -> None:
    add(mfcd, 4, "r0", "r1", "r2")
    mfcd.ok("vif", "set", "r1", "--threshold", "8")  # the lab sends with TTL 8: r1 gets none
    assert received(lab, 4) == [0, 5, 0]
    mfcd.ok("vif", "set", "r1", "--threshold", "default")
    assert received(lab, 4) == [5, 5, 0]
    shown = json.loads(mfcd.ok("vif", "show", "--output", "json"))
    assert shown["settings"] == []
    mfcd.stop()
    mfcd.start()
    shown = json.loads(mfcd.ok("vif", "show", "--output", "json"))
    assert shown["settings"] == []
    assert received(lab, 4) == [5, 5, 0]
