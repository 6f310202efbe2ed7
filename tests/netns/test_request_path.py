"""End to end: the daemon's look at its tables after each change (Daemon._sync_tables skips it
when the tables in use and the sockets open are as it last found them) still closes a
table that empties and watches the new socket of a table opened again."""

from __future__ import annotations

import time

import pytest

from lab.netns import Lab
from tests.netns.conftest import Mfcd, route_args
from tests.netns.test_tables import GROUPS, SOURCES, TABLE, UNROUTED, send_and_count, upcalls


@pytest.mark.lab(receivers=3)
def test_a_table_closed_and_opened_again_has_its_new_socket_watched(lab: Lab, mfcd: Mfcd) -> None:
    lab.ip(lab.router, "-4", "mrule", "add", "iif", "r1", "lookup", TABLE)
    group, (_, source) = GROUPS[4], SOURCES[4]
    route = route_args(source, group, "r1", "r3")
    for _ in range(2):  # opened, closed, opened again: a new socket of the same table
        mfcd.ok(*route, "--table", TABLE)
        # Other changes that leave the tables as they are (skipped looks) in between.
        mfcd.ok(*route_args(source, "239.1.7.2", "r1", "r2"), "--table", TABLE)
        mfcd.ok("mfc", "del", "--source", source, "--group", "239.1.7.2", "--table", TABLE)
        assert send_and_count(lab, 4, 1) == [0, 5]  # r1's traffic by table 100, to r3

        before = upcalls(mfcd)
        assert send_and_count(lab, 4, 1, 1, UNROUTED[4]) == [0, 0]
        deadline = time.monotonic() + 5
        while upcalls(mfcd) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upcalls(mfcd) == before + 1  # read from the table's socket of this round

        mfcd.ok("mfc", "del", "--source", source, "--group", group, "--table", TABLE)
        assert send_and_count(lab, 4, 1) == [0, 0]
    _, log = mfcd.stop()
    assert log.count(f"table {TABLE} is empty: closed") == 2
