"""Tests for mfcd.events: bounded buffers per subscriber, gaps reported where events were lost."""

from __future__ import annotations

from mfcd.events import EventBus


def test_nobody_subscribed_costs_nothing_and_keeps_nothing() -> None:
    bus = EventBus()
    bus.emit("route.add", source="198.18.0.2")
    assert bus.subscribers == []


def test_events_arrive_in_order_with_kind_and_time() -> None:
    bus = EventBus()
    woken: list[int] = []
    sub = bus.subscribe(lambda: woken.append(1))
    bus.emit("route.add", group="239.1.1.1")
    bus.emit("route.del", group="239.1.1.1")
    events = sub.take()
    assert [e["event"] for e in events] == ["route.add", "route.del"]
    assert all(e["group"] == "239.1.1.1" and e["time"] > 0 for e in events)
    assert len(woken) == 2
    assert sub.take() == []


def test_a_full_buffer_drops_and_reports_one_gap_after_what_it_kept() -> None:
    bus = EventBus()
    slow = bus.subscribe(lambda: None, limit=3)
    fast = bus.subscribe(lambda: None, limit=100)
    for n in range(10):
        bus.emit("link", n=n)
    events = slow.take()
    assert [e.get("n") for e in events] == [0, 1, 2, None]
    assert events[-1]["event"] == "gap"
    assert events[-1]["dropped"] == 7
    # The next events come after the gap, and no gap is reported again.
    bus.emit("link", n=10)
    assert [(e["event"], e["n"]) for e in slow.take()] == [("link", 10)]
    assert [e["n"] for e in fast.take()] == list(range(11))


def test_unsubscribed_gets_nothing_more() -> None:
    bus = EventBus()
    sub = bus.subscribe(lambda: None)
    bus.unsubscribe(sub)
    bus.unsubscribe(sub)  # twice is harmless (a connection closing as mfcd stops)
    bus.emit("reload", config="/etc/mfc_daemon.conf")
    assert sub.take() == []


def test_a_saturated_bus_counts_drops_without_making_events() -> None:
    bus = EventBus()
    small = bus.subscribe(lambda: None, limit=1)
    large = bus.subscribe(lambda: None, limit=2)
    bus.emit("link", n=0)
    assert not bus.saturated()
    bus.emit("link", n=1)
    assert bus.saturated()
    bus.drop(5)
    assert small.take()[-1]["dropped"] == 6
    assert large.take()[-1]["dropped"] == 5
