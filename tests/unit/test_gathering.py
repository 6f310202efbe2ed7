"""The hold on group commit's next sync: until the clients of the last group are back, and
never longer than that sync took (nor HOLD_MAX)."""

from __future__ import annotations

from mfcd.gathering import HOLD_MAX, Gathering


def test_the_next_group_waits_for_the_clients_just_answered() -> None:
    hold = Gathering()
    hold.synced(now=100.0, took=0.008, answered=10, waiting=10)
    assert not hold.ready(100.001, waiting=10)
    assert not hold.ready(100.001, waiting=19)
    assert hold.ready(100.001, waiting=20)  # all back: at once


def test_the_hold_lasts_no_longer_than_the_last_sync() -> None:
    hold = Gathering()
    hold.synced(now=100.0, took=0.004, answered=10, waiting=3)
    assert not hold.ready(100.0039, waiting=4)
    assert hold.ready(100.004, waiting=4)  # some clients did not come back: go anyway
    hold.synced(now=200.0, took=2.0, answered=10, waiting=3)  # a very slow sync
    assert hold.until == 200.0 + HOLD_MAX


def test_a_lone_client_and_the_first_group_are_never_held() -> None:
    hold = Gathering()
    assert hold.ready(0.0, waiting=1)  # nothing synced yet
    hold.synced(now=1.0, took=0.005, answered=1, waiting=0)
    assert hold.ready(1.0, waiting=1)  # its next change: the group is complete
