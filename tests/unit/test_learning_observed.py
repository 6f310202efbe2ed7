"""Learned entries as monitor events and metrics: what the Learner tells subscribers of each
entry learned and removed (and why), and what /metrics counts of them."""

from __future__ import annotations

from typing import Any

from mfcd import metrics, validate
from mfcd.events import EventBus, Subscriber
from mfcd.learning import Learner
from mfcd.model import AddRoute, DelTemplate, Route
from tests.unit.test_metrics import page, samples
from tests.unit.test_templates import key, setup, star, tkey, upcall

TEMPLATE = {"source": "*", "group": "239.1.0.0/16", "iif": "a"}


def subscribed(learner: Learner, limit: int = 1024) -> Subscriber:
    learner.events = EventBus()
    return learner.events.subscribe(lambda: None, limit)


def told(subscriber: Subscriber) -> list[dict[str, Any]]:
    """The events taken, without their time."""
    return [{k: v for k, v in e.items() if k != "time"} for e in subscriber.take()]


def entry(source: str, **extra: Any) -> dict[str, Any]:
    fields = {"family": "ipv4", "table": 253, "source": source, "group": "239.1.1.1"}
    return {**fields, "iif": "a", "template": TEMPLATE, **extra}


def test_a_learned_entry_and_its_flush_are_told_with_their_template() -> None:
    ctl, _, learner, _ = setup()
    ctl.change([star("239.1.0.0/16", "a", "b")])
    subscriber = subscribed(learner)
    learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")])
    assert told(subscriber) == [{"event": "learned", **entry("198.18.0.9")}]
    # Learned already, or no template: nothing more.
    learner.on_upcalls([upcall(ctl, "198.18.0.7", "239.9.1.1", "a")])
    assert told(subscriber) == []
    assert learner.flush() == 1
    assert told(subscriber) == [{"event": "expired", **entry("198.18.0.9", reason="flush")}]


def test_idle_expiry_is_told_with_reason_idle() -> None:
    ctl, kernel, learner, clock = setup(idle=1.0)
    ctl.change([star("239.1.0.0/16", "a", "b")])
    learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")])
    subscriber = subscribed(learner)
    for _ in range(40):  # the fake kernel's counters never move: idle after a second
        learner.tick()
        clock.now += learner.interval
    assert kernel.mfcs == {}
    assert told(subscriber) == [{"event": "expired", **entry("198.18.0.9", reason="idle")}]


def test_entries_gone_with_their_template_are_told_why() -> None:
    ctl, _, learner, _ = setup()
    ctl.change([star("239.1.0.0/16", "a", "b")])
    learner.after_change()
    learner.on_upcalls([upcall(ctl, f"198.18.0.{n}", "239.1.1.1", "a") for n in (1, 2)])
    subscriber = subscribed(learner)
    ctl.change([AddRoute.of(Route(4, "198.18.0.1", "239.1.1.1", "a", ("c",), 253))])
    ctl.change([DelTemplate(tkey("239.1.0.0/16", "a"))])
    learner.after_change()
    events = told(subscriber)
    # 198.18.0.1's entry became a route: its route.add says so, no expired event.
    assert events == [{"event": "expired", **entry("198.18.0.2", reason="template_deleted")}]
    assert learner.since == {}


def test_past_full_buffers_removed_entries_are_counted_as_a_gap() -> None:
    ctl, _, learner, _ = setup()
    ctl.change([star("239.1.0.0/16", "a", "b")])
    learner.on_upcalls([upcall(ctl, f"198.18.0.{n}", "239.1.1.1", "a") for n in range(1, 6)])
    subscriber = subscribed(learner, limit=2)
    assert learner.flush() == 5
    events = subscriber.take()
    assert [e["event"] for e in events] == ["expired", "expired", "gap"]
    assert events[-1]["dropped"] == 3


def test_metrics_count_learned_expired_and_dropped_entries_and_templates() -> None:
    ctl, _, learner, clock = setup(idle=1.0, max_learned=2)
    ctl.change([star("239.1.0.0/16", "a", "b")])
    learner.on_upcalls([upcall(ctl, f"198.18.0.{n}", "239.1.1.1", "a") for n in (1, 2, 3)])
    registry = metrics.Registry(templates=lambda: metrics.template_counts(ctl.router))
    registry.entries = learner.counts  # as the daemon wires them
    text = page(ctl, registry=registry)
    assert samples(text, "mfcd_learned_entries_total") == {"": "2"}
    assert samples(text, "mfcd_dropped_entries_total") == {"": "1"}
    assert samples(text, "mfcd_expired_entries_total") == {"": "0"}
    assert samples(text, "mfcd_routes")['{state="installed",origin="learned"}'] == "2"
    assert samples(text, "mfcd_templates")['{state="installed",origin="api"}'] == "1"
    for _ in range(40):
        learner.tick()
        clock.now += learner.interval
    text = page(ctl, registry=registry)
    assert samples(text, "mfcd_expired_entries_total") == {"": "2"}
    assert samples(text, "mfcd_routes")['{state="installed",origin="learned"}'] == "0"
    assert key("198.18.0.1") not in ctl.router.routes


def test_entries_gone_with_a_wildcard_iif_template_are_told_with_their_own_iif() -> None:
    # `--iif 'up+'` stands for one template per interface; the entry learned on up2 must be
    # told gone with iif up2 and up2's template, as its `learned` event said (not up1's).
    ctl, _, learner, _ = setup()
    ctl.link_up("up1", 11)
    ctl.link_up("up2", 12)
    ctl.change([validate.template_change(None, "239.1.0.0/16", "up+", ["d"])])
    learner.after_change()
    subscriber = subscribed(learner)
    learner.on_upcalls([upcall(ctl, "198.18.0.2", "239.1.1.1", "up2")])
    template = {**TEMPLATE, "iif": "up2"}
    learned = {**entry("198.18.0.2"), "iif": "up2", "template": template}
    assert told(subscriber) == [{"event": "learned", **learned}]
    ctl.change([DelTemplate(tkey("239.1.0.0/16", "up+"))])
    learner.after_change()
    expired = {**learned, "reason": "template_deleted"}
    assert told(subscriber) == [{"event": "expired", **expired}]
    assert ctl.router.unlearned == {}  # (taken: nothing kept from one change to the next)


def test_a_dry_run_keeps_no_record_of_the_entries_it_would_let_go() -> None:
    ctl, _, learner, _ = setup()
    ctl.change([star("239.1.0.0/16", "a", "b")])
    learner.on_upcalls([upcall(ctl, "198.18.0.2", "239.1.1.1", "a")])
    ctl.change([DelTemplate(tkey("239.1.0.0/16", "a"))], dry_run=True)
    assert ctl.router.unlearned == {} and key("198.18.0.2") in ctl.router.learned
