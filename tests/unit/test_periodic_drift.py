"""Tests for the periodic drift check's pure parts: what a tick of drift_check_interval
checks (mfcd.daemon.periodic_check) and how the status line tells the last repair."""

from __future__ import annotations

from collections import Counter

from mfcd.commands import FULL_SYNC_ROUTES
from mfcd.daemon import periodic_check
from mfcd.views import last_repairs


def test_a_tick_dumps_the_table_while_sync_would_and_probes_above() -> None:
    assert periodic_check(5, 2, 5, running=False) == "full"
    assert periodic_check(FULL_SYNC_ROUTES, 2, FULL_SYNC_ROUTES, running=False) == "full"
    big = FULL_SYNC_ROUTES + 1
    assert periodic_check(big, 2, big, running=False) == "probe"
    # Installed routes decide (a dump costs what the kernel holds), not pending ones.
    assert periodic_check(big, 2, 3, running=False) == "full"


def test_a_tick_is_skipped_while_a_check_runs_and_on_an_idle_daemon() -> None:
    assert periodic_check(5, 2, 5, running=True) is None
    assert periodic_check(0, 0, 0, running=False) is None  # nothing to compare
    # VIFs without routes (a template's) are still checked; so are pending routes.
    assert periodic_check(0, 2, 0, running=False) == "full"
    assert periodic_check(3, 0, 0, running=False) == "full"


def test_the_status_line_tells_when_and_what_the_last_repair_was() -> None:
    text = last_repairs(1800000000.7, Counter({"reissue_mfc": 2, "readd_vif": 1}))
    assert text == "drift repaired at 2027-01-15 08:00:00 UTC (readd_vif 1, reissue_mfc 2)"
