"""The monitor's event bus: what happens in mfcd, told to each `mfcctl monitor` subscriber.

`EventBus.emit(kind, **fields)` is called where things happen (route changes in commands,
interface events, repairs and reloads in the daemon; learned and expired entries by
whoever learns them). It costs one attribute test when nobody subscribes. Each
subscriber has a bounded buffer of BUFFER events: the server writes them out as fast as
the subscriber reads, and past the bound new events are dropped and counted, so a
subscriber that stops reading never holds the daemon up nor grows its memory. The
next time it is served it first gets what was buffered, then one "gap" event saying how
many it missed, then new events: it knows exactly where the hole is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

BUFFER = 1024  # events buffered per subscriber; more are dropped (and reported as a gap)

# The kinds of event (the "event" field); docs/protocol.md describes each one's fields.
KINDS = (
    "route.add",  # a route added or replaced (any origin)
    "route.del",
    "route.state",  # an interface event installed a route, or left it pending or degraded
    "template.add",  # emitted by the templates code
    "template.del",
    "template.state",  # an interface event changed a template's state (or its reason)
    "learned",  # an entry learned from traffic (a template matched an upcall)
    "expired",  # a learned entry removed for lack of traffic
    "threshold",  # vif.set
    "join",  # a group joined (or pending), mfcctl join
    "leave",
    "mrdisc",  # vif.set --mrdisc / --no-mrdisc
    "link",  # an interface created, changed or deleted
    "repair",  # a drift repair (sync, or the daemon's own check)
    "reload",  # the configuration was reloaded (SIGHUP), after its changes' own events
    "reload.failed",  # a reload that changed nothing: why (FILE:LINE: reason)
    "gap",  # this subscriber missed `dropped` events here
)


class Subscriber:
    """One subscriber's buffer; `wake` is called with each event buffered."""

    __slots__ = ("dropped", "events", "limit", "wake")

    def __init__(self, wake: Callable[[], None], limit: int = BUFFER) -> None:
        self.events: deque[dict[str, Any]] = deque()
        self.dropped = 0
        self.limit = limit
        self.wake = wake

    def put(self, event: dict[str, Any]) -> None:
        if len(self.events) >= self.limit:
            self.dropped += 1
            return
        self.events.append(event)
        self.wake()

    def take(self) -> list[dict[str, Any]]:
        """Everything buffered, then a gap event if some were dropped after it."""
        out = list(self.events)
        self.events.clear()
        if self.dropped:
            out.append({"event": "gap", "time": _now(), "dropped": self.dropped})
            self.dropped = 0
        return out


class EventBus:
    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []

    def subscribe(self, wake: Callable[[], None], limit: int = BUFFER) -> Subscriber:
        subscriber = Subscriber(wake, limit)
        self.subscribers.append(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)

    def saturated(self) -> bool:
        """Whether every subscriber's buffer is full: more events would only be counted."""
        return all(len(s.events) >= s.limit for s in self.subscribers)

    def drop(self, count: int) -> None:
        """Count `count` events as dropped for every subscriber, without making them (the
        rest of a large batch once every buffer is full)."""
        for subscriber in self.subscribers:
            subscriber.dropped += count

    def emit(self, kind: str, **fields: Any) -> None:
        """Tell every subscriber; `fields` are JSON values (shared, never changed after)."""
        if not self.subscribers:
            return
        event = {"event": kind, "time": _now(), **fields}
        for subscriber in self.subscribers:
            subscriber.put(event)


def _now() -> float:
    return round(time.time(), 3)
