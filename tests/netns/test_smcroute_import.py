"""`mfcctl import-smcroute --no-default-vifs`: an smcroute.conf written for `smcrouted -N`,
converted and run by the real mfcd, forwards exactly where smcrouted -N did.

The expected packets were measured once with smcrouted 2.5.6 (`smcrouted -n -N -f FILE`) in
the same lab (a sender behind r0, end devices behind r1..r4, TTL 8, 5 packets per flow) and are
written down here: the test runs no smcroute.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab.netns import Lab
from tests.netns.conftest import BIN, Mfcd, running
from tests.netns.test_joins import memberships
from tests.netns.test_smcroute_scenarios import SND, at, deliver, from_rx
from tests.unit.test_smcroute_import import MINUS_N

# MINUS_N enables only r0, r2 and r3: under -N, r+ matches those only, r1 and r4 are neither
# iifs nor oifs. The joins are made wherever they say, enabled or not.

# (group, the end device that sends: 0 is the sender behind r0) -> what the end devices behind
# r1..r4 received (not the sending one), as smcrouted 2.5.6 -N forwarded it.
SMCROUTED_N = {
    ("239.10.7.5", 0): {1: 0, 2: 5, 3: 5, 4: 0},  # `Oifs: r0 r2 r3(ttl 3)`
    ("239.10.8.1", 0): {1: 0, 2: 5, 3: 0, 4: 0},  # r1 skipped: "not a known phyint"
    ("239.10.9.1", 1): {2: 0, 3: 0, 4: 0},  # "inbound r1 is not a known phyint"
    ("239.10.10.1", 0): {1: 0, 2: 0, 3: 5, 4: 0},
    ("239.10.10.2", 1): {2: 0, 3: 0, 4: 0},  # r+ as an iif: not r1
    ("239.10.10.3", 2): {1: 0, 3: 5, 4: 0},
    ("239.10.11.1", 4): {1: 0, 2: 0, 3: 0},  # "inbound r4 is not a known phyint"
    ("239.10.12.1", 0): {1: 0, 2: 0, 3: 0, 4: 0},  # `Iif: r0`, no oif
}


@pytest.mark.lab(receivers=4)
def test_no_default_vifs_forwards_where_smcrouted_n_did(lab: Lab, tmp_path: Path) -> None:
    original = tmp_path / "smcroute.conf"
    original.write_text(MINUS_N)
    converted = subprocess.run(
        [str(BIN / "mfcctl"), "import-smcroute", "--no-default-vifs", str(original)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Lines 6, 8 and 9 are not converted (smcroute installs nothing from r1 and r4, and no
    # oif for 239.10.12.1): exit status 1, the rest written.
    assert converted.returncode == 1, converted.stderr
    assert [line.split(":")[2] for line in converted.stderr.splitlines()] == [
        "4", "5", "6", "7", "8", "9"
    ]  # fmt: skip
    with running(Mfcd(lab, tmp_path, config=converted.stdout)):
        got = {}
        for group, k in SMCROUTED_N:
            sender = (lab.sender, "s0", SND) if k == 0 else from_rx(lab, k)
            ends = [n for n in range(1, 5) if n != k]
            got[group, k] = dict(
                zip(ends, deliver(lab, group, sender, at(lab, *ends)), strict=True)
            )
        assert got == SMCROUTED_N
        assert "239.20.0.1" in memberships(lab, "r1", 4)
        for k in range(5):
            assert "239.20.0.2" in memberships(lab, f"r{k}", 4)
